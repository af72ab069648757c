/**
 * `mta queue summary` on a deep queue: prints figures with their conditions, never pass/fail.
 *
 *   bun bench/queue-summary.ts [--queued=1000000] [--destinations=1000] [--seconds=5]
 *
 * Figures (issue #7): time of a summary over N queued messages (live: through the scheduler and
 * the control API over HTTP, as `mta queue summary` asks a daemon; offline: opening the stopped
 * spool read-only, as the CLI does without a daemon), and delivery msgs/s to a loopback smtp-sink
 * while nothing else runs vs while a summary is asked for once a second.
 * The queue is filled with sync: false (fast); every queued message is deferred by an hour so that
 * only the fresh messages to the sink are delivered.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import { HttpQueueClient, LocalQueueClient, QueueOps, queueRoutes } from "../src/admin/index.ts";
import { parseConfigText } from "../src/config/index.ts";
import { Deliverer, RFC5321_TIMEOUTS } from "../src/deliverer/index.ts";
import { Metrics, silentLogger, startControlServer } from "../src/observe/index.ts";
import { Scheduler } from "../src/scheduler/index.ts";
import { type TestRoute, testRouter } from "../test/support/router.ts";
import { Spool } from "../src/spool/index.ts";
import { SMTP_SINK, startSink } from "../test/support/sink.ts";

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, "").split("=");
    return [k!, v ?? "1"] as const;
  }),
);
const QUEUED = Number(args.get("queued") ?? 1_000_000);
const DESTS = Number(args.get("destinations") ?? 1000);
const SECONDS = Number(args.get("seconds") ?? 5);
const HOUR = 3_600_000;

const dir = fs.mkdtempSync(join(os.tmpdir(), "mta-bench-qs-"));
const spoolDir = join(dir, "spool");
const body = new Uint8Array(1024).fill(120);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function fill(): Promise<number> {
  const spool = await Spool.open({ dir: spoolDir, sync: false, bodyCacheBytes: 0 });
  const t0 = performance.now();
  const later = Date.now() + HOUR;
  for (let i = 0; i < QUEUED; i += 10_000) {
    const n = Math.min(10_000, QUEUED - i);
    const stored = await Promise.all(
      Array.from({ length: n }, (_, k) =>
        spool.append({
          sender: "bulk@origin.test",
          destination: `d${(i + k) % DESTS}.test`,
          recipients: [{ address: `u${i + k}@d${(i + k) % DESTS}.test` }],
          body,
        }),
      ),
    );
    await Promise.all(
      stored.map((s) =>
        spool.recordOutcome(s.slot, {
          recipients: [{ index: 0, state: "pending", reply: "451 4.3.0 later" }],
          attempts: 1,
          nextAttemptMs: later,
        }),
      ),
    );
  }
  const ms = performance.now() - t0;
  await spool.close();
  return ms;
}

const rows: [string, string, string][] = [];
function row(figure: string, value: string, conditions: string): void {
  rows.push([figure, value, conditions]);
  console.log(`${figure}: ${value}  (${conditions})`);
}

if (!SMTP_SINK) {
  console.log("smtp-sink is not installed (apt-get install postfix): no delivery figures");
}

const fillMs = await fill();
row("fill", `${Math.round(fillMs)} ms`, `${QUEUED} messages of 1 KiB, ${DESTS} destinations, sync off`);

// ---------------------------------------------------------------- offline (no daemon)
{
  const config = parseConfigText(
    `hostname: bench.test\nspool: { dir: ${spoolDir}, sync: false }\nlog: { deliveries: "" }\n`,
    join(dir, "mta.yaml"),
  ).config;
  const local = new LocalQueueClient(config);
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    const s = await local.summary({ top: 20 });
    times.push(performance.now() - t);
    if (s.totals.messages !== QUEUED) throw new Error(`offline summary counted ${s.totals.messages}`);
  }
  row(
    "summary offline",
    `${Math.round(median(times))} ms`,
    `median of 3; opens the stopped spool read-only (recovery scan of ${QUEUED} messages) + one pass`,
  );
}

// ---------------------------------------------------------------- live
const metrics = new Metrics();
const spool = await Spool.open({ dir: spoolDir, sync: false, metrics });
await using sink = SMTP_SINK ? await startSink({ dir }) : undefined;
const routes = new Map<string, TestRoute>();
if (sink)
  routes.set("sink.test", { kind: "hosts", hosts: [{ name: "sink", ip: "127.0.0.1", port: sink.port }] });
const deliverer = new Deliverer({
  timeouts: RFC5321_TIMEOUTS,
  maxMessagesPerConnection: 10_000,
  idleTimeoutMs: 5000,
  log: silentLogger(),
});
let delivered = 0;
const scheduler = new Scheduler({
  spool,
  deliverer,
  router: testRouter({
    route: (d) => routes.get(d) ?? { kind: "transient", reason: "bench: no route" },
    policy: () => ({ maxConnections: 20, maxMessagesPerConnection: 10_000, tls: "off", tlsVerify: false }),
  }),
  hostname: "bench.test",
  retryMs: [HOUR],
  maxAgeMs: 10 * 24 * HOUR,
  delayWarningMs: 0,
  maxConnections: 100,
  onEvent: (e) => {
    if (e.type === "delivery") delivered++;
  },
  log: silentLogger(),
});
const ops = new QueueOps({ spool, scheduler, hostname: "bench.test", metrics });
const control = startControlServer({
  host: "127.0.0.1",
  port: 0,
  token: "load-token",
  log: silentLogger(),
  metrics,
  routes: queueRoutes(ops),
});
const http = new HttpQueueClient("127.0.0.1", control.port, "load-token");
scheduler.start();
{
  const direct: number[] = [];
  const viaHttp: number[] = [];
  for (let i = 0; i < 5; i++) {
    let t = performance.now();
    ops.summary({ top: 20 });
    direct.push(performance.now() - t);
    t = performance.now();
    const s = await http.summary({ top: 20 });
    viaHttp.push(performance.now() - t);
    if (s.totals.messages !== QUEUED) throw new Error(`live summary counted ${s.totals.messages}`);
  }
  row(
    "summary live (QueueOps)",
    `${Math.round(median(direct))} ms`,
    `median of 5; ${QUEUED} queued, ${DESTS} destinations`,
  );
  row(
    "summary live (HTTP, top 20)",
    `${Math.round(median(viaHttp))} ms`,
    "median of 5; what `mta queue summary` waits for, less process start",
  );
}

/** Keeps `inFlight` fresh messages to sink.test queued; returns deliveries per second over `seconds`. */
async function deliveryRate(seconds: number, summaryEveryMs: number | undefined): Promise<number> {
  let stop = false;
  const feeder = (async () => {
    while (!stop) {
      const queued = spool.messageCount - QUEUED;
      if (queued < 2000) {
        const batch = await Promise.all(
          Array.from({ length: 500 }, (_, i) =>
            spool.append({
              sender: "app@origin.test",
              destination: "sink.test",
              recipients: [{ address: `r${i}@sink.test` }],
              body,
            }),
          ),
        );
        for (const s of batch) scheduler.enqueue(s.slot);
      } else await Bun.sleep(5);
    }
  })();
  const asker = (async () => {
    if (summaryEveryMs === undefined) return;
    while (!stop) {
      await http.summary({ top: 20 });
      await Bun.sleep(summaryEveryMs);
    }
  })();
  await Bun.sleep(1000); // warm up
  const d0 = delivered;
  const t0 = performance.now();
  await Bun.sleep(seconds * 1000);
  const rate = ((delivered - d0) * 1000) / (performance.now() - t0);
  stop = true;
  await Promise.all([feeder, asker]);
  return rate;
}

if (sink) {
  const base = await deliveryRate(SECONDS, undefined);
  const withSummary = await deliveryRate(SECONDS, 1000);
  const base2 = await deliveryRate(SECONDS, undefined);
  const ref = (base + base2) / 2;
  row(
    "deliveries, no summary",
    `${Math.round(ref)} msgs/s`,
    `mean of two ${SECONDS}s runs; 1 KiB to smtp-sink on loopback, 20 connections, ${QUEUED} deferred in the queue`,
  );
  row(
    "deliveries, summary every 1 s",
    `${Math.round(withSummary)} msgs/s`,
    `${SECONDS}s; HTTP summary over ${QUEUED} messages once a second`,
  );
  row("slowdown", `${(100 * (1 - withSummary / ref)).toFixed(1)} %`, "target: <= 10 %");
}

await scheduler.stop(2000);
await deliverer.close();
await control.stop();
await spool.close();
fs.rmSync(dir, { recursive: true, force: true });

console.log("\nfigure | value | conditions");
for (const r of rows) console.log(r.join(" | "));
console.log(`machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"}), bun ${Bun.version}`);
