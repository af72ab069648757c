/**
 * `mta send` benchmark: prints figures with their conditions, never pass/fail.
 *
 *   bun bench/send.ts [--messages=100000] [--bin=dist/mta] [--destinations=100] [--dir=/tmp]
 *
 * Issue #8: N messages of ~1 KB from one JSON Lines file, sent by `mta send` into a spool with no
 * daemon running (so `mta send` takes the spool itself and delivers), to Postfix's smtp-sink on
 * loopback (no dumps). Reports messages/s end to end (start of `mta send` → exit, every message
 * delivered), the acceptance phase alone, and the peak RSS of the `mta send` process (VmHWM), which
 * must stay flat as N grows: the batch is streamed, never held whole.
 */
import { spawn, spawnSync } from "bun";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, "").split("=");
    return [k!, v ?? "1"] as const;
  }),
);
const N = Number(args.get("messages") ?? 100_000);
const DESTS = Number(args.get("destinations") ?? 100);
const BIN = resolve(args.get("bin") ?? process.env.MTA_SEND_BIN ?? "dist/mta");
const SINK = ["/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"].find((p) => {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
});
if (!SINK) {
  console.log("smtp-sink is not installed (apt-get install postfix): nothing to measure");
  process.exit(0);
}

function freePort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const p = s.port;
  s.stop(true);
  return p;
}

const dir = mkdtempSync(join(args.get("dir") ?? tmpdir(), "mta-bench-send-"));
chmodSync(dir, 0o777);
try {
  const port = freePort();
  const sink = spawn([SINK, "-u", "nobody", `127.0.0.1:${port}`, "4096"], {
    stdout: "ignore",
    stderr: "ignore",
  });
  await Bun.sleep(300);

  const routes = Array.from({ length: DESTS }, (_, i) => `d${i}.test: "127.0.0.1:${port}"`).join(", ");
  const config = join(dir, "mta.yaml");
  writeFileSync(
    config,
    [
      "hostname: mta.test",
      `spool: { dir: ${join(dir, "spool")} }`,
      "listen: []",
      `control: { address: 127.0.0.1:${freePort()} }`, // nothing listens: no daemon, mta send delivers itself
      'dns: { servers: ["127.0.0.1:9"] }',
      `delivery: { routes: { ${routes} } }`,
      `log: { level: error, format: json, deliveries: ${join(dir, "deliveries.jsonl")} }`,
    ].join("\n"),
  );
  mkdirSync(join(dir, "spool"), { recursive: true });

  // ~1 KB per message: headers composed by mta send plus a 900-byte text body.
  const batch = join(dir, "batch.jsonl");
  const body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(16).slice(0, 900);
  const lines: string[] = [];
  for (let i = 0; i < N; i++)
    lines.push(
      JSON.stringify({
        sender: "bulk@origin.test",
        recipients: [`u${i}@d${i % DESTS}.test`],
        subject: `bench ${i}`,
        text: body,
      }),
    );
  writeFileSync(batch, `${lines.join("\n")}\n`);
  lines.length = 0;
  const inputBytes = statSync(batch).size;

  const t0 = performance.now();
  const child = spawn([BIN, "send", "-c", config, "--json", "--max-time", "30m", "--batch", batch], {
    stdout: "pipe",
    stderr: "pipe",
  });
  let peakKb = 0;
  const poll = setInterval(() => {
    try {
      const status = require("node:fs").readFileSync(`/proc/${child.pid}/status`, "utf8") as string;
      const m = /VmHWM:\s+(\d+) kB/.exec(status);
      if (m) peakKb = Math.max(peakKb, Number(m[1]));
    } catch {}
  }, 50);
  const code = await child.exited;
  const t1 = performance.now();
  clearInterval(poll);
  const out = await new Response(child.stdout).text();
  const err = await new Response(child.stderr).text();
  sink.kill("SIGKILL");
  await sink.exited;
  let summary: Record<string, number | string> = {};
  try {
    summary = JSON.parse(out);
  } catch {
    console.log(`mta send exited ${code} without a JSON summary:\n${out}\n${err}`);
    process.exit(0);
  }
  const seconds = (t1 - t0) / 1000;
  const version = spawnSync([BIN, "--version"]).stdout.toString().trim();
  console.log(
    `mta send benchmark (${BIN} ${version}, bun ${Bun.version}, ${cpus().length} CPUs, ${cpus()[0]?.model ?? "?"})`,
  );
  console.log(
    `conditions: ${N.toLocaleString("en-US")} messages of ~1 KB from one JSONL file (${(inputBytes / 1e6).toFixed(1)} MB), ` +
      `${DESTS} destinations routed to one smtp-sink on loopback, no daemon (mta send holds the spool), sync on, exit ${code}`,
  );
  const rows: [string, string][] = [
    ["accepted", String(summary.accepted)],
    ["delivered (recipients)", String(summary.delivered)],
    ["deferred / bounced / invalid", `${summary.deferred} / ${summary.bounced} / ${summary.invalid}`],
    ["end to end (send start → exit, all delivered)", `${seconds.toFixed(1)} s`],
    ["end-to-end rate", `${Math.round(N / seconds).toLocaleString("en-US")} msgs/s`],
    ["peak RSS of mta send (VmHWM)", `${(peakKb / 1024).toFixed(0)} MiB`],
  ];
  for (const [k, v] of rows) console.log(`  ${k.padEnd(48)} ${v}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
