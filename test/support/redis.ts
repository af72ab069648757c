/**
 * A real `redis-server` for cluster tests: Debian's binary on a loopback port, with its own data dir.
 *
 * Owns: `startRedis` (a server the test owns: stop, kill -9, restart on the same port, pause),
 * `redisCli` (one command through `redis-cli`).
 * Invariant: the server listens on 127.0.0.1 only, keeps nothing on disk between runs (no RDB, no
 * AOF) unless asked, and is killed when the test's `await using` scope ends. There is no skip: a
 * missing redis-server fails the test that needs it (`.ci/run` installs it).
 */
import { type Subprocess, spawn, spawnSync } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const REDIS_SERVER = Bun.which("redis-server") ?? "/usr/bin/redis-server";
export const REDIS_CLI = Bun.which("redis-cli") ?? "/usr/bin/redis-cli";

export interface RedisServer extends AsyncDisposable {
  readonly port: number;
  /** The TLS port when started with `tls` (0 otherwise). */
  readonly tlsPort: number;
  readonly url: string;
  readonly dir: string;
  readonly running: boolean;
  /** One command through redis-cli; returns its stdout, trimmed. */
  cli(...args: string[]): string;
  /** SHUTDOWN NOSAVE (a clean stop that keeps nothing). */
  stop(): Promise<void>;
  /** kill -9. */
  kill(): Promise<void>;
  /** Starts again on the same port (after stop or kill). */
  start(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server stops answering but keeps its sockets open (a network pause). */
  freeze(): void;
  thaw(): void;
}

/** A port the kernel just handed out on 127.0.0.1 (free at the moment of asking). */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export function redisCli(port: number, ...args: string[]): string {
  return redisCliAuth(port, undefined, ...args);
}

function redisCliAuth(port: number, password: string | undefined, ...args: string[]): string {
  const auth = password === undefined ? [] : ["--no-auth-warning", "-a", password];
  const r = spawnSync([REDIS_CLI, "-h", "127.0.0.1", "-p", String(port), ...auth, ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  if (r.exitCode !== 0) throw new Error(`redis-cli ${args.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString().trim();
}

async function waitReady(
  port: number,
  password: string | undefined,
  proc: Subprocess,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null)
      throw new Error(`redis-server exited with ${proc.exitCode} before it answered on port ${port}`);
    try {
      if (redisCliAuth(port, password, "PING") === "PONG") return;
    } catch {}
    if (performance.now() > deadline) throw new Error(`redis-server did not answer on port ${port}`);
    await Bun.sleep(20);
  }
}

export async function startRedis(
  opts: {
    extraArgs?: string[];
    /** requirepass. */
    password?: string;
    /** A TLS port next to the plain one, with this certificate and key (PEM files). */
    tls?: { certFile: string; keyFile: string };
  } = {},
): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), "mta-redis-"));
  let proc: Subprocess | undefined;
  let port = 0;
  let tlsPort = 0;
  const launch = async () => {
    proc = spawn(
      [
        REDIS_SERVER,
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        join(dir, "redis.log"),
        // DEBUG SLEEP for pause tests, from loopback only.
        "--enable-debug-command",
        "local",
        ...(opts.password !== undefined ? ["--requirepass", opts.password] : []),
        ...(opts.tls
          ? [
              "--tls-port",
              String(tlsPort),
              "--tls-cert-file",
              opts.tls.certFile,
              "--tls-key-file",
              opts.tls.keyFile,
              "--tls-auth-clients",
              "no",
            ]
          : []),
        ...(opts.extraArgs ?? []),
      ],
      { stdin: "ignore", stdout: "ignore", stderr: "pipe" },
    );
    await waitReady(port, opts.password, proc);
  };
  // The port is free when asked; another process may take it before redis binds it: try again.
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    if (opts.tls) tlsPort = await freePort();
    try {
      await launch();
      break;
    } catch (err) {
      proc?.kill("SIGKILL");
      if (attempt >= 4) throw err;
    }
  }
  const server: RedisServer = {
    get port() {
      return port;
    },
    get tlsPort() {
      return tlsPort;
    },
    get url() {
      return `redis://127.0.0.1:${port}`;
    },
    dir,
    get running() {
      return proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    },
    cli: (...args) => redisCliAuth(port, opts.password, ...args),
    async stop() {
      if (!proc || !server.running) return;
      try {
        redisCliAuth(port, opts.password, "SHUTDOWN", "NOSAVE");
      } catch {}
      await proc.exited;
    },
    async kill() {
      if (!proc || !server.running) return;
      proc.kill("SIGKILL");
      await proc.exited;
    },
    async start() {
      if (server.running) return;
      await launch();
    },
    freeze() {
      proc?.kill("SIGSTOP");
    },
    thaw() {
      proc?.kill("SIGCONT");
    },
    async [Symbol.asyncDispose]() {
      if (proc && server.running) {
        proc.kill("SIGCONT");
        proc.kill("SIGKILL");
        await proc.exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
