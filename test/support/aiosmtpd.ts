/**
 * aiosmtpd (Debian's python3-aiosmtpd, run by /usr/bin/python3) as a real third-party receiving
 * server in tests: optionally without 8BITMIME, with SMTPUTF8, with AUTH, refusing some recipients,
 * deferring some (451), on a given loopback address and port, with STARTTLS and a given certificate (or hiding STARTTLS).
 *
 * Owns: starting `aiosmtpd_peer.py` on a free loopback port and reading back what it received.
 * There is no skip: where python3-aiosmtpd is missing the test fails (CI installs it).
 */
import { type Subprocess, spawn } from "bun";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "./sink.ts";

export interface AiosmtpdMessage {
  mail_from: string;
  rcpt_tos: string[];
  mail_options: string[];
  /** Whether it came over STARTTLS. */
  tls: boolean;
  /** The exact octets received. */
  content: Buffer;
}

export interface Aiosmtpd extends AsyncDisposable {
  port: number;
  proc: Subprocess;
  messages(): AiosmtpdMessage[];
  /** Refused AUTH attempts, by user name. */
  authFailures(): string[];
  /** EHLO and MAIL commands seen, in order. */
  commands(): string[];
  waitFor(n: number, timeoutMs?: number): Promise<AiosmtpdMessage[]>;
}

export async function startAiosmtpd(opts: {
  dir: string;
  noEightBitMime?: boolean;
  smtputf8?: boolean;
  auth?: { username: string; password: string };
  rejectRcptPrefix?: string;
  /** Recipients starting with this get 451 4.2.0 (a temporary failure). */
  deferRcptPrefix?: string;
  /** Loopback address and port to listen on; default 127.0.0.1 and a free port. */
  host?: string;
  port?: number;
  /** Offer STARTTLS with this certificate (its chain, when given) and key; else no STARTTLS. */
  tls?: { certFile: string; keyFile: string; chainFile?: string };
}): Promise<Aiosmtpd> {
  const host = opts.host ?? "127.0.0.1";
  const port = opts.port ?? freePort(host);
  const out = join(opts.dir, `aiosmtpd-${host}-${port}.jsonl`);
  const args = [String(port), out];
  if (opts.noEightBitMime) args.push("--no-8bitmime");
  if (opts.smtputf8) args.push("--smtputf8");
  if (opts.auth) args.push("--auth", `${opts.auth.username}:${opts.auth.password}`);
  if (opts.rejectRcptPrefix) args.push("--reject-rcpt", opts.rejectRcptPrefix);
  if (opts.deferRcptPrefix) args.push("--defer-rcpt", opts.deferRcptPrefix);
  if (opts.host) args.push("--host", opts.host);
  if (opts.tls) args.push("--tls", opts.tls.chainFile ?? opts.tls.certFile, opts.tls.keyFile);
  const proc = spawn(["/usr/bin/python3", join(import.meta.dir, "aiosmtpd_peer.py"), ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const reader = proc.stdout.getReader();
  const first = await Promise.race([reader.read(), Bun.sleep(10_000).then(() => undefined)]);
  reader.releaseLock();
  if (!first || first.done || !new TextDecoder().decode(first.value).includes("ready")) {
    proc.kill("SIGKILL");
    throw new Error(`aiosmtpd did not start: ${await new Response(proc.stderr).text()}`);
  }
  const lines = () =>
    existsSync(out)
      ? readFileSync(out, "utf8")
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  const messages = () =>
    lines()
      .filter((l) => "content" in l)
      .map((l) => ({
        ...(l as unknown as AiosmtpdMessage),
        content: Buffer.from(String(l.content), "base64"),
      }));
  return {
    port,
    proc,
    messages,
    authFailures: () => lines().flatMap((l) => ("auth_failed" in l ? [String(l.auth_failed)] : [])),
    commands: () => lines().flatMap((l) => ("command" in l ? [String(l.command)] : [])),
    async waitFor(n, timeoutMs = 15_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const m = messages();
        if (m.length >= n) return m;
        if (Date.now() > end) throw new Error(`aiosmtpd received ${m.length} of ${n} messages`);
        await Bun.sleep(25);
      }
    },
    async [Symbol.asyncDispose]() {
      proc.kill("SIGTERM");
      await Promise.race([proc.exited, Bun.sleep(2000)]);
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}
