/**
 * Outbound SMTP client throughput and memory: 1 KB messages from one Deliverer to Postfix's smtp-sink
 * on loopback, with pooled connections (reuse) and with a new connection per message, at several
 * concurrencies; then the memory of idle pooled connections. Prints a table; never passes or fails.
 *
 *   npx bun bench/deliverer.ts [messagesPerCase=5000]
 */
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import {
  type AttemptTarget,
  Deliverer,
  type OutboundMessage,
  RFC5321_TIMEOUTS,
} from "../src/deliverer/index.ts";
import { silentLogger } from "../src/observe/index.ts";

const perCase = Number(process.argv[2] ?? 5000);
const SINK = ["/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"].find((p) => fs.existsSync(p));
if (!SINK) {
  console.log("# smtp-sink (postfix) not installed: nothing to measure");
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
// -m: smtp-sink serves 256 connections at once by default; backlog 1024 for connection churn.
const sink = Bun.spawn([SINK, ...user, "-m", "4000", `127.0.0.1:${port}`, "1024"], {
  stdout: "ignore",
  stderr: "ignore",
});
await Bun.sleep(300);

const body = new TextEncoder().encode(
  `${`From: bench@client.test\r\nTo: r@sink.test\r\nSubject: bench\r\n\r\n${"x".repeat(70)}\r\n`.padEnd(
    1022,
    "y",
  )}\r\n`,
);
const target: AttemptTarget = {
  hosts: [{ name: "sink.test", ip: "127.0.0.1", port }],
  ehloName: "client.test",
  tls: "off",
  tlsVerify: false,
};
const message = (i: number): OutboundMessage => ({
  id: `B${i}`,
  sender: "bench@client.test",
  recipients: [{ index: 0, address: `r${i}@sink.test` }],
  body,
  needsSmtputf8: false,
  eightBit: false,
});

async function run(concurrency: number, perConnection: number): Promise<{ rate: number; failed: number }> {
  const d = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: perConnection,
    idleTimeoutMs: 10_000,
    maxIdlePerKey: concurrency,
    log: silentLogger(),
  });
  let next = 0;
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < perCase) {
        const r = await d.deliver(target, message(next++));
        if (r.recipients[0]!.kind !== "delivered") failed++;
      }
    }),
  );
  const s = (performance.now() - t0) / 1000;
  await d.close();
  return { rate: perCase / s, failed };
}

async function memory(): Promise<void> {
  // Memory of idle pooled connections: open N in parallel, keep them idle, compare RSS and heap.
  const N = 2000;
  const d = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 60_000,
    maxIdlePerKey: N,
    log: silentLogger(),
  });
  Bun.gc(true);
  const rss0 = process.memoryUsage().rss;
  const heap0 = process.memoryUsage().heapUsed;
  const results = await Promise.all(Array.from({ length: N }, (_, i) => d.deliver(target, message(i))));
  const notDelivered = results.filter((r) => r.recipients[0]!.kind !== "delivered");
  if (notDelivered.length > 0)
    console.log(
      `# ${notDelivered.length} of ${N} not delivered, e.g. ${JSON.stringify(notDelivered[0]!.recipients[0]!.reply)}`,
    );
  Bun.gc(true);
  const rss1 = process.memoryUsage().rss;
  const heap1 = process.memoryUsage().heapUsed;
  console.log(
    `# memory of ${N} idle pooled connections to smtp-sink (after one message each), fresh process, after GC`,
  );
  console.log(`| idle pooled connections | RSS per connection | JS heap per connection |`);
  console.log("|---:|---:|---:|");
  console.log(
    `| ${d.idleConnections()} | ${((rss1 - rss0) / N / 1024).toFixed(1)} KiB | ${((heap1 - heap0) / N / 1024).toFixed(1)} KiB |`,
  );
  await d.close();
}

await memory(); // first, before the throughput runs have grown the heap
console.log("");
console.log(
  `# Deliverer -> smtp-sink on 127.0.0.1, 1 KB messages, 1 recipient each, ${perCase} messages per case`,
);
console.log(
  `# ${os.cpus()[0]?.model ?? "cpu"} (${os.cpus().length} cores, shared), Bun ${Bun.version}; sink and client on the same machine`,
);
console.log("| concurrency | messages/connection | messages/s | not delivered |");
console.log("|---:|---:|---:|---:|");
await run(8, 100); // warm-up
for (const concurrency of [1, 10, 50]) {
  for (const perConnection of [1, 100]) {
    const r = await run(concurrency, perConnection);
    console.log(`| ${concurrency} | ${perConnection} | ${r.rate.toFixed(0)} | ${r.failed} |`);
  }
}

sink.kill();
await sink.exited;
