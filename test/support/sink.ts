/**
 * Postfix's `smtp-sink` as a real receiving server in tests and benchmarks.
 *
 * Owns: starting smtp-sink on a free loopback port with a dump directory, reading back what it received.
 * smtp-sink refuses to run as root without `-u`, so it drops to `nobody` and dumps into a world-writable dir.
 */
import { type Subprocess, spawn } from "bun";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

export const SMTP_SINK = ["/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"].find((p) =>
  existsSync(p),
);
export const SMTP_SOURCE = ["/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source"].find((p) =>
  existsSync(p),
);

/** A port that was free a moment ago on `host`. */
export function freePort(host = "127.0.0.1"): number {
  const server = Bun.listen({ hostname: host, port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

export interface Sink extends AsyncDisposable {
  host: string;
  port: number;
  dumpDir: string;
  proc: Subprocess;
  /** The dumped messages (each file holds the whole transaction as smtp-sink saw it). */
  dumps(): string[];
  /** Waits until at least `n` messages were dumped. */
  waitFor(n: number, timeoutMs?: number): Promise<string[]>;
}

export async function startSink(opts: { dir: string; host?: string; args?: string[] }): Promise<Sink> {
  if (!SMTP_SINK) throw new Error("smtp-sink is not installed (apt-get install postfix)");
  const host = opts.host ?? "127.0.0.1";
  const dumpDir = join(opts.dir, `sink-${Math.random().toString(36).slice(2)}`);
  mkdirSync(dumpDir, { recursive: true });
  chmodSync(dumpDir, 0o777);
  chmodSync(opts.dir, 0o777);
  const port = freePort(host);
  const proc = spawn(
    [
      SMTP_SINK,
      "-u",
      "nobody",
      "-d",
      `${dumpDir}/%Y%m%d%H%M%S.`,
      ...(opts.args ?? []),
      `${host}:${port}`,
      "1024",
    ],
    {
      stdout: "ignore",
      stderr: "pipe",
    },
  );
  // Wait until it accepts connections.
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      Bun.connect({
        hostname: host,
        port,
        socket: {
          open(s) {
            s.end();
            resolve(true);
          },
          data() {},
          connectError() {
            resolve(false);
          },
        },
      }).catch(() => resolve(false));
    });
    if (ok) break;
    await Bun.sleep(20);
  }
  const dumps = () =>
    readdirSync(dumpDir)
      .sort()
      .map((f) => readFileSync(join(dumpDir, f), "latin1"));
  return {
    host,
    port,
    dumpDir,
    proc,
    dumps,
    async waitFor(n, timeoutMs = 10_000) {
      const end = Date.now() + timeoutMs;
      let previous = "";
      for (;;) {
        const d = dumps();
        // smtp-sink creates a dump file before it writes it: done when n are there, none empty, and
        // nothing changed since the last look.
        const now = d.join("\0");
        if (d.length >= n && d.every((x) => x.length > 0) && now === previous) return d;
        previous = now;
        if (Date.now() > end) throw new Error(`smtp-sink received ${d.length} of ${n} messages`);
        await Bun.sleep(25);
      }
    },
    async [Symbol.asyncDispose]() {
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}
