/**
 * Injection with DKIM signing: Postfix's smtp-source → `mta serve` (spool.sync: true, deliveries parked
 * on a dead route), with signing off, Ed25519, RSA-2048 and dual RSA+Ed25519; RSA both on the event
 * loop (MTA_DKIM_THREADS=0, the code before the signing pool) and on worker threads (the default when
 * an RSA key is configured). While smtp-source runs, a probe opens a fresh SMTP session every 100 ms
 * and times connect → 220 → EHLO → 250: how well the listener keeps answering under load.
 *
 * The executable is built here with `src/dkim/_worker.ts` as a second entrypoint (the worker must be
 * embedded to load in a `bun build --compile` binary); `dist/mta` is built the same way only if build.ts
 * lists it. Without it the workers fail to load and the pool signs on the event loop (a warn line).
 *
 * Usage: bun bench/dkim-inject.ts [count=6000] [sessions=50]
 * Prints: msgs/s, mta CPU ms per message (all threads), probe latency p50/p99, per case; median of 3.
 */
import { spawn } from "bun";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { generateKey } from "../src/dkim/index.ts";
import { cpuSeconds, fmt, machine, median, ROOT, SMTP_SOURCE, tmp } from "./_support.ts";

const count = Number(process.argv[2] ?? 6000);
const sessions = Number(process.argv[3] ?? 50);
const sizeBytes = 1000;
const reps = 3;
if (!SMTP_SOURCE) {
  console.log("smtp-source is not installed (apt-get install postfix): nothing to measure");
  process.exit(0);
}

using work = tmp("mta-bench-dkim-");
const binary = join(work.path, "mta");
const built = await Bun.build({
  entrypoints: [join(ROOT, "src/cli/main.ts"), join(ROOT, "src/dkim/_worker.ts")],
  compile: { outfile: binary },
  minify: true,
  bytecode: true,
  format: "esm",
  target: "bun",
  sourcemap: "none",
});
if (!built.success || !existsSync(binary)) {
  for (const l of built.logs) console.error(l);
  process.exit(1);
}

const rsaFile = join(work.path, "rsa.pem");
const edFile = join(work.path, "ed.pem");
await Bun.write(rsaFile, generateKey("rsa", 2048).privateKeyPem);
await Bun.write(edFile, generateKey("ed25519").privateKeyPem);

interface Case {
  name: string;
  keys: string[];
  threads?: number;
}
const cases: Case[] = [
  { name: "signing off", keys: [] },
  { name: "Ed25519, event loop", keys: [edFile] },
  { name: "RSA-2048, event loop (before)", keys: [rsaFile], threads: 0 },
  { name: "RSA-2048, 1 worker", keys: [rsaFile], threads: 1 },
  { name: "RSA-2048, 2 workers (default here)", keys: [rsaFile] },
  { name: "RSA-2048 + Ed25519, event loop", keys: [rsaFile, edFile], threads: 0 },
  { name: "RSA-2048 + Ed25519, 2 workers (default)", keys: [rsaFile, edFile] },
];

async function startMta(dir: string, yaml: string, env: Record<string, string>) {
  const file = join(dir, "mta.yaml");
  await Bun.write(file, yaml);
  const proc = spawn([binary, "serve", "-c", file], {
    stdout: "ignore",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, ...env },
  });
  const lines: string[] = [];
  (async () => {
    let buf = "";
    for await (const chunk of proc.stderr) {
      buf += new TextDecoder().decode(chunk);
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    }
  })();
  const end = Date.now() + 30_000;
  for (;;) {
    const start = lines.map((l) => JSON.parse(l)).find((r) => String(r.msg).endsWith(" started"));
    if (start) {
      const port = Number(String(start.listeners[0]).split(":").pop());
      const warned = lines.some((l) => l.includes("DKIM worker"));
      return { proc, port, lines, warned };
    }
    if (proc.exitCode !== null || Date.now() > end)
      throw new Error(`mta did not start:\n${lines.join("\n")}`);
    await Bun.sleep(20);
  }
}

/** Connect → 220 → EHLO → final 250, in ms; QUIT afterwards. */
function probe(port: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let buf = "";
    let stage = 0;
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        data(s, chunk) {
          buf += chunk.toString();
          for (let i = buf.indexOf("\r\n"); i >= 0; i = buf.indexOf("\r\n")) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (line[3] === "-") continue;
            if (stage === 0) {
              stage = 1;
              s.write("EHLO probe.test\r\n");
            } else if (stage === 1) {
              stage = 2;
              resolve(performance.now() - t0);
              s.write("QUIT\r\n");
              s.end();
            }
          }
        },
        connectError() {
          resolve(Number.NaN);
        },
      },
    }).catch(() => resolve(Number.NaN));
  });
}

function pct(xs: number[], p: number): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : Number.NaN;
}

console.log(`## DKIM signing in the injection path (smtp-source → mta serve)\n`);
console.log(`Machine: ${machine()}; ${new Date().toISOString()}`);
console.log(
  `Conditions: ${fmt(sizeBytes / 1000)} KB messages (From: <a@example.com>, signed as example.com, relaxed/relaxed), ${sessions} sessions, ${fmt(count)} msgs per run, spool fdatasync on, deliveries parked; median of ${reps} runs. CPU = user+sys of the mta process, all threads.\n`,
);
console.log("| case | msgs/s | mta CPU ms/msg | probe EHLO p50 ms | probe EHLO p99 ms |");
console.log("|---|---:|---:|---:|---:|");
for (const c of cases) {
  const rates: number[] = [];
  const cpu: number[] = [];
  const probes: number[] = [];
  let warned = false;
  for (let rep = 0; rep < reps; rep++) {
    using dir = tmp("mta-bench-dkim-run-");
    const keys = c.keys.map((f, i) => `{ domain: example.com, selector: s${i}, key_file: ${f} }`);
    const mta = await startMta(
      dir.path,
      [
        "hostname: bench.mta.test",
        `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
        "listen: [{ address: 127.0.0.1:0, max_connections_per_ip: 5000 }]",
        "control: { address: 127.0.0.1:0 }",
        "delivery: { routes: { k1.test: 127.0.0.1:9 }, retry: [1h] }",
        `log: { level: info, format: json, deliveries: "" }`,
        keys.length ? `dkim: { keys: [${keys.join(", ")}] }` : "",
      ].join("\n"),
      c.threads === undefined ? {} : { MTA_DKIM_THREADS: String(c.threads) },
    );
    await Bun.sleep(200); // let the signing threads start
    warned ||= mta.warned || mta.lines.some((l) => l.includes("DKIM worker"));
    const cpu0 = cpuSeconds(mta.proc.pid);
    const t0 = performance.now();
    const source = spawn(
      [
        SMTP_SOURCE,
        "-N",
        "-s",
        String(sessions),
        "-m",
        String(count),
        "-l",
        String(sizeBytes),
        "-f",
        "a@example.com",
        "-t",
        "b@k1.test",
        `127.0.0.1:${mta.port}`,
      ],
      { stdout: "ignore", stderr: "pipe" },
    );
    let running = true;
    const prober = (async () => {
      while (running) {
        probes.push(await probe(mta.port));
        await Bun.sleep(100);
      }
    })();
    const code = await source.exited;
    const wallS = (performance.now() - t0) / 1000;
    running = false;
    await prober;
    const cpu1 = cpuSeconds(mta.proc.pid);
    if (code !== 0) console.error(`smtp-source exited ${code}: ${await new Response(source.stderr).text()}`);
    rates.push(count / wallS);
    cpu.push(((cpu1 - cpu0) * 1000) / count);
    mta.proc.kill("SIGTERM");
    await mta.proc.exited;
  }
  console.log(
    `| ${c.name}${warned ? " (workers failed to load!)" : ""} | ${fmt(median(rates))} | ${median(cpu).toFixed(3)} | ${pct(probes, 50).toFixed(1)} | ${pct(probes, 99).toFixed(1)} |`,
  );
}
