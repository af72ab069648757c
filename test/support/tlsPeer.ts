/**
 * Receiving MX hosts for the outbound TLS tests: aiosmtpd (Python, a third-party SMTP server) on a
 * loopback address and port, with a given certificate, or hiding STARTTLS.
 *
 * Owns: starting test/support/tlsPeer.py (Debian's /usr/bin/python3, which has aiosmtpd), reading
 * back the messages it stored and the commands it saw.
 */
import { type Subprocess, spawn } from "bun";
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const SCRIPT = resolve(import.meta.dir, "tlsPeer.py");

export interface PeerMessage {
  from: string;
  to: string[];
  tls: boolean;
  data: string;
}

export interface TlsPeer extends AsyncDisposable {
  host: string;
  port: number;
  messages(): PeerMessage[];
  /** SMTP verbs seen, in order (EHLO, MAIL, ...). */
  commands(): string[];
  proc: Subprocess;
}

export async function startTlsPeer(opts: {
  host: string;
  port: number;
  dir: string;
  cert?: { certFile: string; keyFile: string };
}): Promise<TlsPeer> {
  const out = join(opts.dir, `peer-${opts.host}-${Math.random().toString(36).slice(2)}`);
  mkdirSync(out, { recursive: true });
  const args = ["/usr/bin/python3", SCRIPT, opts.host, String(opts.port), out];
  if (opts.cert) args.push(opts.cert.certFile, opts.cert.keyFile);
  const proc = spawn(args, { stdout: "pipe", stderr: "pipe" });
  const reader = proc.stdout.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  const deadline = Date.now() + 15_000;
  while (!seen.includes("ready")) {
    const chunk = await Promise.race([
      reader.read(),
      Bun.sleep(Math.max(0, deadline - Date.now())).then(() => undefined),
    ]);
    if (!chunk || chunk.done) {
      proc.kill();
      throw new Error(
        `tlsPeer.py on ${opts.host}:${opts.port} did not start: ${await new Response(proc.stderr).text()}`,
      );
    }
    seen += decoder.decode(chunk.value);
  }
  reader.releaseLock();
  return {
    host: opts.host,
    port: opts.port,
    proc,
    messages: () =>
      readdirSync(out)
        .filter((f) => f.endsWith(".json"))
        .sort()
        .map((f) => JSON.parse(readFileSync(join(out, f), "utf8")) as PeerMessage),
    commands: () => {
      try {
        return readFileSync(join(out, "commands.log"), "utf8").split("\n").filter(Boolean);
      } catch {
        return [];
      }
    },
    async [Symbol.asyncDispose]() {
      proc.kill();
      await proc.exited;
    },
  };
}
