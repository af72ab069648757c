/**
 * Test harness for listener tests: a scripted SMTP client on a real loopback socket, an Acceptor that
 * records what it is given (no spool: the spool is not the listener's), and listener options.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as tls from "node:tls";
import { parseCidr } from "../../src/lib/index.ts";
import type { AcceptResult, Acceptor, Envelope, ListenerOptions } from "../../src/listener/index.ts";
import { silentLogger } from "../../src/observe/index.ts";

export const log = silentLogger();

export function options(over: Partial<ListenerOptions> = {}): ListenerOptions {
  return {
    name: "test",
    host: "127.0.0.1",
    port: 0,
    hostname: "mx.test",
    relayFrom: [parseCidr("127.0.0.0/8")!],
    auth: "off",
    maxMessageBytes: 1_000_000,
    maxRecipients: 100,
    maxLineBytes: 1000,
    maxErrors: 20,
    maxJunkCommands: 100,
    commandTimeoutMs: 300_000,
    dataTimeoutMs: 600_000,
    maxConnections: 1000,
    maxConnectionsPerIp: 1000,
    rejectBareNewlines: true,
    ...over,
  };
}

/** Records every accepted message; `next` lets a test choose the result (or throw). */
export class RecordingAcceptor implements Acceptor {
  readonly messages: { envelope: Envelope; message: Uint8Array; text: string }[] = [];
  next: (() => Promise<AcceptResult>) | undefined;
  private n = 0;
  async accept(envelope: Envelope, message: Uint8Array): Promise<AcceptResult> {
    if (this.next) return this.next();
    this.messages.push({ envelope, message, text: new TextDecoder().decode(message) });
    return { ok: true, ids: [`ID${++this.n}`] };
  }
}

export interface Reply {
  code: number;
  lines: string[];
  text: string;
}

/** A scripted SMTP client: send raw bytes, read whole replies. */
export class Client {
  private buf = "";
  private waiters: (() => void)[] = [];
  ended = false;

  constructor(public socket: net.Socket | tls.TLSSocket) {
    this.attach(socket);
  }

  private attach(socket: net.Socket): void {
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => {
      this.buf += d;
      this.wake();
    });
    socket.on("close", () => {
      this.ended = true;
      this.wake();
    });
    socket.on("error", () => {});
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static connect(port: number, host = "127.0.0.1"): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host }, () => resolve(new Client(s)));
      s.once("error", reject);
    });
  }

  static connectTls(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host: "127.0.0.1", rejectUnauthorized: false }, () =>
        resolve(new Client(s)),
      );
      s.once("error", reject);
    });
  }

  send(data: string | Uint8Array): void {
    // Strings with characters above U+00FF go out as UTF-8; others byte for byte (to send raw 8-bit).
    if (typeof data === "string") data = Buffer.from(data, /[^\x00-\xff]/.test(data) ? "utf8" : "latin1");
    this.socket.write(data);
  }

  /** Reads one complete reply (possibly multi-line). */
  async reply(timeoutMs = 5000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines: string[] = [];
      let pos = 0;
      for (;;) {
        const nl = this.buf.indexOf("\r\n", pos);
        if (nl === -1) break;
        const line = this.buf.slice(pos, nl);
        pos = nl + 2;
        lines.push(line);
        if (line[3] !== "-") {
          this.buf = this.buf.slice(pos);
          return { code: Number(line.slice(0, 3)), lines, text: lines.join("\n") };
        }
      }
      if (this.ended) throw new Error(`connection closed; pending: ${JSON.stringify(this.buf)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; pending: ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async cmd(line: string): Promise<Reply> {
    this.send(`${line}\r\n`);
    return this.reply();
  }

  /** Resolves when the server has closed the connection. */
  async closed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error("connection still open");
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Unread bytes received so far. */
  pending(): string {
    return this.buf;
  }

  /** STARTTLS on this connection (after the 220 has been read). */
  upgrade(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners("data");
    plain.removeAllListeners("close");
    return new Promise((resolve, reject) => {
      const t = tls.connect({ socket: plain, rejectUnauthorized: false, servername: "localhost" }, () =>
        resolve(),
      );
      t.once("error", reject);
      this.socket = t;
      this.buf = "";
      this.attach(t);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A self-signed certificate for CN=localhost in a temp dir (removed by the caller with `dispose`). */
export function selfSignedCert(): {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  dispose(): void;
} {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mta-listener-tls-"));
  const keyFile = path.join(dir, "key.pem");
  const certFile = path.join(dir, "cert.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=localhost",
      "-days",
      "2",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    { stdio: "ignore" },
  );
  return {
    cert: fs.readFileSync(certFile, "utf8"),
    key: fs.readFileSync(keyFile, "utf8"),
    certFile,
    keyFile,
    dispose: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
