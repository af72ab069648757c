/**
 * `POST /api/v1/inject` throughput: 1 KB messages in batches of 100, several requests in flight, against
 * `mta serve` with a durable spool (fdatasync on; deliveries parked on a dead route).
 * Usage: bun bench/inject-http.ts [messages=50000] [inFlight=8]
 */
import { join } from "node:path";
import { cpuSeconds, printTable, startBenchMta, tmp } from "./_support.ts";

const total = Number(process.argv[2] ?? 50_000);
const inFlight = Number(process.argv[3] ?? 8);
const BATCH = 100;
const text = `${"x".repeat(76)}\r\n`.repeat(11);

using dir = tmp("mta-bench-http-");
await using mta = await startBenchMta(
  dir.path,
  [
    "hostname: bench.mta.test",
    `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
    "listen: [{ address: 127.0.0.1:0 }]",
    "control: { address: 127.0.0.1:0, token: bench-token }",
    "delivery: { routes: { k1.test: 127.0.0.1:9 }, retry: [1h] }",
    `log: { level: info, format: json, deliveries: "" }`,
  ].join("\n"),
);
const url = `http://127.0.0.1:${mta.controlPort}/api/v1/inject`;
const body = JSON.stringify({
  messages: Array.from({ length: BATCH }, (_, i) => ({
    sender: "app@example.com",
    recipients: [`r${i}@k1.test`],
    subject: "bench",
    text,
  })),
});
let sent = 0;
let accepted = 0;
let failed = 0;
const cpu0 = cpuSeconds(mta.pid);
const t0 = performance.now();
await Promise.all(
  Array.from({ length: inFlight }, async () => {
    while (sent < total) {
      sent += BATCH;
      const r = await fetch(url, {
        method: "POST",
        body,
        headers: { "content-type": "application/json", authorization: "Bearer bench-token" },
      });
      const j = (await r.json()) as { accepted?: number };
      if (r.ok) accepted += j.accepted ?? 0;
      else failed += BATCH;
    }
  }),
);
const wallS = (performance.now() - t0) / 1000;
const cpuMs = ((cpuSeconds(mta.pid) - cpu0) * 1000) / accepted;
printTable("HTTP injection (POST /api/v1/inject → mta serve)", [
  {
    figure: "HTTP injection",
    conditions: `1 KB messages (parts: subject + text), batches of ${BATCH}, ${inFlight} requests in flight, ${accepted.toLocaleString("en-US")} accepted (${failed} failed), fdatasync on; mta CPU ${cpuMs.toFixed(3)} ms/msg`,
    mta: accepted / wallS,
    unit: "msgs/s",
  },
]);
