/**
 * Driving the compiled `dist/mta` as a child process in end-to-end tests.
 *
 * Owns: `runMta` (one command, its exit code and output), `startMta` (a daemon with a temp config,
 * spool and log dir, whose bound ports are read from its JSON start line), `tempDir`.
 */
import { type Subprocess, spawn, spawnSync } from "bun";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { freePort } from "./sink.ts";

export const MTA = resolve(import.meta.dir, "../../dist/mta");

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `cmd` run as the unprivileged user nobody (uid and gid 65534, no supplementary groups). */
export function asNobody(cmd: string[]): string[] {
  return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...cmd];
}

export function runMta(
  args: string[],
  opts: {
    env?: Record<string, string>;
    cwd?: string;
    /** Text or bytes on standard input, or an open file descriptor (e.g. a directory's). */
    stdin?: string | Uint8Array | number;
    /** Run as nobody (setpriv). */
    nobody?: boolean;
  } = {},
): RunResult {
  const cmd = opts.nobody ? asNobody([MTA, ...args]) : [MTA, ...args];
  const r = spawnSync(cmd, {
    env: { ...process.env, ...opts.env },
    cwd: opts.cwd,
    stdin:
      opts.stdin === undefined
        ? "ignore"
        : typeof opts.stdin === "number"
          ? opts.stdin
          : Buffer.from(opts.stdin as string),
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A line that looks like a stack frame or a source position: what a user must never see. */
export const STACK_FRAME = /^\s+at |\$bunfs|\b[\w/.-]+\.(ts|js|mjs):\d+|^\s*\d+ \| |^error: |Bun v\d/m;

export interface TempDir extends Disposable {
  path: string;
}

/** A fresh directory under the system's temp dir; `open: true` lets other users (nobody) in. */
export function tempDir(prefix = "mta-test-", opts: { open?: boolean } = {}): TempDir {
  const path = mkdtempSync(join(tmpdir(), prefix));
  if (opts.open) chmodSync(path, 0o755);
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

export interface StartedMta extends AsyncDisposable {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  dir: string;
  configFile: string;
  /** Bound ports: control and each listener by name. */
  controlPort: number;
  smtpPorts: number[];
  /** Every stderr line so far (JSON log records). */
  logLines: () => Record<string, unknown>[];
  waitForLog: (
    pred: (rec: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ) => Promise<Record<string, unknown>>;
  stop: (signal?: NodeJS.Signals) => Promise<number>;
}

/**
 * Default test config: JSON logs, ports chosen by the kernel, spool in the temp dir, and DNS pointed at
 * a loopback port where nothing answers (unless `extra` sets dns:), so that no test ever asks the
 * machine's resolver: tests send traffic to loopback only.
 */
/** The control token `withToken` sets: over TCP the control API's /api/ needs one. */
export const CONTROL_TOKEN = "test-control-token";

/** testConfig's text with `control.token` set (its control line must be the default one). */
export function withToken(config: string): string {
  const line = "control: { address: 127.0.0.1:0 }";
  if (!config.includes(line)) throw new Error("withToken: the config has no default control line");
  return config.replace(line, `control: { address: 127.0.0.1:0, token: ${CONTROL_TOKEN} }`);
}

/**
 * A request to a started daemon's control API through its control socket (`<dir>/spool/control.sock`,
 * as testConfig puts it): the way root and the daemon's user reach it, no token needed.
 */
export function controlFetch(dir: string, path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (init.method === "POST" && !headers.has("content-type")) headers.set("content-type", "application/json");
  return fetch(`http://localhost${path}`, {
    ...init,
    headers,
    unix: join(dir, "spool", "control.sock"),
  } as RequestInit);
}

export function testConfig(dir: string, extra = ""): string {
  return [
    /^dns:/m.test(extra) ? "" : 'dns: { servers: ["127.0.0.1:9"], timeout: 1s, attempts: 1 }',
    "hostname: mta.test",
    `spool: { dir: ${join(dir, "spool")} }`,
    "listen: [{ address: 127.0.0.1:0 }]",
    "control: { address: 127.0.0.1:0 }",
    `log: { level: info, format: json, deliveries: ${join(dir, "deliveries.jsonl")} }`,
    extra,
  ].join("\n");
}

/**
 * A configuration for `mta send` tests: hostname mta.test (so bare names become name@mta.test), no SMTP
 * listener, a fixed control port (a daemon started on this file is found by `mta send`), each routed
 * domain sent to a loopback port, DNS at a port where nothing answers.
 */
export function sendConfig(
  dir: string,
  opts: { routes: Record<string, number>; controlPort?: number; deliveries?: string; extra?: string },
): string {
  const routes = Object.entries(opts.routes)
    .map(([domain, port]) => `${domain}: "127.0.0.1:${port}"`)
    .join(", ");
  return [
    "hostname: mta.test",
    `spool: { dir: ${join(dir, "spool")} }`,
    "listen: []",
    `control: { address: 127.0.0.1:${opts.controlPort ?? freePort()} }`,
    'dns: { servers: ["127.0.0.1:9"], timeout: 1s, attempts: 1 }',
    `delivery: { routes: { ${routes} }, retry: [1h] }`,
    `log: { level: info, format: json, deliveries: ${opts.deliveries ?? join(dir, "deliveries.jsonl")} }`,
    opts.extra ?? "",
  ].join("\n");
}

export async function startMta(opts: {
  dir: string;
  config?: string;
  args?: string[];
  env?: Record<string, string>;
  /** The program to run instead of dist/mta, e.g. the sources under bun (`[bun, src/cli/main.ts]`). */
  command?: string[];
  uid?: number;
}): Promise<StartedMta> {
  const configFile = join(opts.dir, "mta.yaml");
  writeFileSync(configFile, opts.config ?? testConfig(opts.dir));
  // `uid`: run the daemon as that user (and group), as a service with User= would.
  const asUser =
    opts.uid === undefined
      ? []
      : ["/usr/bin/setpriv", `--reuid=${opts.uid}`, `--regid=${opts.uid}`, "--clear-groups", "--"];
  const proc = spawn(
    [...asUser, ...(opts.command ?? [MTA]), "serve", "-c", configFile, ...(opts.args ?? [])],
    {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, ...opts.env },
    },
  );
  const lines: Record<string, unknown>[] = [];
  const waiters: {
    pred: (r: Record<string, unknown>) => boolean;
    resolve: (r: Record<string, unknown>) => void;
  }[] = [];
  let exited = false;
  (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stderr) {
      buf += decoder.decode(chunk, { stream: true });
      let i = buf.indexOf("\n");
      while (i >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(line);
        } catch {
          rec = { msg: line, raw: true };
        }
        lines.push(rec);
        for (const w of [...waiters]) {
          if (w.pred(rec)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(rec);
          }
        }
        i = buf.indexOf("\n");
      }
    }
  })();
  proc.exited.then(() => {
    exited = true;
  });
  const waitForLog = (pred: (r: Record<string, unknown>) => boolean, timeoutMs = 10_000) => {
    const found = lines.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise<Record<string, unknown>>((res, rej) => {
      const t = setTimeout(
        () =>
          rej(
            new Error(
              `timed out waiting for a log line; got:\n${lines.map((l) => JSON.stringify(l)).join("\n")}`,
            ),
          ),
        timeoutMs,
      );
      waiters.push({
        pred,
        resolve: (r) => {
          clearTimeout(t);
          res(r);
        },
      });
    });
  };
  const started = await Promise.race([
    waitForLog((r) => typeof r.msg === "string" && r.msg.startsWith("mta ") && r.msg.endsWith(" started")),
    proc.exited.then((code) => {
      throw new Error(`mta serve exited with ${code}:\n${lines.map((l) => JSON.stringify(l)).join("\n")}`);
    }),
  ]);
  const control = String(started.control ?? "");
  const smtp = (started.listeners as string[] | undefined) ?? [];
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (!exited) proc.kill(signal);
    return proc.exited;
  };
  return {
    proc,
    dir: opts.dir,
    configFile,
    controlPort: Number(control.split(":").pop()),
    smtpPorts: smtp.map((s) => Number(s.split(":").pop())),
    logLines: () => lines,
    waitForLog,
    stop,
    async [Symbol.asyncDispose]() {
      if (!exited) {
        proc.kill("SIGKILL");
        await proc.exited;
      }
    },
  };
}

/** The delivery log (`deliveries.jsonl` in `dir`, as testConfig writes it), one object per line. */
export function deliveryLog(dir: string): Record<string, unknown>[] {
  try {
    return readFileSync(join(dir, "deliveries.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

/** Polls `fn` until it returns something other than undefined (or false); throws naming `what` after the timeout. */
export async function waitUntil<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 20_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

/** Waits for the first delivery-log line (in `dir`) for `recipient` of `type`. */
export async function waitForLogLine(
  dir: string,
  recipient: string,
  type: string,
  timeoutMs = 15_000,
): Promise<Record<string, unknown>> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const line = deliveryLog(dir).find((l) => l.recipient === recipient && l.type === type);
    if (line) return line;
    if (Date.now() > until)
      throw new Error(
        `no ${type} line for ${recipient} in the delivery log: ${JSON.stringify(deliveryLog(dir))}`,
      );
    await Bun.sleep(50);
  }
}

/**
 * A copy of a started daemon's config that names its bound control port (testConfig says :0), so
 * that commands such as `mta queue` and `mta suppress` find the running daemon.
 */
export function cliConfigFor(mta: StartedMta): string {
  const file = join(mta.dir, "cli.yaml");
  writeFileSync(
    file,
    readFileSync(mta.configFile, "utf8").replace(
      "control: { address: 127.0.0.1:0 }",
      `control: { address: 127.0.0.1:${mta.controlPort} }`,
    ),
  );
  return file;
}

/** One message through swaks (a third-party client) to an mta listener; returns swaks's output. */
export function swaksTo(smtpPort: number, to: string | string[], from = "app@sender.test"): string {
  const r = spawnSync(
    [
      "swaks",
      "--server",
      `127.0.0.1:${smtpPort}`,
      "--helo",
      "client.test",
      "--from",
      from,
      "--to",
      Array.isArray(to) ? to.join(",") : to,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  const out = r.stdout.toString();
  if (!/250 2\.0\.0 Ok: queued as/.test(out))
    throw new Error(`swaks was not answered 250: ${out}${r.stderr}`);
  return out;
}
