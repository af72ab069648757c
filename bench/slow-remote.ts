/**
 * Delivery to slow remote servers (issue #6): a fleet of slow SMTP sinks on 127.10.x.y:2600, run as
 * child processes (bench/_slowSink.ts; each answers the end of DATA after `--delay-ms`), and a
 * pre-filled spool drained through Scheduler -> Deliverer with egress sources 127.0.0.2.. bound on
 * connect. Prints messages/s, concurrent connections reached, RSS and CPU with the conditions, and,
 * with `--postfix` when Postfix is installed and we are root, the same sinks fed through Postfix
 * (bench/_slowPostfix.sh) and the ratio. Figures only; never passes or fails.
 *
 *   npx bun bench/slow-remote.ts [--domains 1000,10000] [--messages 60000] [--delay-ms 5000]
 *     [--sink-ips 1000] [--sink-procs 4] [--sources 4] [--global 15000] [--max-s 120] [--postfix]
 *
 * Loopback only. The sinks live in other processes so that this one's 20,000 open files are all
 * for outbound connections and the spool.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Deliverer, RFC5321_TIMEOUTS } from "../src/deliverer/index.ts";
import { silentLogger } from "../src/observe/index.ts";
import { type PoolMember, Scheduler } from "../src/scheduler/index.ts";
import { Spool } from "../src/spool/index.ts";
import { testRouter } from "../test/support/router.ts";

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : def;
}
const DOMAINS = arg("domains", "1000,10000").split(",").map(Number);
const MESSAGES = Number(arg("messages", "60000"));
const DELAY_MS = Number(arg("delay-ms", "5000"));
const SINK_IPS = Number(arg("sink-ips", "1000"));
const SINK_PROCS = Number(arg("sink-procs", "4"));
const SOURCES = Number(arg("sources", "4"));
const GLOBAL = Number(arg("global", "15000"));
const MAX_S = Number(arg("max-s", "120"));
const POSTFIX = process.argv.includes("--postfix");
const PORT = 2600;

/** Sink address k (0-based): 127.10.a.b with b in 1..250, never .0 or .255. */
export function sinkIp(k: number): string {
  return `127.10.${Math.floor(k / 250)}.${(k % 250) + 1}`;
}

/** RSS from a descriptor opened once (at 20,000 open sockets there is none to spare for a new one). */
const statmFd = fs.openSync("/proc/self/statm", "r");
const statmBuf = Buffer.alloc(128);
function rssBytes(): number {
  const n = fs.readSync(statmFd, statmBuf, 0, 128, 0);
  return Number(statmBuf.toString("latin1", 0, n).split(" ")[1]) * 4096;
}
function openFds(): number {
  try {
    return fs.readdirSync("/proc/self/fd").length;
  } catch {
    return -1;
  }
}

interface SinkStats {
  open: number;
  maxOpen: number;
  messages: number;
  sessions: number;
}

async function startSinks(): Promise<{ stats: SinkStats[]; procs: ReturnType<typeof Bun.spawn>[] }> {
  const procs: ReturnType<typeof Bun.spawn>[] = [];
  const stats: SinkStats[] = [];
  const ready: Promise<void>[] = [];
  for (let p = 0; p < SINK_PROCS; p++) {
    const ips: string[] = [];
    for (let k = p; k < SINK_IPS; k += SINK_PROCS) ips.push(sinkIp(k));
    const proc = Bun.spawn(
      [process.execPath, path.join(import.meta.dir, "_slowSink.ts"), String(PORT), String(DELAY_MS), ...ips],
      { stdout: "pipe", stderr: "inherit" },
    );
    procs.push(proc);
    stats.push({ open: 0, maxOpen: 0, messages: 0, sessions: 0 });
    ready.push(
      new Promise<void>((resolve) => {
        void (async () => {
          const dec = new TextDecoder();
          let buf = "";
          for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
            buf += dec.decode(chunk);
            for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
              const line = JSON.parse(buf.slice(0, nl));
              buf = buf.slice(nl + 1);
              if ("ready" in line) resolve();
              else stats[p] = line;
            }
          }
        })();
      }),
    );
  }
  await Promise.all(ready);
  return { stats, procs };
}

const body = new TextEncoder().encode(
  `${`From: bench@client.test\r\nTo: r@sink.test\r\nSubject: slow remote\r\n\r\n${"x".repeat(70)}\r\n`.padEnd(
    1022,
    "y",
  )}\r\n`,
);

interface RunResult {
  domains: number;
  delivered: number;
  other: number;
  wallS: number;
  msgsPerS: number;
  steadyMsgsPerS: number;
  peakConnections: number;
  sinkPeakOpen: number;
  peakRssMb: number;
  cpuPct: number;
  prefillS: number;
}

async function run(domains: number, sinks: { stats: SinkStats[] }): Promise<RunResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mta-bench-slow-"));
  const spool = await Spool.open({ dir, sync: false, bodyCacheBytes: 8 * 2 ** 20 });
  const t00 = performance.now();
  for (let start = 0; start < MESSAGES; start += 5000) {
    const batch = [];
    for (let i = start; i < Math.min(MESSAGES, start + 5000); i++) {
      const d = `d${i % domains}.test`;
      batch.push({
        sender: "bench@client.test",
        destination: d,
        recipients: [{ address: `r${i}@${d}` }],
        body,
      });
    }
    await spool.appendMany(batch);
  }
  const prefillS = (performance.now() - t00) / 1000;
  const deliverer = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: 100,
    // Idle pooled sockets are open files too: keep few, briefly, so active + idle stays under 20,000.
    idleTimeoutMs: 1000,
    maxIdlePerKey: 2,
    log: silentLogger(),
  });
  const members: PoolMember[] = [];
  for (let s = 0; s < SOURCES; s++)
    members.push({
      source: { name: `s${s}`, address: `127.0.0.${2 + s}`, ehloName: `s${s}.bench.test` },
      weight: 1,
    });
  // Enough per (source x site) that the global cap is what binds: sites x sources x perSite >= GLOBAL.
  const perSite = Math.max(1, Math.ceil(GLOBAL / (domains * Math.max(1, SOURCES))) + 1);
  let delivered = 0;
  let other = 0;
  const scheduler = new Scheduler({
    spool,
    deliverer,
    router: testRouter({
      route: (d) => {
        const k = Number(d.slice(1, d.indexOf(".")));
        return { kind: "hosts", hosts: [{ name: `mx.${d}`, ip: sinkIp(k % SINK_IPS), port: PORT }] };
      },
      policy: () => ({
        maxConnections: perSite,
        maxMessagesPerConnection: 100,
        tls: "off",
        tlsVerify: false,
        initialWindow: perSite * Math.max(1, SOURCES),
      }),
    }),
    hostname: "bench.test",
    retryMs: [60_000],
    maxAgeMs: 86_400_000,
    delayWarningMs: 0,
    maxConnections: GLOBAL,
    ...(SOURCES > 0 ? { pools: { default: members }, defaultPool: "default" } : {}),
    onEvent: (e) => (e.type === "delivery" ? delivered++ : other++),
    log: silentLogger(),
  });
  const sinkBase = sinks.stats.reduce((n, s) => n + s.messages, 0);
  let peakConnections = 0;
  let peakRss = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const samples: { t: number; delivered: number; active: number }[] = [];
  scheduler.start();
  // Done when every message has an outcome. Not scheduler.idle(): it also resolves while mail waits
  // for a timer (a site backing off after the sinks refused it), which ended runs early, uncounted.
  const finished = () => delivered + other >= MESSAGES;
  while (!finished() && (performance.now() - t0) / 1000 < MAX_S) {
    for (let i = 0; i < 20 && !finished(); i++) await Bun.sleep(50);
    const active = scheduler.activeConnections();
    peakConnections = Math.max(peakConnections, active);
    peakRss = Math.max(peakRss, rssBytes());
    samples.push({ t: (performance.now() - t0) / 1000, delivered, active });
    const sinkMsgs = sinks.stats.reduce((n, s) => n + s.messages, 0) - sinkBase;
    const sinkOpen = sinks.stats.reduce((n, s) => n + s.open, 0);
    console.error(
      `  t=${samples.at(-1)!.t.toFixed(0)}s delivered=${delivered} active=${active} sinkOpen=${sinkOpen} sinkMsgs=${sinkMsgs} rss=${(rssBytes() / 2 ** 20).toFixed(0)}MB fds=${openFds()}`,
    );
  }
  const wallS = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  // The middle of the drain: from 10% to 90% of the messages delivered (ramp-up and tail left out).
  let steadyMsgsPerS = 0;
  const a = samples.find((x) => x.delivered >= 0.1 * MESSAGES);
  const b = samples.find((x) => x.delivered >= 0.9 * MESSAGES);
  if (a && b && b.t > a.t) steadyMsgsPerS = (b.delivered - a.delivered) / (b.t - a.t);
  const sinkPeakOpen = sinks.stats.reduce((n, s) => n + s.maxOpen, 0);
  if (!finished()) {
    const waiting = scheduler.summary().filter((d) => d.messages > 0);
    const states = new Map<string, number>();
    for (const d of waiting) states.set(d.state, (states.get(d.state) ?? 0) + d.messages);
    const why = waiting.find((d) => d.lastError)?.lastError ?? "";
    console.error(
      `  not finished within ${MAX_S} s: ${MESSAGES - delivered - other} messages left (${[...states].map(([k, v]) => `${v} ${k}`).join(", ")})${why ? `; e.g. ${why}` : ""}`,
    );
  }
  await scheduler.stop(2000);
  await deliverer.close();
  await spool.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return {
    domains,
    delivered,
    other,
    wallS,
    msgsPerS: delivered / wallS,
    steadyMsgsPerS,
    peakConnections,
    sinkPeakOpen,
    peakRssMb: peakRss / 2 ** 20,
    cpuPct: ((cpu.user + cpu.system) / 1000 / (wallS * 1000)) * 100,
    prefillS,
  };
}

const sinks = await startSinks();
process.on("exit", () => {
  for (const p of sinks.procs) p.kill();
});
console.log(
  `# slow remote servers: ${SINK_IPS} sink addresses (127.10.x.y:${PORT}) in ${SINK_PROCS} child processes, ` +
    `reply to end of DATA after ${DELAY_MS} ms; ${MESSAGES.toLocaleString()} x 1 KB messages pre-filled (spool sync off); ` +
    `${SOURCES} egress sources (127.0.0.2..), global cap ${GLOBAL}, slow start skipped (initial window = limit), ` +
    `${os.cpus().length} CPUs shared, Bun ${Bun.version}`,
);
const results: RunResult[] = [];
for (const d of DOMAINS) results.push(await run(d, sinks));
console.log(
  "domains  delivered  other   wall s   msgs/s  10-90% msgs/s  peak conns  sink peak open  peak RSS MB  CPU % (1 core=100)",
);
for (const r of results)
  console.log(
    `${String(r.domains).padStart(7)}  ${String(r.delivered).padStart(9)}  ${String(r.other).padStart(5)}  ${r.wallS.toFixed(1).padStart(7)}  ${r.msgsPerS.toFixed(0).padStart(7)}  ${r.steadyMsgsPerS.toFixed(0).padStart(13)}  ${String(r.peakConnections).padStart(10)}  ${String(r.sinkPeakOpen).padStart(14)}  ${r.peakRssMb.toFixed(0).padStart(11)}  ${r.cpuPct.toFixed(0).padStart(6)}`,
  );
console.log("(sink peak open is the sum of each sink process's own peak, across all runs so far)");

if (POSTFIX) {
  const script = path.join(import.meta.dir, "_slowPostfix.sh");
  if (!fs.existsSync("/usr/sbin/postfix") || process.getuid?.() !== 0) {
    console.log("# Postfix: not installed or not root; no anchor figure in this run");
  } else {
    const n = Math.min(MESSAGES, 20_000);
    const base = sinks.stats.reduce((x, s) => x + s.messages, 0);
    const p = Bun.spawnSync(["bash", script, String(SINK_IPS), String(n), String(MAX_S)], {
      stdout: "pipe",
      stderr: "inherit",
      env: { ...process.env, SINK_BASE: String(base) },
    });
    const out = p.stdout.toString();
    process.stdout.write(out);
    const m = /postfix_msgs_per_s=([\d.]+)/.exec(out);
    if (m) {
      const pf = Number(m[1]);
      const best = Math.max(...results.map((r) => r.steadyMsgsPerS || r.msgsPerS));
      console.log(
        `# ratio mta / Postfix (steady msgs/s): ${(best / pf).toFixed(1)}x (Postfix ${pf.toFixed(0)} msgs/s)`,
      );
    }
  }
}
for (const p of sinks.procs) p.kill();
process.exit(0);
