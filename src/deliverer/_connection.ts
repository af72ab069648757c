/**
 * One outbound SMTP connection over `Bun.connect`: reply reading, buffered writing, STARTTLS.
 *
 * Owns: the socket (plain, then maybe TLS), the partial-line buffer, replies not yet read, write
 * backpressure, per-read timeouts.
 * Does not own: what to say (session.ts), whether to keep the connection (pool.ts).
 * Invariants: replies are handed out in arrival order, one per `read`; a timeout or a protocol error
 * closes the connection, because the reply stream can no longer be trusted to be in step.
 * Memory: a partial line (at most MAX_LINE_BYTES) and the replies already received but not read.
 */
import type { Socket, SocketHandler } from "bun";
import { textEncoder } from "../lib/index.ts";
import { parseReplyLines, type SmtpReply } from "../smtp/index.ts";

export type ReadResult =
  | { ok: true; reply: SmtpReply }
  | { ok: false; why: "closed" | "timeout"; detail: string };

/** RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; we tolerate more but not without bound. */
const MAX_LINE_BYTES = 8192;
/** A reply with more lines than this is a broken or hostile server. */
const MAX_REPLY_LINES = 200;

/** What the server showed in the TLS handshake, for a policy to judge (tlspolicy/ does, for DANE and MTA-STS). */
export interface PeerTls {
  /** DER certificates, leaf first, each followed by its issuer as far as the chain goes. */
  chain: Uint8Array[];
  /** The TLS stack's verdict against the CA bundle and the server name; undefined: trusted. */
  authorizationError?: { code: string; message: string };
}

/** The peer's chain from a detailed getPeerCertificate (Bun: `false` = not abbreviated, with issuers). */
function peerChain(socket: Socket<undefined>): Uint8Array[] {
  const out: Uint8Array[] = [];
  const seen = new Set<string>();
  type Cert = { raw?: Uint8Array; fingerprint256?: string; issuerCertificate?: Cert };
  let c: Cert | null | undefined = (
    socket as unknown as { getPeerCertificate(abbreviated: boolean): Cert | null }
  ).getPeerCertificate(false);
  while (c?.raw && !seen.has(c.fingerprint256 ?? String(out.length))) {
    seen.add(c.fingerprint256 ?? String(out.length));
    out.push(new Uint8Array(c.raw));
    c = c.issuerCertificate;
  }
  return out;
}

export interface ConnectOptions {
  ip: string;
  port: number;
  sourceAddress?: string;
  timeoutMs: number;
}

type Handlers = SocketHandler<undefined, "uint8array">;

export class SmtpConnection {
  private socket: Socket<undefined> | undefined;
  private partial = "";
  /** Replies are read as UTF-8 (RFC 6531 §3.7.4: a server may echo UTF-8 addresses); a multi-byte
   * character split across two reads is joined by the streaming decoder. Invalid bytes become U+FFFD. */
  private decoder = new TextDecoder("utf-8");
  private lines: string[] = [];
  private ready: SmtpReply[] = [];
  private waiter: ((r: ReadResult) => void) | undefined;
  private drainWaiter: (() => void) | undefined;
  private upgrading = false;
  private handshakeWaiter: ((ok: boolean, err: Error | null) => void) | undefined;
  closed = false;
  closeDetail = "";
  tls: { protocol: string; cipher: string } | undefined;
  /** After STARTTLS: the certificates the server presented and the TLS stack's verdict on them. */
  peer: PeerTls | undefined;
  /** Called once when the connection closes for any reason (the pool drops idle ones this way). */
  onClose: (() => void) | undefined;

  private constructor() {}

  static async connect(opts: ConnectOptions): Promise<SmtpConnection | { error: string }> {
    const conn = new SmtpConnection();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const connectOpts = {
      hostname: opts.ip,
      port: opts.port,
      // Bun honours localAddress only for an IP target, which is what we always pass.
      ...(opts.sourceAddress ? { localAddress: opts.sourceAddress } : {}),
      socket: conn.handlers(false),
    };
    const attempt = Bun.connect(connectOpts as unknown as Bun.TCPSocketConnectOptions<undefined>).then(
      (socket) => {
        conn.socket = socket as Socket<undefined>;
        return conn as SmtpConnection | { error: string };
      },
      (err: unknown) => ({
        error: `connect ${opts.ip}:${opts.port}: ${err instanceof Error ? err.message : String(err)}`,
      }),
    );
    const timeout = new Promise<{ error: string }>((resolve) => {
      timer = setTimeout(
        () => resolve({ error: `connect ${opts.ip}:${opts.port}: timed out` }),
        opts.timeoutMs,
      );
    });
    const r = await Promise.race([attempt, timeout]);
    clearTimeout(timer);
    if ("error" in r) {
      // A connect that completes after its timeout must not leak a socket.
      attempt.then((late) => {
        if (late instanceof SmtpConnection) late.destroy();
      });
      return r;
    }
    return r;
  }

  private handlers(isTls: boolean): Handlers {
    return {
      binaryType: "uint8array",
      data: (_s, data) => {
        // Bun 1.4.5: after upgradeTLS the plain socket still sees the raw TLS records; ignore them.
        if (!isTls && (this.upgrading || this.tls)) return;
        this.onData(data);
      },
      drain: () => {
        const w = this.drainWaiter;
        this.drainWaiter = undefined;
        w?.();
      },
      handshake: (_s, success, err) => {
        const w = this.handshakeWaiter;
        this.handshakeWaiter = undefined;
        w?.(success, err);
      },
      close: (_s, err) => {
        if (!isTls && (this.upgrading || this.tls)) return;
        this.markClosed(err ? err.message : "connection closed by peer");
      },
      end: () => {
        if (!isTls && (this.upgrading || this.tls)) return;
        this.markClosed("connection closed by peer");
      },
      error: (_s, err) => {
        if (!isTls && (this.upgrading || this.tls)) return;
        this.markClosed(err.message);
      },
    };
  }

  private markClosed(detail: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeDetail = detail;
    const w = this.waiter;
    this.waiter = undefined;
    w?.({ ok: false, why: "closed", detail });
    const d = this.drainWaiter;
    this.drainWaiter = undefined;
    d?.();
    const h = this.handshakeWaiter;
    this.handshakeWaiter = undefined;
    h?.(false, new Error(detail));
    this.socket?.end();
    this.onClose?.();
  }

  private onData(data: Uint8Array): void {
    this.partial += this.decoder.decode(data, { stream: true });
    let nl = this.partial.indexOf("\n");
    while (nl !== -1) {
      const line = this.partial.slice(0, nl).replace(/\r$/, "");
      this.partial = this.partial.slice(nl + 1);
      this.onLine(line);
      if (this.closed) return;
      nl = this.partial.indexOf("\n");
    }
    if (this.partial.length > MAX_LINE_BYTES) this.protocolError("reply line too long");
  }

  private onLine(line: string): void {
    if (!/^[2-5]\d\d(?:[ -]|$)/.test(line)) {
      this.protocolError(`malformed reply line: ${line.slice(0, 80)}`);
      return;
    }
    this.lines.push(line);
    if (line[3] === "-") {
      if (this.lines.length > MAX_REPLY_LINES) this.protocolError("reply has too many lines");
      return;
    }
    const r = parseReplyLines(this.lines);
    this.lines = [];
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w({ ok: true, reply: r });
    } else this.ready.push(r);
  }

  private protocolError(detail: string): void {
    this.markClosed(`protocol error: ${detail}`);
  }

  /** The next reply, in order. A timeout closes the connection. */
  read(timeoutMs: number): Promise<ReadResult> {
    const r = this.ready.shift();
    if (r) return Promise.resolve({ ok: true, reply: r });
    if (this.closed) return Promise.resolve({ ok: false, why: "closed", detail: this.closeDetail });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        resolve({ ok: false, why: "timeout", detail: `no reply within ${timeoutMs} ms` });
        this.markClosed(`timed out after ${timeoutMs} ms`);
      }, timeoutMs);
      this.waiter = (res) => {
        clearTimeout(timer);
        resolve(res);
      };
    });
  }

  /**
   * Hands all of `data` to the socket, waiting for drain when the kernel buffer is full. Fails when the
   * connection closes or no progress is made for `timeoutMs` (RFC 5321 §4.5.3.2.5's data block timeout).
   */
  async write(data: string | Uint8Array, timeoutMs: number): Promise<boolean> {
    // Commands are UTF-8 on the wire (RFC 6531 §3.3: SMTPUTF8 addresses are UTF-8, never one byte per
    // character); every other command is ASCII, for which both encodings agree.
    let bytes = typeof data === "string" ? textEncoder.encode(data) : data;
    while (bytes.length > 0) {
      if (this.closed || !this.socket) return false;
      const n = this.socket.write(bytes);
      if (n < 0) return false;
      bytes = bytes.subarray(n);
      if (bytes.length === 0) break;
      const progressed = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          this.drainWaiter = undefined;
          resolve(false);
        }, timeoutMs);
        this.drainWaiter = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
      if (!progressed) {
        this.markClosed(`write stalled for ${timeoutMs} ms`);
        return false;
      }
    }
    return !this.closed;
  }

  /** Sends a command line and reads its reply. */
  async command(line: string, timeoutMs: number): Promise<ReadResult> {
    if (!(await this.write(`${line}\r\n`, timeoutMs)))
      return { ok: false, why: "closed", detail: this.closeDetail || "write failed" };
    return this.read(timeoutMs);
  }

  /** Upgrades to TLS after a `220` to STARTTLS. On failure the connection is closed. */
  async startTls(opts: {
    servername?: string;
    verify: boolean;
    /** PEM bundle to judge the certificate against (default: the runtime's root store). */
    ca?: string;
    timeoutMs: number;
  }): Promise<{ ok: true } | { ok: false; detail: string }> {
    if (!this.socket || this.closed) return { ok: false, detail: "connection closed" };
    // RFC 3207 §4.2 / RFC 8314 §4: data the server sent before the handshake must be discarded.
    this.partial = "";
    this.decoder = new TextDecoder("utf-8");
    this.lines = [];
    this.ready = [];
    this.upgrading = true;
    const done = new Promise<{ ok: boolean; err: Error | null }>((resolve) => {
      const timer = setTimeout(() => this.markClosed("TLS handshake timed out"), opts.timeoutMs);
      this.handshakeWaiter = (ok, err) => {
        clearTimeout(timer);
        resolve({ ok, err });
      };
    });
    let tlsSocket: Socket<undefined>;
    try {
      const tls = {
        rejectUnauthorized: opts.verify,
        ...(opts.servername ? { serverName: opts.servername } : {}),
        ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      };
      const pair = this.socket.upgradeTLS({
        tls,
        socket: this.handlers(true) as unknown as SocketHandler<undefined>,
      });
      tlsSocket = pair[1];
    } catch (err) {
      this.upgrading = false;
      this.markClosed(`TLS upgrade failed: ${String(err)}`);
      return { ok: false, detail: this.closeDetail };
    }
    const plain = this.socket;
    this.socket = tlsSocket;
    const r = await done;
    // `ok` is "authorized": without verification a completed handshake with an untrusted certificate
    // is fine (that is what opportunistic TLS means); a failed handshake closes the socket.
    if (this.closed || (opts.verify && (!r.ok || r.err)) || (!r.ok && !r.err)) {
      const detail = `TLS handshake failed: ${r.err?.message ?? "unknown"}`;
      this.upgrading = false;
      this.tls = { protocol: "", cipher: "" };
      this.markClosed(detail);
      tlsSocket.end();
      plain.end();
      return { ok: false, detail };
    }
    this.upgrading = false;
    const cipher = tlsSocket.getCipher();
    this.tls = { protocol: tlsSocket.getTLSVersion() ?? cipher.version, cipher: cipher.name };
    const code = (r.err as { code?: string } | null)?.code;
    this.peer = {
      chain: peerChain(tlsSocket),
      ...(r.err ? { authorizationError: { code: code ?? "UNKNOWN", message: r.err.message } } : {}),
    };
    return { ok: true };
  }

  /** Closes without a QUIT (after an error, or when the peer is gone). */
  destroy(): void {
    this.markClosed("closed by us");
  }

  /** QUIT, wait briefly for 221, then close (RFC 5321 §4.1.1.10). */
  async quit(timeoutMs: number): Promise<void> {
    if (this.closed) return;
    await this.command("QUIT", timeoutMs);
    this.markClosed("closed after QUIT");
  }
}
