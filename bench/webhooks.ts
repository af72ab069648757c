/**
 * Webhook benchmark: prints figures with their conditions, never pass/fail.
 *
 *   bun bench/webhooks.ts [--events=200000] [--count=20000] [--reps=3] [--json]
 *
 * 1. Throughput: `mta serve` with one webhook whose position is the start of a delivery log already
 *    holding N event lines; a fast receiver on loopback (this process, Bun.serve, 200 at once) counts
 *    them. events/s from the daemon's start to the last event received.
 * 2. The cost to mail: end to end with 100 destinations (bench/e2e.ts's setup: the injector, a DNS
 *    server on loopback, one smtp-sink on 0.0.0.0), delivery log on, without and with a webhook
 *    taking every event type, alternating runs in the same process; medians and their ratio.
 * Postfix has no webhooks (its nearest is a log shipper reading maillog), so there is no Postfix column.
 */
import { spawn } from "bun";
import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDnsServer } from "../test/support/dnsServer.ts";
import { inject } from "./_injector.ts";
import {
  cpuSeconds,
  freePort,
  median,
  printTable,
  type Row,
  SMTP_SINK,
  startBenchMta,
  startCountingSink,
  tmp,
  waitCount,
} from "./_support.ts";

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, "").split("=");
    return [k!, v ?? "1"] as const;
  }),
);
const EVENTS = Number(args.get("events") ?? 200_000);
const COUNT = Number(args.get("count") ?? 20_000);
const REPS = Number(args.get("reps") ?? 3);
const SECRET = "bench-webhook-secret-0123456789";

/**
 * A receiver in a child process (so that it does not share an event loop with the injector) that
 * answers 200 at once and counts events without parsing: one `{"time":` per delivery-log line.
 */
async function receiver() {
  const code = `
    let events = 0, batches = 0;
    const server = Bun.serve({ hostname: "127.0.0.1", port: 0, async fetch(req) {
      if (req.method === "GET") return new Response(events + " " + batches);
      const body = await req.text();
      for (let i = body.indexOf('{"time":'); i >= 0; i = body.indexOf('{"time":', i + 8)) events++;
      batches++;
      return new Response("ok");
    } });
    console.log(server.port);`;
  const child = spawn([process.execPath, "-e", code], { stdout: "pipe", stderr: "inherit" });
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  const port = Number(new TextDecoder().decode(value).trim());
  let base = [0, 0];
  let last = [0, 0];
  const poll = async () => {
    const t = await (await fetch(`http://127.0.0.1:${port}/`)).text();
    last = t.split(" ").map(Number);
  };
  const timer = setInterval(() => void poll().catch(() => {}), 20);
  return {
    url: `http://127.0.0.1:${port}/hook`,
    events: () => last[0]! - base[0]!,
    batches: () => last[1]! - base[1]!,
    async reset() {
      await poll();
      base = [...last];
    },
    stop() {
      clearInterval(timer);
      child.kill();
    },
  };
}

function eventLine(i: number): string {
  const id = `01JD${String(i).padStart(10, "0")}`;
  return JSON.stringify({
    time: new Date(1_796_000_000_000 + i).toISOString(),
    type: i % 2 ? "delivery" : "reception",
    id,
    destination: `d${i % 100}.test`,
    sender: "bench@example.com",
    recipient: `${i}b@d${i % 100}.test`,
    mx: `mx.d${i % 100}.test`,
    ip: "127.10.0.1",
    code: 250,
    enhanced: "2.0.0",
    text: `Ok: queued as ${id}`,
    attempt: 1,
    queueTimeMs: 12,
    size: 1043,
  });
}

const webhookYaml = (url: string) =>
  [
    "webhooks:",
    "  - name: bench",
    `    url: ${url}`,
    `    secret: ${SECRET}`,
    '    events: ["*"]',
    "    batch_size: 1000",
  ].join("\n");

const rows: Row[] = [];
const rx = await receiver();
try {
  // ---- 1. throughput -----------------------------------------------------------------------------
  {
    using dir = tmp("mta-bench-webhook-");
    const logFile = join(dir.path, "deliveries.jsonl");
    const lines: string[] = [];
    for (let i = 0; i < EVENTS; i++) lines.push(eventLine(i));
    writeFileSync(logFile, `${lines.join("\n")}\n`);
    const st = statSync(logFile);
    mkdirSync(join(dir.path, "spool", "webhooks"), { recursive: true });
    writeFileSync(
      join(dir.path, "spool", "webhooks", "bench.pos"),
      JSON.stringify({ inode: `${st.dev}:${st.ino}`, offset: 0 }),
    );
    await rx.reset();
    const t0 = performance.now();
    await using mta = await startBenchMta(
      dir.path,
      [
        "hostname: bench.mta.test",
        `spool: { dir: ${join(dir.path, "spool")} }`,
        "listen: [{ address: 127.0.0.1:0 }]",
        "control: { address: 127.0.0.1:0 }",
        `log: { level: info, format: json, deliveries: ${logFile} }`,
        webhookYaml(rx.url),
      ].join("\n"),
    );
    const cpu0 = cpuSeconds(mta.pid);
    const got = await waitCount(rx.events, EVENTS, 120_000);
    const wallS = (performance.now() - t0) / 1000;
    const cpuUs = ((cpuSeconds(mta.pid) - cpu0) * 1e6) / got;
    rows.push({
      figure: "webhook throughput",
      conditions: `${EVENTS.toLocaleString("en-US")} delivery-log lines of ~${Math.round(st.size / EVENTS)} B from the file, batches of 1,000, HMAC-SHA256 signed, a receiver on loopback answering 200 at once; ${rx.batches()} POSTs; from the daemon's start; mta CPU ${cpuUs.toFixed(1)} µs/event`,
      mta: got / wallS,
      unit: "events/s",
    });
  }

  // ---- 2. end to end with and without a webhook ------------------------------------------------------
  if (!SMTP_SINK)
    console.log("smtp-sink is not installed (apt-get install postfix): end-to-end part skipped");
  else {
    const DESTS = 100;
    const ipFor = (i: number) => `127.10.${Math.floor(i / 256) % 256}.${(i % 256) + 1}`;
    const zone: Record<string, { mx?: { exchange: string; preference: number }[]; a?: string[] }> = {};
    for (let i = 0; i < DESTS; i++) {
      zone[`d${i}.test`] = { mx: [{ exchange: `mx.d${i}.test`, preference: 10 }] };
      zone[`mx.d${i}.test`] = { a: [ipFor(i)] };
    }
    await using dns = await startDnsServer(zone);
    const rates: Record<"off" | "on", number[]> = { off: [], on: [] };
    let eventsSeen = 0;
    let lagAtEnd = 0;
    for (let rep = 0; rep < REPS; rep++) {
      for (const hook of ["off", "on"] as const) {
        using dir = tmp("mta-bench-webhook-e2e-");
        const sinkPort = freePort();
        using sink = startCountingSink(dir.path, `0.0.0.0:${sinkPort}`);
        await Bun.sleep(300);
        await rx.reset();
        await using mta = await startBenchMta(
          dir.path,
          [
            "hostname: bench.mta.test",
            `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
            "listen: [{ address: 127.0.0.1:0, max_connections_per_ip: 5000 }]",
            "control: { address: 127.0.0.1:0 }",
            `dns: { servers: ["127.0.0.1:${dns.port}"] }`,
            `delivery: { port: ${sinkPort}, max_connections: 5000, domains: { default: { max_connections: 50 } } }`,
            `log: { level: info, format: json, deliveries: ${join(dir.path, "deliveries.jsonl")} }`,
            hook === "on" ? webhookYaml(rx.url) : "",
          ].join("\n"),
        );
        const t0 = performance.now();
        await inject({
          host: "127.0.0.1",
          port: mta.smtpPort,
          count: COUNT,
          sessions: 50,
          sizeBytes: 1000,
          domain: (s) => `d${s % DESTS}.test`,
        });
        await waitCount(sink.received, COUNT, 120_000);
        const wallS = (performance.now() - t0) / 1000;
        rates[hook].push(COUNT / wallS);
        if (hook === "on") {
          // How far behind the webhook was when the last message was delivered, then that it caught up.
          lagAtEnd = Math.max(lagAtEnd, 2 * COUNT - rx.events());
          await waitCount(rx.events, 2 * COUNT, 60_000);
          eventsSeen = rx.events();
        }
      }
    }
    const off = median(rates.off);
    const on = median(rates.on);
    rows.push({
      figure: "end to end, delivery log on, no webhook",
      conditions: `1 KB, ${DESTS} destinations, ${COUNT.toLocaleString("en-US")} msgs, 50 inbound sessions, fdatasync on; median of ${REPS}, alternating with the next row`,
      mta: off,
      unit: "msgs/s",
    });
    rows.push({
      figure: "end to end, with a webhook taking every event",
      conditions: `the same; ${eventsSeen.toLocaleString("en-US")} events received in the last run, at most ${lagAtEnd.toLocaleString("en-US")} behind when the last message was delivered; ${((on / off - 1) * 100).toFixed(1)}% against the row above`,
      mta: on,
      unit: "msgs/s",
    });
  }
} finally {
  rx.stop();
}
printTable("Webhooks", rows);
if (args.has("json")) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
