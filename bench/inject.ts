/**
 * Injection benchmark, listener only (no spool): Postfix's `smtp-source` against one `startListener`
 * in this process, with an Acceptor that just counts. It measures the SMTP edge alone; the durable
 * figure (listener + spool group commit) is taken by the integrator against `mta serve`.
 * Also: RSS of 10,000 idle connected sessions (held open by a child process).
 *
 * Usage: bun bench/inject.ts [--quick]
 * Prints a table; never pass/fail.
 */
import { readFileSync } from "node:fs";
import * as os from "node:os";
import { parseCidr } from "../src/lib/index.ts";
import type { AcceptResult, Acceptor } from "../src/listener/index.ts";
import { startListener } from "../src/listener/index.ts";
import { silentLogger } from "../src/observe/index.ts";

const quick = process.argv.includes("--quick");
const smtpSource =
  Bun.which("smtp-source") ?? (Bun.file("/usr/sbin/smtp-source").size > 0 ? "/usr/sbin/smtp-source" : null);

class CountingAcceptor implements Acceptor {
  count = 0;
  bytes = 0;
  async accept(_e: unknown, message: Uint8Array): Promise<AcceptResult> {
    this.count++;
    this.bytes += message.length;
    return { ok: true, ids: [String(this.count)] };
  }
}

const acceptor = new CountingAcceptor();
const listener = await startListener(
  {
    name: "bench",
    host: "127.0.0.1",
    port: 0,
    hostname: "bench.test",
    relayFrom: [parseCidr("127.0.0.0/8")!],
    auth: "off",
    maxMessageBytes: 50_000_000,
    maxRecipients: 1000,
    maxLineBytes: 4096,
    maxErrors: 100,
    maxJunkCommands: 100,
    commandTimeoutMs: 300_000,
    dataTimeoutMs: 600_000,
    maxConnections: 20_000,
    maxConnectionsPerIp: 20_000,
    rejectBareNewlines: true,
  },
  acceptor,
  { log: silentLogger() },
);

const rows: string[][] = [];

/** TcpExt ListenOverflows: connections the kernel dropped because the accept queue was full. */
function listenOverflows(): number {
  try {
    const lines = readFileSync("/proc/net/netstat", "utf8").split("\n");
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const names = lines[i]!.split(/\s+/);
      const values = lines[i + 1]!.split(/\s+/);
      const k = names.indexOf("ListenOverflows");
      if (names[0] === "TcpExt:" && k > 0) return Number(values[k]);
    }
  } catch {
    // Not Linux: unknown.
  }
  return Number.NaN;
}

async function inject(sizeBytes: number, sessions: number, messages: number, reuse: boolean): Promise<void> {
  if (!smtpSource) return;
  const before = acceptor.count;
  const overflows0 = listenOverflows();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const args = [smtpSource, "-N", "-s", String(sessions), "-m", String(messages), "-l", String(sizeBytes)];
  if (reuse) args.push("-d");
  args.push("-f", "a@example.com", "-t", "b@k1.test", `127.0.0.1:${listener.port}`);
  const p = Bun.spawn(args, { stdout: "ignore", stderr: "pipe" });
  const code = await p.exited;
  const wallS = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const accepted = acceptor.count - before;
  const listenerCpuMs = (cpu.user + cpu.system) / 1000;
  const ru = p.resourceUsage();
  const sourceCpuMs = ru ? (Number(ru.cpuTime.user) + Number(ru.cpuTime.system)) / 1000 : Number.NaN;
  const err = code === 0 ? "" : ((await new Response(p.stderr).text()).trim().split("\n").at(-1) ?? "");
  rows.push([
    `${sizeBytes / 1000} KB`,
    String(sessions),
    reuse ? "yes (-d)" : "no",
    String(accepted),
    (accepted / wallS).toFixed(0),
    (listenerCpuMs / Math.max(1, accepted)).toFixed(3),
    (sourceCpuMs / Math.max(1, accepted)).toFixed(3),
    wallS.toFixed(2),
    String(listenOverflows() - overflows0),
    code === 0 ? "ok" : `rc=${code} ${err}`,
  ]);
}

async function idleSessions(n: number): Promise<string[]> {
  // The clients live in a child process so that their sockets do not count in our RSS.
  const child = `
const n = ${n}; let ready = 0; const socks = [];
const batch = 500;
for (let i = 0; i < n; i += batch) {
  await Promise.all(Array.from({ length: Math.min(batch, n - i) }, () => new Promise((resolve, reject) => {
    let greeted = false;
    Bun.connect({ hostname: "127.0.0.1", port: ${listener.port}, socket: {
      open(s) { socks.push(s); },
      data(s, d) { const t = d.toString(); if (!greeted && t.startsWith("220")) { greeted = true; s.write("EHLO idle.test\\r\\n"); } else if (t.includes("250 ")) { ready++; resolve(); } },
      error(s, e) { reject(e); }, connectError(s, e) { reject(e); },
    } }).catch(reject);
  })));
}
console.log("ready " + ready);
await new Promise((r) => process.stdin.on("end", r).resume());
`;
  Bun.gc(true);
  await Bun.sleep(200);
  Bun.gc(true);
  const rss0 = process.memoryUsage().rss;
  const p = Bun.spawn([process.execPath, "-e", child], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = p.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  const open = listener.connections();
  Bun.gc(true);
  await Bun.sleep(500);
  Bun.gc(true);
  const rss1 = process.memoryUsage().rss;
  p.stdin.end();
  p.kill();
  await p.exited;
  const deltaMb = (rss1 - rss0) / 1e6;
  return [
    String(n),
    out.trim(),
    String(open),
    (rss0 / 1e6).toFixed(1),
    (rss1 / 1e6).toFixed(1),
    deltaMb.toFixed(1),
    ((rss1 - rss0) / open).toFixed(0),
  ];
}

const cases: [number, number, number, boolean][] = quick
  ? [
      [1000, 50, 5000, false],
      [1000, 1000, 5000, false],
      [100_000, 50, 500, false],
    ]
  : [
      [1000, 50, 20_000, false],
      [1000, 1000, 20_000, false],
      [1000, 50, 50_000, true],
      [1000, 1000, 50_000, true],
      [100_000, 50, 3_000, false],
      [100_000, 1000, 3_000, false],
    ];

console.log(
  `bench/inject: listener only, no spool (Acceptor counts). ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), Bun ${Bun.version}.`,
);
console.log(
  "smtp-source and the listener share the machine; listener CPU = this process (bench harness included).",
);
if (!smtpSource) console.log("smtp-source not installed: injection rows skipped (.ci/run installs postfix).");
for (const [size, sessions, n, reuse] of cases) await inject(size, sessions, n, reuse);
if (rows.length) {
  const head = [
    "size",
    "sessions",
    "reuse conn",
    "accepted",
    "msgs/s",
    "listener CPU ms/msg",
    "smtp-source CPU ms/msg",
    "wall s",
    "listen overflows",
    "result",
  ];
  console.log(`| ${head.join(" | ")} |\n|${head.map(() => "---").join("|")}|`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
}
const idle = await idleSessions(quick ? 2000 : 10_000);
console.log("\nIdle sessions (connected, after EHLO), RSS of this process:");
console.log(
  "| sessions asked | child | open sessions | RSS before MB | RSS after MB | delta MB | bytes/session |\n|---|---|---|---|---|---|---|",
);
console.log(`| ${idle.join(" | ")} |`);
await listener.close();
