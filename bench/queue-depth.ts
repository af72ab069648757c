/**
 * Queue depth, recovery, memory and concurrency: mta (dist/mta serve) and Postfix in the same run.
 *
 *   bun bench/queue-depth.ts [--quick] [--no-postfix] [--json]
 *
 * mta: the spool is pre-filled through the Spool API (sync: false, 1 KB bodies) with messages for
 * `held.test`, routed to a closed port (127.0.0.1:9) with a 1 h retry, so they stay queued; then
 * `mta serve` starts on it and we measure
 *   - recovery: wall time from spawning `mta serve` to its "started" line, and the spool's own
 *     recovery ms (its "spool open" line);
 *   - RSS per queued message: (RSS at depth D - RSS at depth 0) / D, both ~1 s after start;
 *   - injection msgs/s: smtp-source, 1 KB, 50 sessions, to held.test (durable, nothing leaves);
 *   - delivery msgs/s: smtp-source, 1 KB, 50 sessions, to k1.test routed to one smtp-sink, from the
 *     first message injected to the sink's count reaching N (end to end with D already queued);
 *   - at depth 0 only: a concurrency sweep (injection msgs/s at 10/50/200/1,000 sessions) and the
 *     RSS of 10,000 idle SMTP sessions (after EHLO, held by a child process) / 10,000.
 * Postfix (bench/postfix, root, rewrites /etc/postfix): the same injection and end-to-end runs at depth 0
 * and with its hold queue pre-filled (check_client_access static:HOLD, smtp-source in chunks of 10,000;
 * 1M Postfix queue files take too long to write, so its deepest point is 100k); the concurrency sweep;
 * `postfix start` to a 220 greeting on 127.0.0.1:2525 with the queue full; RSS of the smtpd processes at
 * 100 idle sessions / 100 (one smtpd per session, default_process_limit 100); Postfix's total RSS at
 * depth D minus at depth 0, / D.
 * Prints figures with their conditions; never passes or fails. Loopback only.
 */
import { spawn, spawnSync } from "bun";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Spool } from "../src/spool/index.ts";
import {
  type BenchMta,
  fmt,
  freePort,
  machine,
  postfixAnchor,
  postfixInstalled,
  rssBytes,
  SMTP_SINK,
  SMTP_SOURCE,
  setupPostfix,
  smtpSource,
  startBenchMta,
  tmp,
  startCountingSink,
  waitCount,
} from "./_support.ts";

export interface DepthPoint {
  system: "mta" | "postfix";
  depth: number;
  injectMsgsPerS: number;
  deliverMsgsPerS: number;
}
export interface SweepPoint {
  system: "mta" | "postfix";
  sessions: number;
  msgsPerS: number;
}
export interface QueueDepthResult {
  quick: boolean;
  messagesPerRun: { mta: number; postfix: number };
  depth: DepthPoint[];
  sweep: SweepPoint[];
  mta: {
    recovery: { depth: number; startS: number; spoolMs: number }[];
    rssPerQueuedB: number;
    rssPerQueuedDepth: number;
    idleSessions: number;
    rssPerIdleSessionB: number;
  };
  postfix?: {
    startS: number;
    startDepth: number;
    rssPerQueuedB: number;
    idleSessions: number;
    rssPerIdleSessionB: number;
    pssPerIdleSessionB: number;
    processLimit: string;
  };
}

/** Opens `n` SMTP sessions (greeting + EHLO) from a child process and keeps them idle until released. */
export async function holdIdleSessions(
  port: number,
  n: number,
): Promise<{ ready: number; release(): Promise<void> }> {
  const child = `
const n = ${n}; let ready = 0; const socks = [];
for (let i = 0; i < n; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, n - i) }, () => new Promise((resolve) => {
    let greeted = false;
    Bun.connect({ hostname: "127.0.0.1", port: ${port}, socket: {
      open(s) { socks.push(s); },
      data(s, d) { const t = d.toString(); if (!greeted && t.startsWith("220")) { greeted = true; s.write("EHLO idle.test\\r\\n"); } else if (t.includes("250 ")) { ready++; resolve(); } },
      error() { resolve(); }, connectError() { resolve(); }, close() { resolve(); },
    } }).catch(resolve);
    setTimeout(resolve, 30000);
  })));
}
console.log("ready " + ready);
await new Promise((r) => process.stdin.on("end", r).resume());
`;
  const p = spawn([process.execPath, "-e", child], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = p.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  return {
    ready: Number(/ready (\d+)/.exec(out)?.[1] ?? 0),
    release: async () => {
      p.stdin.end();
      p.kill();
      await p.exited;
    },
  };
}

const BODY = new TextEncoder().encode(
  `${"From: bench@origin.test\r\nTo: u@held.test\r\nSubject: queued\r\n\r\n".padEnd(1022, "x")}\r\n`,
);

async function prefill(dir: string, depth: number): Promise<number> {
  const t0 = performance.now();
  const spool = await Spool.open({ dir, sync: false, bodyCacheBytes: 0 });
  for (let start = 0; start < depth; start += 5000) {
    const batch = [];
    for (let i = start; i < Math.min(depth, start + 5000); i++)
      batch.push({
        sender: "bench@origin.test",
        destination: "held.test",
        recipients: [{ address: `u${i}@held.test` }],
        body: BODY,
      });
    await spool.appendMany(batch);
  }
  await spool.close();
  return (performance.now() - t0) / 1000;
}

function mtaYaml(dir: string, sinkPort: number): string {
  return [
    "hostname: bench.mta.test",
    `spool: { dir: ${join(dir, "spool")}, sync: true }`,
    "listen: [{ address: 127.0.0.1:0, max_connections: 20000, max_connections_per_ip: 20000 }]",
    "control: { address: 127.0.0.1:0 }",
    `delivery: { routes: { held.test: "127.0.0.1:9", k1.test: "127.0.0.1:${sinkPort}" }, retry: [1h], domains: { default: { max_connections: 50 } } }`,
    `log: { level: info, format: json, deliveries: "" }`,
  ].join("\n");
}

function spoolOpenMs(mta: BenchMta): number {
  for (const l of mta.lines) {
    if (!l.includes("spool open")) continue;
    try {
      return Number(JSON.parse(l).ms);
    } catch {}
  }
  return Number.NaN;
}

function log(s: string): void {
  console.error(`[queue-depth ${new Date().toISOString().slice(11, 19)}] ${s}`);
}

async function runMta(quick: boolean, n: number, result: QueueDepthResult): Promise<void> {
  const depths = quick ? [0, 20_000] : [0, 100_000, 1_000_000];
  const rssAt = new Map<number, number>();
  for (const depth of depths) {
    using dir = tmp("mta-bench-depth-");
    const prefillS = depth ? await prefill(join(dir.path, "spool"), depth) : 0;
    if (depth) log(`mta: ${fmt(depth)} messages pre-filled in ${prefillS.toFixed(1)} s`);
    const sinkPort = freePort();
    using sink = startCountingSink(dir.path, `127.0.0.1:${sinkPort}`);
    await Bun.sleep(300);
    const t0 = performance.now();
    await using mta = await startBenchMta(dir.path, mtaYaml(dir.path, sinkPort));
    const startS = (performance.now() - t0) / 1000;
    result.mta.recovery.push({ depth, startS, spoolMs: spoolOpenMs(mta) });
    await Bun.sleep(1000);
    rssAt.set(depth, rssBytes(mta.pid));
    if (depth === 0) {
      const idleN = quick ? 1000 : 10_000;
      await Bun.sleep(500);
      const rss0 = rssBytes(mta.pid);
      const held = await holdIdleSessions(mta.smtpPort, idleN);
      await Bun.sleep(1000);
      const rss1 = rssBytes(mta.pid);
      await held.release();
      result.mta.idleSessions = held.ready;
      result.mta.rssPerIdleSessionB = (rss1 - rss0) / Math.max(1, held.ready);
      log(`mta idle: ${held.ready} sessions, RSS +${fmt((rss1 - rss0) / 2 ** 20, 1)} MiB`);
    }
    const inj = smtpSource({
      host: "127.0.0.1",
      port: mta.smtpPort,
      count: n,
      sizeBytes: 1000,
      sessions: 50,
      to: "b@held.test",
    });
    const t1 = performance.now();
    smtpSource({
      host: "127.0.0.1",
      port: mta.smtpPort,
      count: n,
      sizeBytes: 1000,
      sessions: 50,
      to: "b@k1.test",
    });
    const got = await waitCount(sink.received, n, 120_000);
    const deliverRate = got / ((performance.now() - t1) / 1000);
    result.depth.push({ system: "mta", depth, injectMsgsPerS: inj.rate, deliverMsgsPerS: deliverRate });
    log(
      `mta depth ${fmt(depth)}: start ${startS.toFixed(2)} s, inject ${fmt(inj.rate)}/s, deliver ${fmt(deliverRate)}/s (${got}/${n})`,
    );
    if (depth === 0) {
      for (const sessions of [10, 50, 200, 1000]) {
        const r = smtpSource({
          host: "127.0.0.1",
          port: mta.smtpPort,
          count: n,
          sizeBytes: 1000,
          sessions,
          to: "b@held.test",
        });
        result.sweep.push({ system: "mta", sessions, msgsPerS: r.rate });
        log(`mta sweep ${sessions} sessions: ${fmt(r.rate)}/s`);
      }
    }
  }
  const deepest = depths[depths.length - 1]!;
  result.mta.rssPerQueuedDepth = deepest;
  result.mta.rssPerQueuedB = ((rssAt.get(deepest) ?? Number.NaN) - (rssAt.get(0) ?? Number.NaN)) / deepest;
}

/** Processes whose parent is Postfix's master (plus master itself): pid, name, RSS, PSS in bytes. */
function postfixProcs(): { pid: number; name: string; rss: number; pss: number }[] {
  let master = -1;
  try {
    master = Number(readFileSync("/var/spool/postfix/pid/master.pid", "utf8").trim());
  } catch {
    return [];
  }
  const out: { pid: number; name: string; rss: number; pss: number }[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (Number(d) !== master && ppid !== master) continue;
      const roll = readFileSync(`/proc/${d}/smaps_rollup`, "utf8");
      const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(roll)?.[1] ?? 0) * 1024;
      out.push({ pid: Number(d), name, rss: kb("Rss"), pss: kb("Pss") });
    } catch {}
  }
  return out;
}

function sh(cmd: string): string {
  return spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" }).stdout.toString().trim();
}

async function greetingAfterStart(): Promise<number> {
  sh("postfix stop; sleep 1");
  const t0 = performance.now();
  sh("postfix start");
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      Bun.connect({
        hostname: "127.0.0.1",
        port: 2525,
        socket: {
          data(s, d) {
            resolve(d.toString().startsWith("220"));
            s.end();
          },
          error: () => resolve(false),
          connectError: () => resolve(false),
          close: () => resolve(false),
        },
      }).catch(() => resolve(false));
    });
    if (ok || performance.now() - t0 > 60_000) return (performance.now() - t0) / 1000;
    await Bun.sleep(10);
  }
}

async function postfixTotalRss(): Promise<number> {
  await Bun.sleep(1500);
  return postfixProcs().reduce((s, p) => s + p.rss, 0);
}

async function runPostfix(quick: boolean, n: number, result: QueueDepthResult): Promise<void> {
  if (!setupPostfix()) {
    log("postfix setup failed");
    return;
  }
  const pfDepth = quick ? 10_000 : 100_000;
  const anchor = (script: string, args: string[], env: Record<string, string> = {}) =>
    postfixAnchor(script, args, env).rate;
  sh("postsuper -d ALL >/dev/null 2>&1; postsuper -d ALL hold >/dev/null 2>&1");
  const rss0 = await postfixTotalRss();
  // Depth 0
  const inj0 = anchor("bench-inject.sh", ["hold", "1000", String(n), "50", "0"]);
  const e2e0 = anchor("bench-e2e.sh", ["1000", String(n), "50", "1", "0"]);
  result.depth.push({ system: "postfix", depth: 0, injectMsgsPerS: inj0, deliverMsgsPerS: e2e0 });
  log(`postfix depth 0: inject ${fmt(inj0)}/s, deliver ${fmt(e2e0)}/s`);
  for (const sessions of [10, 50, 200, 1000]) {
    const r = anchor("bench-inject.sh", ["hold", "1000", String(n), String(sessions), "0"]);
    result.sweep.push({ system: "postfix", sessions, msgsPerS: r });
    log(`postfix sweep ${sessions} sessions: ${fmt(r)}/s`);
  }
  // Idle sessions: one smtpd process each.
  const limit = sh("postconf -h default_process_limit");
  const idleN = 100;
  const before = new Set(postfixProcs().map((p) => p.pid));
  const held = await holdIdleSessions(2525, idleN);
  await Bun.sleep(1000);
  const smtpds = postfixProcs().filter((p) => p.name === "smtpd" && !before.has(p.pid));
  const all = postfixProcs().filter((p) => p.name === "smtpd");
  await held.release();
  const per = all.length ? all : smtpds;
  result.postfix = {
    startS: Number.NaN,
    startDepth: pfDepth,
    rssPerQueuedB: Number.NaN,
    idleSessions: held.ready,
    rssPerIdleSessionB: per.reduce((s, p) => s + p.rss, 0) / Math.max(1, per.length),
    pssPerIdleSessionB: per.reduce((s, p) => s + p.pss, 0) / Math.max(1, per.length),
    processLimit: `default_process_limit ${limit}`,
  };
  log(
    `postfix idle: ${held.ready} sessions, ${per.length} smtpd, RSS ${fmt(result.postfix.rssPerIdleSessionB / 1024)} KiB each`,
  );
  // Pre-fill the hold queue.
  const t0 = performance.now();
  sh("postsuper -d ALL >/dev/null 2>&1; postsuper -d ALL hold >/dev/null 2>&1");
  for (let q = 0, rep = 0; q < pfDepth; q += 10_000, rep++)
    anchor(
      "bench-inject.sh",
      ["hold", "1000", String(Math.min(10_000, pfDepth - q)), "50", String(rep), "prefill"],
      {
        KEEPQ: "1",
      },
    );
  const queued = Number(sh("find /var/spool/postfix/hold -type f | wc -l"));
  log(
    `postfix: ${fmt(queued)} messages in the hold queue after ${((performance.now() - t0) / 1000).toFixed(0)} s`,
  );
  result.postfix.startS = await greetingAfterStart();
  result.postfix.startDepth = queued;
  const rssQ = await postfixTotalRss();
  result.postfix.rssPerQueuedB = (rssQ - rss0) / Math.max(1, queued);
  const inj = anchor("bench-inject.sh", ["hold", "1000", String(n), "50", "0"], { KEEPQ: "1" });
  const e2e = anchor("bench-e2e.sh", ["1000", String(n), "50", "1", "0"], { KEEPQ: "1" });
  result.depth.push({ system: "postfix", depth: queued, injectMsgsPerS: inj, deliverMsgsPerS: e2e });
  log(
    `postfix depth ${fmt(queued)}: start ${result.postfix.startS.toFixed(2)} s, inject ${fmt(inj)}/s, deliver ${fmt(e2e)}/s`,
  );
  sh("postsuper -d ALL >/dev/null 2>&1; postsuper -d ALL hold >/dev/null 2>&1");
}

export async function run(opts: { quick: boolean; postfix: boolean }): Promise<QueueDepthResult> {
  const n = opts.quick ? 3000 : 20_000;
  const result: QueueDepthResult = {
    quick: opts.quick,
    messagesPerRun: { mta: n, postfix: opts.quick ? 3000 : 10_000 },
    depth: [],
    sweep: [],
    mta: {
      recovery: [],
      rssPerQueuedB: Number.NaN,
      rssPerQueuedDepth: 0,
      idleSessions: 0,
      rssPerIdleSessionB: Number.NaN,
    },
  };
  if (!SMTP_SOURCE || !SMTP_SINK) {
    log("smtp-source/smtp-sink are not installed (apt-get install postfix): nothing to measure");
    return result;
  }
  await runMta(opts.quick, n, result);
  if (opts.postfix && postfixInstalled() && process.getuid?.() === 0)
    await runPostfix(opts.quick, result.messagesPerRun.postfix, result);
  return result;
}

if (import.meta.main) {
  const quick = process.argv.includes("--quick");
  const withPostfix = !process.argv.includes("--no-postfix");
  const r = await run({ quick, postfix: withPostfix });
  if (withPostfix) spawnSync(["postfix", "stop"], { stdout: "ignore", stderr: "ignore" });
  console.log(`# queue depth: ${machine()}; 1 KB messages, 50 sessions unless said`);
  console.log("system   depth      inject msgs/s  deliver msgs/s");
  for (const p of r.depth)
    console.log(
      `${p.system.padEnd(8)} ${fmt(p.depth).padStart(9)}  ${fmt(p.injectMsgsPerS).padStart(13)}  ${fmt(p.deliverMsgsPerS).padStart(14)}`,
    );
  console.log("system   sessions  inject msgs/s");
  for (const p of r.sweep)
    console.log(`${p.system.padEnd(8)} ${String(p.sessions).padStart(8)}  ${fmt(p.msgsPerS).padStart(13)}`);
  for (const x of r.mta.recovery)
    console.log(
      `mta start with ${fmt(x.depth)} queued: ${x.startS.toFixed(2)} s (spool recovery ${fmt(x.spoolMs)} ms)`,
    );
  console.log(
    `mta RSS per queued message at ${fmt(r.mta.rssPerQueuedDepth)}: ${fmt(r.mta.rssPerQueuedB)} B; per idle session (${r.mta.idleSessions}): ${fmt(r.mta.rssPerIdleSessionB)} B`,
  );
  if (r.postfix) console.log(`postfix: ${JSON.stringify(r.postfix)}`);
  if (process.argv.includes("--json")) console.log(`BENCH_JSON ${JSON.stringify(r)}`);
  process.exit(0);
}
