/**
 * `npm run bench`: every comparison benchmark for mta and Postfix in one run, one table.
 *
 *   bun build.ts && bun bench/all.ts [--quick] [--no-wait] [--max-wait-min 20] [--no-postfix]
 *
 * Sets Postfix up on 127.0.0.1:2525 (bench/postfix/setup-postfix.sh: rewrites /etc/postfix; root, on a
 * development or CI machine only), then runs as child processes, each printing a `BENCH_JSON` line:
 * bench/durable-inject.ts, bench/e2e.ts, bench/slow-remote.ts (its table is parsed),
 * bench/cluster.ts (with its own redis-server) and bench/queue-depth.ts. Prints the table (figure, conditions, mta, Postfix, ratio = mta / Postfix) and
 * writes it to docs/benchmarks.md with the date, the machine and the conditions, plus two plots:
 * docs/bench-queue-depth.svg and docs/bench-concurrency.svg. Stops Postfix at the end.
 * Before a full run it waits (up to --max-wait-min, default 20 min, checking every 30 s) for the 1-minute load to drop below 0.7
 * and says in the document whether it did. Figures only; never passes or fails. Loopback only.
 */
import { spawn } from "bun";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { lineChartSvg } from "./_plot.ts";
import { postfixInstalled, ROOT, type Row, setupPostfix, stopPostfix } from "./_support.ts";
import type { QueueDepthResult } from "./queue-depth.ts";

const quick = process.argv.includes("--quick");
const noWait = process.argv.includes("--no-wait") || quick;
const withPostfix = !process.argv.includes("--no-postfix") && postfixInstalled() && process.getuid?.() === 0;
const maxWaitMin = Number(process.argv[process.argv.indexOf("--max-wait-min") + 1] ?? 20) || 20;
let startedAt = new Date();

function log(s: string): void {
  console.error(`[bench/all ${new Date().toISOString().slice(11, 19)}] ${s}`);
}

function load1(): number {
  return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

async function waitQuiet(): Promise<{ quiet: boolean; waitedS: number; load: number }> {
  const t0 = Date.now();
  for (;;) {
    const l = load1();
    if (l < 0.7) return { quiet: true, waitedS: (Date.now() - t0) / 1000, load: l };
    if (Date.now() - t0 > maxWaitMin * 60_000)
      return { quiet: false, waitedS: (Date.now() - t0) / 1000, load: l };
    log(`1-minute load ${l}: waiting for < 0.7 (30 s)`);
    await Bun.sleep(30_000);
  }
}

/** Runs a bench as a child (stderr passed through), returns its stdout; logs load before and after. */
async function child(
  args: string[],
): Promise<{ out: string; code: number; wallS: number; loadBefore: number }> {
  const loadBefore = load1();
  log(`run: bun ${args.join(" ")} (load ${loadBefore})`);
  const t0 = performance.now();
  const p = spawn([process.execPath, ...args], { cwd: ROOT, stdout: "pipe", stderr: "inherit" });
  const out = await new Response(p.stdout).text();
  const code = await p.exited;
  const wallS = (performance.now() - t0) / 1000;
  process.stdout.write(out);
  log(`done in ${wallS.toFixed(0)} s (exit ${code})`);
  return { out, code, wallS, loadBefore };
}

function benchJson<T>(out: string): T | undefined {
  const line = out.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  return line ? (JSON.parse(line.slice("BENCH_JSON ".length)) as T) : undefined;
}

interface TableRow {
  figure: string;
  conditions: string;
  mta: number;
  postfix: number;
  unit: string;
  /** Formats a value of this row (default: integer with thousands separators). */
  digits?: number;
  pfNote?: string;
}

const rows: TableRow[] = [];
const notes: string[] = [];

function fmtN(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return "-";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function tableMarkdown(): string {
  const lines = [
    "| figure | conditions | mta | Postfix | ratio (mta / Postfix) |",
    "|---|---|---:|---:|---:|",
  ];
  for (const r of rows) {
    const d = r.digits ?? 0;
    const mta = Number.isFinite(r.mta) ? `${fmtN(r.mta, d)} ${r.unit}` : "not measured";
    const pf = Number.isFinite(r.postfix)
      ? `${fmtN(r.postfix, d)} ${r.unit}${r.pfNote ? ` (${r.pfNote})` : ""}`
      : `not measured${r.pfNote ? ` (${r.pfNote})` : ""}`;
    const ratio =
      Number.isFinite(r.mta) && Number.isFinite(r.postfix) && r.postfix !== 0
        ? `${Number((r.mta / r.postfix).toPrecision(2))}×`
        : "-";
    lines.push(`| ${r.figure} | ${r.conditions} | ${mta} | ${pf} | ${ratio} |`);
  }
  return lines.join("\n");
}

// ---- run ----
mkdirSync(join(ROOT, "docs"), { recursive: true });
const quiet = noWait ? { quiet: false, waitedS: 0, load: load1() } : await waitQuiet();
startedAt = new Date();
log(`starting: quick=${quick}, postfix=${withPostfix}, load ${quiet.load}`);
const loads: string[] = [];
try {
  if (withPostfix && !setupPostfix()) log("Postfix setup failed: its column will be empty");
  const pfFlag = withPostfix ? [] : ["--no-postfix"];

  // 1. Durable injection
  {
    const r = await child([
      "bench/durable-inject.ts",
      quick ? "2000" : "10000",
      "--reps",
      quick ? "1" : "3",
      "--json",
      ...pfFlag,
    ]);
    loads.push(`durable injection: load ${r.loadBefore} before, ${r.wallS.toFixed(0)} s`);
    for (const x of benchJson<Row[]>(r.out) ?? [])
      rows.push({
        figure: x.figure,
        conditions: `${x.conditions}; Postfix: same load, "hold" (fsync'd queue file, never delivered)`,
        mta: x.mta,
        postfix: x.postfix ?? Number.NaN,
        unit: x.unit,
      });
  }
  // 2. End to end
  {
    const r = await child([
      "bench/e2e.ts",
      quick ? "2000" : "10000",
      "--reps",
      quick ? "1" : "3",
      "--json",
      ...pfFlag,
    ]);
    loads.push(`end to end: load ${r.loadBefore} before, ${r.wallS.toFixed(0)} s`);
    for (const x of benchJson<Row[]>(r.out) ?? []) {
      // The many-destination row says how Postfix was routed itself (bench/e2e.ts).
      const manyDests = x.conditions.includes("; Postfix:");
      rows.push({
        figure: x.figure,
        conditions: manyDests
          ? x.conditions.replace(
              "; Postfix: ",
              "; Postfix: the same injector → Postfix → the same sink, medians; ",
            )
          : `${x.conditions}; Postfix: smtp-source → Postfix → smtp-sink (bench/postfix/bench-e2e.sh), ≤ 10,000 msgs, median`,
        mta: x.mta,
        postfix: x.postfix ?? Number.NaN,
        unit: x.unit,
      });
    }
  }
  // 3. Slow remote servers
  {
    const args = quick
      ? [
          "--domains",
          "100,1000",
          "--messages",
          "3000",
          "--delay-ms",
          "1000",
          "--sink-ips",
          "100",
          "--global",
          "2000",
          "--max-s",
          "20",
        ]
      : ["--domains", "1000,10000"];
    const r = await child(["bench/slow-remote.ts", ...args, ...(withPostfix ? ["--postfix"] : [])]);
    loads.push(`slow remote: load ${r.loadBefore} before, ${r.wallS.toFixed(0)} s`);
    const lines = r.out.split("\n");
    const head = lines.findIndex((l) => l.trim().startsWith("domains"));
    const pf = Number(/postfix_msgs_per_s=([\d.]+)/.exec(r.out)?.[1] ?? Number.NaN);
    const cond = lines.find((l) => l.startsWith("# slow remote servers:"))?.slice(2) ?? "";
    const pfCond = (lines.find((l) => /^# Postfix/.test(l)) ?? "").replace(/^#\s*/, "").trim();
    for (const l of head >= 0 ? lines.slice(head + 1) : []) {
      const f = l.trim().split(/\s+/).map(Number);
      if (f.length < 10 || !Number.isFinite(f[0])) break;
      const [domains, delivered, , wallS, msgsPerS, steady, peakConns, , peakRss] = f as number[];
      rows.push({
        figure: "delivery to slow remote servers",
        conditions: `${fmtN(domains!)} destinations; ${cond}; delivered ${fmtN(delivered!)} in ${wallS} s, peak ${fmtN(peakConns!)} connections, peak RSS ${peakRss} MB; steady msgs/s${pfCond ? `; Postfix: ${pfCond}` : ""}`,
        mta: steady! > 0 ? steady! : msgsPerS!,
        postfix: pf,
        unit: "msgs/s",
        pfNote: "tuned; one Postfix run for both rows",
      });
    }
  }
  // 5 (run early, it is short). Cluster: Redis costs and timings (Postfix has no counterpart).
  {
    const r = await child(["bench/cluster.ts", "--json", ...(quick ? ["--trials", "40"] : [])]);
    loads.push(`cluster: load ${r.loadBefore} before, ${r.wallS.toFixed(0)} s`);
    for (const x of benchJson<Row[]>(r.out) ?? [])
      rows.push({
        figure: `cluster: ${x.figure}`,
        conditions: `${x.conditions}; redis-server on loopback; no Postfix counterpart`,
        mta: x.mta,
        postfix: Number.NaN,
        unit: x.unit,
        digits: x.mta < 10 ? 2 : 0,
        pfNote: "no shared limits",
      });
  }
  // 4. Queue depth, recovery, memory, concurrency
  const qd = await child(["bench/queue-depth.ts", "--json", ...(quick ? ["--quick"] : []), ...pfFlag]);
  loads.push(`queue depth: load ${qd.loadBefore} before, ${qd.wallS.toFixed(0)} s`);
  const q = benchJson<QueueDepthResult>(qd.out);
  if (q) {
    const pfPoints = q.depth.filter((p) => p.system === "postfix");
    const pfDeep = pfPoints[pfPoints.length - 1];
    const mtaDeep = q.depth.filter((p) => p.system === "mta").at(-1);
    const mtaMid = q.depth.filter((p) => p.system === "mta" && p.depth > 0)[0];
    const pfNote = pfDeep ? `${fmtN(pfDeep.depth)} in its hold queue` : "";
    for (const m of [mtaMid, mtaDeep].filter((x, i, a) => x && a.indexOf(x) === i)) {
      rows.push({
        figure: `injection with ${fmtN(m!.depth)} already queued`,
        conditions: `smtp-source, 1 KB, 50 sessions, ${fmtN(q.messagesPerRun.mta)} msgs (Postfix ${fmtN(q.messagesPerRun.postfix)}), fdatasync on; queued mail for a held destination (mta: route to a closed port, 1 h retry; Postfix: hold queue)`,
        mta: m!.injectMsgsPerS,
        postfix: pfDeep?.injectMsgsPerS ?? Number.NaN,
        unit: "msgs/s",
        pfNote,
      });
      rows.push({
        figure: `delivery with ${fmtN(m!.depth)} already queued`,
        conditions: `smtp-source → MTA → one smtp-sink, 1 KB, 50 sessions, first message to last received; same queued mail as above`,
        mta: m!.deliverMsgsPerS,
        postfix: pfDeep?.deliverMsgsPerS ?? Number.NaN,
        unit: "msgs/s",
        pfNote,
      });
    }
    const rec = q.mta.recovery.at(-1);
    if (rec)
      rows.push({
        figure: `recovery of a ${fmtN(rec.depth)}-message spool`,
        conditions: `mta: spawn of \`mta serve\` to its "started" line (spool recovery itself ${fmtN(rec.spoolMs)} ms), page cache warm; Postfix: \`postfix start\` to a 220 greeting (it does not load its queue at start)`,
        mta: rec.startS,
        postfix: q.postfix?.startS ?? Number.NaN,
        unit: "s",
        digits: 2,
        ...(q.postfix ? { pfNote: `${fmtN(q.postfix.startDepth)} queued` } : {}),
      });
    rows.push({
      figure: "RSS per idle connection",
      conditions: `mta: RSS delta of the daemon with ${fmtN(q.mta.idleSessions)} idle sessions (after EHLO) / ${fmtN(q.mta.idleSessions)}; Postfix: mean RSS of its smtpd processes at ${q.postfix?.idleSessions ?? 100} idle sessions (one process each, ${q.postfix?.processLimit ?? "default_process_limit 100"}; mean PSS ${fmtN((q.postfix?.pssPerIdleSessionB ?? Number.NaN) / 1024)} KiB)`,
      mta: q.mta.rssPerIdleSessionB / 1024,
      postfix: (q.postfix?.rssPerIdleSessionB ?? Number.NaN) / 1024,
      unit: "KiB",
      digits: 1,
    });
    rows.push({
      figure: "RSS per queued message",
      conditions: `mta: (RSS at ${fmtN(q.mta.rssPerQueuedDepth)} queued − RSS empty) / ${fmtN(q.mta.rssPerQueuedDepth)}, 1 s after start; Postfix: all its processes' RSS, ${fmtN(q.postfix?.startDepth ?? Number.NaN)} queued vs empty (queue files live on disk)`,
      mta: q.mta.rssPerQueuedB,
      postfix: q.postfix?.rssPerQueuedB ?? Number.NaN,
      unit: "B",
      digits: 0,
    });
    for (const s of [10, 50, 200, 1000]) {
      const a = q.sweep.find((p) => p.system === "mta" && p.sessions === s);
      const b = q.sweep.find((p) => p.system === "postfix" && p.sessions === s);
      if (a)
        rows.push({
          figure: `injection at ${fmtN(s)} sessions`,
          conditions: `smtp-source, 1 KB, ${fmtN(q.messagesPerRun.mta)} msgs (Postfix ${fmtN(q.messagesPerRun.postfix)}), fdatasync on, empty queue, one run`,
          mta: a.msgsPerS,
          postfix: b?.msgsPerS ?? Number.NaN,
          unit: "msgs/s",
        });
    }
    const mtaColor = "#1f77b4";
    const pfColor = "#d62728";
    const ser = (sys: "mta" | "postfix", k: "injectMsgsPerS" | "deliverMsgsPerS") =>
      q.depth.filter((p) => p.system === sys).map((p) => ({ x: p.depth, y: p[k] }));
    writeFileSync(
      join(ROOT, "docs/bench-queue-depth.svg"),
      lineChartSvg({
        title: "Throughput against queue depth",
        xLabel: "messages already queued (log scale; 0 at the left)",
        yLabel: "msgs/s",
        logX: true,
        series: [
          { name: "mta injection", color: mtaColor, points: ser("mta", "injectMsgsPerS") },
          { name: "mta delivery", color: "#17becf", points: ser("mta", "deliverMsgsPerS") },
          { name: "Postfix injection", color: pfColor, points: ser("postfix", "injectMsgsPerS") },
          { name: "Postfix delivery", color: "#ff7f0e", points: ser("postfix", "deliverMsgsPerS") },
        ],
        note: `1 KB, 50 sessions, fdatasync on; ${startedAt.toISOString().slice(0, 10)}; ${cpus().length} CPUs`,
      }),
    );
    writeFileSync(
      join(ROOT, "docs/bench-concurrency.svg"),
      lineChartSvg({
        title: "Durable injection against concurrency",
        xLabel: "concurrent SMTP sessions (log scale)",
        yLabel: "msgs/s",
        logX: true,
        series: (["mta", "postfix"] as const).map((sys) => ({
          name: sys === "mta" ? "mta" : "Postfix",
          color: sys === "mta" ? mtaColor : pfColor,
          points: q.sweep.filter((p) => p.system === sys).map((p) => ({ x: p.sessions, y: p.msgsPerS })),
        })),
        note: `smtp-source, 1 KB, fdatasync on, empty queue; ${startedAt.toISOString().slice(0, 10)}; ${cpus().length} CPUs`,
      }),
    );
  } else notes.push("bench/queue-depth.ts printed no result: its rows are missing.");
} finally {
  if (withPostfix) stopPostfix();
}

function debianVersion(): string {
  try {
    return `Debian ${readFileSync("/etc/debian_version", "utf8").trim()}`;
  } catch {
    return "not Debian";
  }
}
const c = cpus();
const machineText = `${c.length} × ${c[0]?.model ?? "cpu"} (shared virtual machine), ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}, Bun ${Bun.version}, ${debianVersion()}, Postfix ${withPostfix ? Bun.spawnSync(["postconf", "-h", "mail_version"]).stdout.toString().trim() || "?" : "not run"}`;
const table = tableMarkdown();
console.log(`\n## mta vs Postfix (${quick ? "QUICK run: small sizes, not for citing" : "full run"})\n`);
console.log(table);
const quietText = noWait
  ? `The run did not wait for a quiet machine (${quick ? "--quick" : "--no-wait"}); 1-minute load at start: ${quiet.load}.`
  : quiet.quiet
    ? `The run started when the 1-minute load was ${quiet.load} (< 0.7), after waiting ${Math.round(quiet.waitedS)} s.`
    : `The machine never got quiet: after waiting ${Math.round(quiet.waitedS / 60)} min the 1-minute load was still ${quiet.load}, and the run went ahead anyway. Other work shared the 2 cores: treat the figures as noisy.`;
const doc = `# Benchmarks: mta against Postfix

Generated by \`npm run bench\` (\`bun build.ts && bun bench/all.ts${quick ? " --quick" : ""}\`) on ${startedAt.toISOString().replace("T", " ").slice(0, 16)} UTC${quick ? " — **quick run with small sizes, not for citing**" : ""}.

**Machine:** ${machineText}.
${quietText}
Per phase: ${loads.join("; ")}.

**Conditions common to every row.** Everything runs on this one machine over loopback (127.0.0.0/8): the
load generators (Postfix's \`smtp-source\`, or \`bench/_injector.ts\` where the domain must vary), the MTA
under test and the receiving servers (\`smtp-sink\`, or \`bench/_slowSink.ts\`) share the same cores, so
every figure is a whole-machine figure. mta runs as the built binary (\`dist/mta serve\`, JSON logs at
info level) with \`spool.sync: true\` (fdatasync before the 250 reply); Postfix is Debian's package
configured by \`bench/postfix/setup-postfix.sh\` (127.0.0.1:2525, no DNS, no local delivery, default fsync
durability), measured in the same run by the scripts in \`bench/postfix/\`. Messages are 1 KB unless the row
says otherwise. Ratio = mta / Postfix (for times and memory, lower is better; for msgs/s, higher is better).
Where Postfix was measured at a different size than mta (queue depth, recovery), the Postfix cell says so.

${table}

${notes.map((n) => `- ${n}`).join("\n")}

## Plots

- [Throughput against queue depth](bench-queue-depth.svg) (mta: 0 / ${quick ? "20k" : "100k / 1M"}; Postfix: 0 / ${quick ? "10k" : "100k"})

  ![Throughput against queue depth](bench-queue-depth.svg)

- [Durable injection against concurrency](bench-concurrency.svg) (10, 50, 200, 1,000 sessions)

  ![Durable injection against concurrency](bench-concurrency.svg)

## How to reproduce

\`npm run bench\` (root on a development or CI machine: it rewrites \`/etc/postfix\` and stops Postfix at the
end). \`bun bench/all.ts --quick\` runs everything with small sizes; \`--no-wait\` skips waiting for a quiet
machine; \`--no-postfix\` measures mta alone. Each benchmark also runs on its own: \`bench/durable-inject.ts\`,
\`bench/e2e.ts\`, \`bench/slow-remote.ts --postfix\`, \`bench/queue-depth.ts\` (see their headers).
`;
writeFileSync(join(ROOT, "docs/benchmarks.md"), doc);
log("wrote docs/benchmarks.md, docs/bench-queue-depth.svg, docs/bench-concurrency.svg");
process.exit(0);
