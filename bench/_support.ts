/**
 * Shared pieces of the benchmarks: the mta binary as a child, Postfix's smtp-source/smtp-sink, CPU
 * accounting from /proc, the Postfix anchor (bench/postfix/*.sh), and printing a table of figures.
 * Benchmarks print numbers with their conditions; they never pass or fail.
 */
import { spawn, spawnSync } from "bun";
import {
  appendFileSync,
  existsSync,
  fstatSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
} from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { freePort, SMTP_SINK, SMTP_SOURCE } from "../test/support/sink.ts";

export { freePort, SMTP_SINK, SMTP_SOURCE };
export const ROOT = resolve(import.meta.dir, "..");
/** The executable benchmarked: dist/mta, or MTA_BENCH_BINARY (another build, for before/after runs). */
export const MTA = process.env.MTA_BENCH_BINARY || join(ROOT, "dist/mta");
export const POSTFIX_DIR = join(ROOT, "bench/postfix");

export function machine(): string {
  const c = cpus();
  return `${c.length} × ${c[0]?.model ?? "cpu"}, ${Math.round(Number(readFileSync("/proc/meminfo", "utf8").match(/MemTotal:\s+(\d+)/)?.[1] ?? 0) / 1024 / 1024)} GiB, Bun ${Bun.version}`;
}

export function tmp(prefix: string): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/** CPU seconds (user + system) of a process and its reaped children. */
export function cpuSeconds(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    const hz = 100;
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / hz;
  } catch {
    return Number.NaN;
  }
}

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

export interface BenchMta extends AsyncDisposable {
  pid: number;
  smtpPort: number;
  controlPort: number;
  lines: string[];
  stop(): Promise<void>;
}

/** Starts dist/mta serve with a config written from `yaml` (JSON logs, ports from the start line). */
export async function startBenchMta(dir: string, yaml: string): Promise<BenchMta> {
  if (!existsSync(MTA)) throw new Error("dist/mta is missing: run `npm run build` first");
  const file = join(dir, "mta.yaml");
  // Benchmarks send traffic to loopback only: unless the config names its DNS servers, lookups go to a
  // loopback port where nothing answers, never to the machine's resolver.
  const safe = /^dns:/m.test(yaml)
    ? yaml
    : `${yaml}\ndns: { servers: ["127.0.0.1:9"], timeout: 1s, attempts: 1 }`;
  await Bun.write(file, safe);
  // MTA_BENCH_PROFILE=<dir>: run from source under Bun's sampling profiler (a .md profile on exit).
  const profile = process.env.MTA_BENCH_PROFILE;
  // MTA_BENCH_FROM_SOURCE=1: run the sources under bun (native symbols for perf).
  const cmd = profile
    ? [process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${profile}`, join(ROOT, "src/cli/main.ts")]
    : process.env.MTA_BENCH_FROM_SOURCE === "1"
      ? [process.execPath, join(ROOT, "src/cli/main.ts")]
      : [MTA];
  const proc = spawn([...cmd, "serve", "-c", file], {
    stdout: "ignore",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, MTA_LOOPBACK_ONLY: "1" },
  });
  const lines: string[] = [];
  const reader = (async () => {
    let buf = "";
    for await (const chunk of proc.stderr) {
      buf += new TextDecoder().decode(chunk);
      let i = buf.indexOf("\n");
      while (i >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        i = buf.indexOf("\n");
      }
    }
  })();
  const end = Date.now() + 60_000;
  let start: { listeners: string[]; control: string } | undefined;
  while (!start) {
    for (const l of lines) {
      if (l.includes('started"') || l.includes(" started")) {
        try {
          const rec = JSON.parse(l);
          if (String(rec.msg).endsWith(" started")) start = rec;
        } catch {}
      }
    }
    if (proc.exitCode !== null) throw new Error(`mta exited ${proc.exitCode}: ${lines.join("\n")}`);
    if (Date.now() > end) {
      proc.kill("SIGKILL");
      throw new Error(`mta did not start: ${lines.join("\n")}`);
    }
    await Bun.sleep(20);
  }
  const stop = async () => {
    if (proc.exitCode === null) proc.kill("SIGTERM");
    await proc.exited;
    await reader;
    if (process.env.MTA_BENCH_STDERR) appendFileSync(process.env.MTA_BENCH_STDERR, `${lines.join("\n")}\n`);
  };
  return {
    pid: proc.pid,
    smtpPort: Number(start.listeners[0]!.split(":").pop()),
    controlPort: Number(start.control.split(":").pop()),
    lines,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

export interface SourceRun {
  wallS: number;
  rate: number;
  ok: boolean;
  output: string;
}

/** smtp-source -N: `count` messages of `sizeBytes` over `sessions` concurrent sessions. */
export function smtpSource(opts: {
  host: string;
  port: number;
  count: number;
  sizeBytes: number;
  sessions: number;
  to: string;
  from?: string;
}): SourceRun {
  if (!SMTP_SOURCE) throw new Error("smtp-source is not installed (apt-get install postfix)");
  const t0 = performance.now();
  const r = spawnSync(
    [
      SMTP_SOURCE,
      "-N",
      "-s",
      String(opts.sessions),
      "-m",
      String(opts.count),
      "-l",
      String(opts.sizeBytes),
      "-f",
      opts.from ?? "a@example.com",
      "-t",
      opts.to,
      `${opts.host}:${opts.port}`,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  const wallS = (performance.now() - t0) / 1000;
  return {
    wallS,
    rate: opts.count / wallS,
    ok: r.exitCode === 0,
    output: r.stdout.toString() + r.stderr.toString(),
  };
}

export function postfixInstalled(): boolean {
  return existsSync("/usr/sbin/postfix") && Boolean(SMTP_SOURCE);
}

/** Runs one of the Postfix anchor scripts; returns the last raw.tsv line's msgs/s, or NaN. */
export function postfixAnchor(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): { rate: number; line: string } {
  const resultsDir = mkdtempSync(join(tmpdir(), "pf-results-"));
  const r = spawnSync(["bash", join(POSTFIX_DIR, script), ...args], {
    env: { ...process.env, RESULTS_DIR: resultsDir, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let line = "";
  try {
    const raw = readFileSync(join(resultsDir, "raw.tsv"), "utf8").trim().split("\n");
    line = raw.length > 1 ? raw[raw.length - 1]! : "";
  } catch {}
  rmSync(resultsDir, { recursive: true, force: true });
  const rate = line ? Number(line.split("\t")[9]) : Number.NaN;
  if (!line) process.stderr.write(r.stderr.toString());
  return { rate, line };
}

export function setupPostfix(): boolean {
  if (!postfixInstalled()) return false;
  const r = spawnSync(["bash", join(POSTFIX_DIR, "setup-postfix.sh")], { stdout: "pipe", stderr: "pipe" });
  return r.exitCode === 0;
}

export function stopPostfix(): void {
  spawnSync(["postfix", "stop"], { stdout: "ignore", stderr: "ignore" });
}

/** `--key=value` and bare `--flag` (value "1") arguments, by key. */
export function benchArgs(argv = process.argv.slice(2)): Map<string, string> {
  return new Map(
    argv.map((a) => {
      const [k, v] = a.replace(/^--/, "").split("=");
      return [k!, v ?? "1"] as const;
    }),
  );
}

export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return "-";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export interface Row {
  figure: string;
  conditions: string;
  mta: number;
  postfix?: number;
  unit: string;
}

export function printTable(title: string, rows: Row[]): string {
  const lines = [
    `## ${title}`,
    "",
    `Machine: ${machine()}; ${new Date().toISOString()}`,
    "",
    "| figure | conditions | mta | Postfix | ratio |",
    "|---|---|---:|---:|---:|",
    ...rows.map((r) => {
      const ratio =
        r.postfix && Number.isFinite(r.postfix) && r.postfix > 0 ? `${(r.mta / r.postfix).toFixed(1)}×` : "-";
      return `| ${r.figure} | ${r.conditions} | ${fmt(r.mta, r.mta < 10 ? 2 : 0)} ${r.unit} | ${r.postfix === undefined ? "-" : `${fmt(r.postfix, r.postfix < 10 ? 2 : 0)} ${r.unit}`} | ${ratio} |`;
    }),
  ];
  const text = lines.join("\n");
  console.log(text);
  return text;
}

export function median(xs: number[]): number {
  const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** A counting smtp-sink (-c) on `listen`; `received()` reads its running counter from the end of its output. */
export function startCountingSink(dir: string, listen: string) {
  const out = join(dir, `sink-${Math.random().toString(36).slice(2)}.out`);
  const fd = openSync(out, "w+");
  const proc = spawn([SMTP_SINK!, "-u", "nobody", "-c", "-m", "5000", listen, "4096"], {
    stdout: fd,
    stderr: "ignore",
  });
  const buf = Buffer.alloc(4096);
  const received = () => {
    const size = fstatSync(fd).size;
    const n = readSync(fd, buf, 0, Math.min(buf.length, size), Math.max(0, size - buf.length));
    const m = [
      ...buf
        .subarray(0, n)
        .toString()
        .matchAll(/mesg=(\d+)/g),
    ];
    return m.length ? Number(m[m.length - 1]![1]) : 0;
  };
  return { proc, received, [Symbol.dispose]: () => proc.kill("SIGKILL") };
}

/** Polls `received()` until it reaches `n` or `timeoutMs` passes; returns the last count. */
export async function waitCount(received: () => number, n: number, timeoutMs: number): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const got = received();
    if (got >= n || Date.now() > end) return got;
    await Bun.sleep(20);
  }
}

export const UNBOUND = ["/usr/sbin/unbound", "/usr/bin/unbound"].find((p) => existsSync(p));

/**
 * unbound on 127.0.0.1 answering a zone given as data (MX and A records) from its local-data, the
 * way an MTA's local caching resolver would: a real DNS server, so the benchmark's own DNS work costs
 * what it costs in production rather than what a JavaScript test server costs on the same cores.
 */
export async function startUnbound(
  dir: string,
  zone: Record<string, { mx?: { exchange: string; preference: number }[]; a?: string[] }>,
  /** Also answer on this loopback address at port 53 (for a resolv.conf, which cannot name a port). */
  alsoOnPort53?: string,
): Promise<{ port: number; pid: number; [Symbol.asyncDispose](): Promise<void> }> {
  if (!UNBOUND) throw new Error("unbound is not installed (apt-get install unbound)");
  const port = freePort();
  const lines = [
    "server:",
    `  interface: 127.0.0.1@${port}`,
    ...(alsoOnPort53 ? [`  interface: ${alsoOnPort53}@53`] : []),
    `  port: ${port}`,
    "  do-ip6: no",
    "  do-daemonize: no",
    '  username: ""',
    '  chroot: ""',
    `  directory: "${dir}"`,
    '  pidfile: ""',
    "  use-syslog: no",
    "  verbosity: 0",
    "  num-threads: 1",
    "  access-control: 127.0.0.0/8 allow",
    '  local-zone: "test." static',
    // Nothing outside the benchmark's zone is looked up anywhere: no query ever leaves loopback.
    '  local-zone: "." refuse',
  ];
  for (const [name, spec] of Object.entries(zone)) {
    for (const m of spec.mx ?? [])
      lines.push(`  local-data: "${name}. 3600 IN MX ${m.preference} ${m.exchange}."`);
    for (const a of spec.a ?? []) lines.push(`  local-data: "${name}. 3600 IN A ${a}"`);
  }
  const conf = join(dir, "unbound.conf");
  await Bun.write(conf, `${lines.join("\n")}\n`);
  const proc = spawn([UNBOUND, "-d", "-c", conf], { stdout: "ignore", stderr: "pipe" });
  // Ready when it answers a question over UDP.
  const query = Buffer.from("abcd01000001000000000000047465737400000f0001", "hex"); // MX test.
  let answered = false;
  const probe = await Bun.udpSocket({
    socket: {
      data() {
        answered = true;
      },
      // Port unreachable until unbound listens: try again.
      error() {},
    },
  });
  for (let i = 0; i < 200 && !answered && proc.exitCode === null; i++) {
    probe.send(query, port, "127.0.0.1");
    await Bun.sleep(25);
  }
  probe.close();
  if (!answered) {
    proc.kill("SIGKILL");
    throw new Error(`unbound did not answer on port ${port}`);
  }
  return {
    port,
    pid: proc.pid,
    async [Symbol.asyncDispose]() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** The loopback address of the i-th benchmark destination (127.10.0.1 and up; sinks listen on 0.0.0.0). */
export function destinationIp(i: number): string {
  return `127.${10 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${(i % 256) + 1 > 255 ? 1 : (i % 256) + 1}`;
}

/** MX and A records for destinations d0.test .. d<n-1>.test, each MX host on its own address. */
export function destinationZone(
  n: number,
): Record<string, { mx?: { exchange: string; preference: number }[]; a?: string[] }> {
  const zone: Record<string, { mx?: { exchange: string; preference: number }[]; a?: string[] }> = {};
  for (let i = 0; i < n; i++) {
    zone[`d${i}.test`] = { mx: [{ exchange: `mx.d${i}.test`, preference: 10 }] };
    zone[`mx.d${i}.test`] = { a: [destinationIp(i)] };
  }
  return zone;
}
