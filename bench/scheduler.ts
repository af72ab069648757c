/**
 * Scheduler figures: the scheduled queue (timer heap) alone at 1M entries, and draining a pre-filled
 * spool through Scheduler -> Deliverer -> Postfix's smtp-sink on loopback (1 KB messages, 1 and 100
 * destinations). Prints a table with the conditions; never passes or fails.
 *
 *   npx bun bench/scheduler.ts [messages=10000]
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Deliverer, RFC5321_TIMEOUTS } from "../src/deliverer/index.ts";
import { silentLogger } from "../src/observe/index.ts";
import { TimerHeap } from "../src/scheduler/_heap.ts";
import { Scheduler } from "../src/scheduler/index.ts";
import { Spool } from "../src/spool/index.ts";
import { testRouter } from "../test/support/router.ts";

const total = Number(process.argv[2] ?? 10_000);

// ---- 1. the timer heap alone
{
  const n = 1_000_000;
  const h = new TimerHeap();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) h.push(i, Math.random() * 1e9);
  const t1 = performance.now();
  let popped = 0;
  while (h.popDue(Number.POSITIVE_INFINITY) !== undefined) popped++;
  const t2 = performance.now();
  console.log(`# scheduled queue (TimerHeap), ${n.toLocaleString()} random due times`);
  console.log(`push  ${((n / (t1 - t0)) * 1000).toFixed(0).padStart(10)} ops/s`);
  console.log(`pop   ${((popped / (t2 - t1)) * 1000).toFixed(0).padStart(10)} ops/s`);
}

// ---- 2. drain through smtp-sink
const SINK = ["/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"].find((p) => fs.existsSync(p));
if (!SINK) {
  console.log("# smtp-sink (postfix) not installed: no end-to-end figure");
  process.exit(0);
}
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
const port = await freePort();
const user = process.getuid?.() === 0 ? ["-u", "nobody"] : [];
const sink = Bun.spawn([SINK, ...user, `127.0.0.1:${port}`, "1024"], { stdout: "ignore", stderr: "ignore" });
await Bun.sleep(300);

const body = new TextEncoder().encode(
  `${`From: bench@client.test\r\nTo: r@sink.test\r\nSubject: bench\r\n\r\n${"x".repeat(70)}\r\n`.padEnd(
    1022,
    "y",
  )}\r\n`,
);

async function drain(destinations: number, perDestination: number, globalCap: number) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mta-bench-sched-"));
  const spool = await Spool.open({ dir, sync: false });
  const batch = [];
  for (let i = 0; i < total; i++) {
    const d = `d${i % destinations}.test`;
    batch.push({
      sender: "bench@client.test",
      destination: d,
      recipients: [{ address: `r${i}@${d}` }],
      body,
    });
  }
  await spool.appendMany(batch);
  const deliverer = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: 1000,
    idleTimeoutMs: 10_000,
    maxIdlePerKey: globalCap,
    log: silentLogger(),
  });
  let delivered = 0;
  let other = 0;
  const scheduler = new Scheduler({
    spool,
    deliverer,
    router: testRouter({
      route: () => ({ kind: "hosts", hosts: [{ name: "sink.test", ip: "127.0.0.1", port }] }),
      policy: () => ({
        maxConnections: perDestination,
        maxMessagesPerConnection: 1000,
        tls: "off",
        tlsVerify: false,
        initialWindow: perDestination,
      }),
    }),
    hostname: "bench.test",
    retryMs: [60_000],
    maxAgeMs: 86_400_000,
    delayWarningMs: 0,
    maxConnections: globalCap,
    onEvent: (e) => (e.type === "delivery" ? delivered++ : other++),
    log: silentLogger(),
  });
  const rss0 = process.memoryUsage().rss;
  const t0 = performance.now();
  scheduler.start();
  await scheduler.idle();
  const ms = performance.now() - t0;
  const rss1 = process.memoryUsage().rss;
  await scheduler.stop(1000);
  await deliverer.close();
  await spool.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { ms, delivered, other, rssMb: rss1 / 2 ** 20, rssGrowMb: (rss1 - rss0) / 2 ** 20 };
}

console.log(
  `\n# drain a pre-filled spool (sync off) -> Scheduler -> Deliverer -> smtp-sink, ${total} x 1 KB, ${os.cpus().length} CPUs`,
);
console.log("destinations  conn/dest  global  delivered  other      msgs/s    RSS MB");
for (const [dests, per, global] of [
  [1, 20, 20],
  [1, 50, 50],
  [100, 4, 100],
] as const) {
  const r = await drain(dests, per, global);
  console.log(
    `${String(dests).padStart(12)}  ${String(per).padStart(9)}  ${String(global).padStart(6)}  ${String(r.delivered).padStart(9)}  ${String(r.other).padStart(5)}  ${((r.delivered / r.ms) * 1000).toFixed(0).padStart(10)}  ${r.rssMb.toFixed(0).padStart(8)}`,
  );
}
sink.kill();
