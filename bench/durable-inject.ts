/**
 * Durable injection: Postfix's smtp-source → `mta serve` (spool.sync: true, delivery deferred to a dead
 * route so nothing leaves), and the same load against Postfix in the same run (bench/postfix, "hold" mode:
 * accepted, fsync'd queue file, never delivered).
 * Usage: bun bench/durable-inject.ts [count=20000] [--no-postfix] [--reps 3] [--json]
 * (--json also prints the rows as one `BENCH_JSON [...]` line, for bench/all.ts)
 * Prints: msgs/s and mta CPU ms per message for 1 KB and 100 KB, 50 and 1,000 sessions.
 */
import { join } from "node:path";
import {
  cpuSeconds,
  fmt,
  median,
  postfixAnchor,
  postfixInstalled,
  printTable,
  type Row,
  SMTP_SOURCE,
  setupPostfix,
  smtpSource,
  startBenchMta,
  stopPostfix,
  tmp,
} from "./_support.ts";

const count = Number(/^\d+$/.test(process.argv[2] ?? "") ? process.argv[2] : 20_000);
const json = process.argv.includes("--json");
const withPostfix = !process.argv.includes("--no-postfix") && postfixInstalled();
if (!SMTP_SOURCE) {
  console.log("smtp-source is not installed (apt-get install postfix): nothing to measure");
  process.exit(0);
}

const cases = [
  { size: 1000, sessions: 50 },
  { size: 1000, sessions: 1000 },
  { size: 100_000, sessions: 50 },
  { size: 100_000, sessions: 1000 },
];
const reps = Number(process.argv[process.argv.indexOf("--reps") + 1] ?? 3) || 3;
const rows: Row[] = [];

for (const c of cases) {
  const n = c.size > 10_000 ? Math.max(2000, Math.floor(count / 10)) : count;
  const rates: number[] = [];
  const cpuMs: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    using dir = tmp("mta-bench-inject-");
    await using mta = await startBenchMta(
      dir.path,
      [
        "hostname: bench.mta.test",
        `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
        "listen: [{ address: 127.0.0.1:0, max_connections_per_ip: 5000, max_message_size: 50MB }]",
        "control: { address: 127.0.0.1:0 }",
        // Deliveries go to a closed port: the destination is suspended at once and nothing leaves.
        "delivery: { routes: { k1.test: 127.0.0.1:9 }, retry: [1h] }",
        `log: { level: info, format: json, deliveries: "" }`,
      ].join("\n"),
    );
    const cpu0 = cpuSeconds(mta.pid);
    const r = smtpSource({
      host: "127.0.0.1",
      port: mta.smtpPort,
      count: n,
      sizeBytes: c.size,
      sessions: c.sessions,
      to: "b@k1.test",
    });
    const cpu1 = cpuSeconds(mta.pid);
    if (!r.ok) console.error(`smtp-source failed: ${r.output.slice(-500)}`);
    rates.push(r.rate);
    cpuMs.push(((cpu1 - cpu0) * 1000) / n);
  }
  let pf: number | undefined;
  if (withPostfix) {
    const pfRates: number[] = [];
    if (rows.length === 0) setupPostfix();
    for (let rep = 0; rep < reps; rep++)
      pfRates.push(
        postfixAnchor("bench-inject.sh", ["hold", String(c.size), String(n), String(c.sessions), String(rep)])
          .rate,
      );
    pf = median(pfRates);
  }
  rows.push({
    figure: "durable injection",
    conditions: `${fmt(c.size / 1000)} KB, ${c.sessions} sessions, ${fmt(n)} msgs, fdatasync on; mta CPU ${median(cpuMs).toFixed(3)} ms/msg; median of ${reps}`,
    mta: median(rates),
    postfix: pf,
    unit: "msgs/s",
  });
}
if (withPostfix) stopPostfix();
printTable("Durable injection (smtp-source → mta serve / Postfix)", rows);
if (json) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
