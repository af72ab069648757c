/**
 * The sending side of the torture scenarios: a small promise-based SMTP client over Bun.connect and an
 * injector that keeps several sessions sending uniquely tagged messages, reconnecting when the daemon
 * dies, and remembering exactly which tokens were acknowledged with 250 (and under which queue id).
 *
 * Owns: client sockets it opened; the acknowledged set of an injector run.
 * Invariant: a token counts as acknowledged only after a complete `250 ... queued as <id>` reply to its
 * final dot; a token whose reply never came is "unconfirmed" (it may or may not be delivered).
 */
import type { Socket } from "bun";

export interface Reply {
  code: number;
  text: string;
}

export class SmtpConn {
  private buf = "";
  private lines: string[] = [];
  private waiters: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  closed = false;

  private constructor(private readonly socket: Socket<undefined>) {}

  /**
   * Connects to 127.0.0.1:`port`, from `localAddress` when given (another loopback address, so limits
   * per client address can be exercised), and waits for the greeting (any code: the caller checks it).
   */
  static async open(
    port: number,
    localAddress?: string,
    timeoutMs = 5_000,
  ): Promise<{ conn: SmtpConn; greeting: Reply }> {
    let conn: SmtpConn | undefined;
    let early = "";
    // A refused connection rejects Bun.connect itself; connectError only needs to exist.
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      // Bun honours localAddress for an IP target (the type declarations do not list it).
      ...(localAddress ? { localAddress } : {}),
      socket: {
        data(_s, chunk) {
          if (conn) conn.onData(chunk.toString("latin1"));
          else early += chunk.toString("latin1");
        },
        close() {
          conn?.onClose();
        },
        error() {
          conn?.onClose();
        },
        connectError() {},
      },
    });
    conn = new SmtpConn(socket);
    const greetingReply = conn.reply(timeoutMs);
    if (early) conn.onData(early);
    const greeting = await greetingReply;
    return { conn, greeting };
  }

  private onData(text: string): void {
    this.buf += text;
    for (;;) {
      const i = this.buf.indexOf("\n");
      if (i < 0) break;
      const line = this.buf.slice(0, i).replace(/\r$/, "");
      this.buf = this.buf.slice(i + 1);
      this.lines.push(line);
      if (line.length < 4 || line[3] !== "-") {
        const text = this.lines.join("\n");
        this.lines = [];
        this.waiters.shift()?.resolve({ code: Number(text.slice(0, 3)) || 0, text });
      }
    }
  }

  private onClose(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new Error("connection closed"));
  }

  /** The next complete reply; rejects when the connection closes or `timeoutMs` passes. */
  reply(timeoutMs = 10_000): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error("connection closed"));
    return new Promise<Reply>((resolve, reject) => {
      const w = {
        resolve: (r: Reply) => {
          clearTimeout(t);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(t);
          reject(e);
        },
      };
      const t = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error("reply timed out"));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  send(data: string | Uint8Array): void {
    if (!this.closed) this.socket.write(data);
  }

  async cmd(line: string, timeoutMs?: number): Promise<Reply> {
    const r = this.reply(timeoutMs);
    this.send(`${line}\r\n`);
    return r;
  }

  close(): void {
    if (!this.closed) this.socket.terminate();
    this.closed = true;
  }
}

export const QUEUED_AS = /^250 2\.0\.0 Ok: queued as ([0-9A-Z ]+)$/;

/** A message with a unique `X-Torture-Seq` header, about `sizeBytes` long, ending with the dot line. */
export function taggedMessage(token: string, sizeBytes = 1024, extraHeaders = ""): string {
  let body =
    `From: <app@app.test>\r\nTo: <r@torture.test>\r\nSubject: torture ${token}\r\n` +
    `Message-ID: <${token}@torture.test>\r\nX-Torture-Seq: ${token}\r\n${extraHeaders}\r\n`;
  const line = `${"t".repeat(76)}\r\n`;
  while (body.length + line.length < sizeBytes) body += line;
  return `${body}.\r\n`;
}

export interface InjectorStats {
  /** token -> queue id, for every 250 to a final dot. */
  acked: Map<string, string>;
  /** Tokens sent whose final reply never came (connection died). */
  unconfirmed: Set<string>;
  /** Final-dot reply codes other than 250, by code. */
  refused: Map<number, number>;
  /** Any 250 to a final dot that did not carry a queue id. */
  oddAcks: number;
  connectFailures: number;
}

/**
 * Runs `sessions` sessions until `stop()` is true. `port()` is read at each connect (the daemon gets a
 * new port after a restart). Each transaction: MAIL, RCPT, DATA, body, one reply at a time.
 */
export function startInjector(opts: {
  port: () => number;
  sessions: number;
  sizeBytes?: number;
  prefix?: string;
  domain?: string;
  replyTimeoutMs?: number;
  /** Stop after issuing this many tokens. */
  max?: number;
}): { stats: InjectorStats; stop: () => Promise<void> } {
  const stats: InjectorStats = {
    acked: new Map(),
    unconfirmed: new Set(),
    refused: new Map(),
    oddAcks: 0,
    connectFailures: 0,
  };
  let stopping = false;
  let seq = 0;
  const prefix = opts.prefix ?? "c";
  const session = async (): Promise<void> => {
    while (!stopping && seq < (opts.max ?? Number.POSITIVE_INFINITY)) {
      let conn: SmtpConn;
      try {
        const o = await SmtpConn.open(opts.port());
        conn = o.conn;
        if (o.greeting.code !== 220) throw new Error(o.greeting.text);
      } catch {
        stats.connectFailures++;
        await Bun.sleep(25);
        continue;
      }
      try {
        const ehlo = await conn.cmd("EHLO injector.test");
        if (ehlo.code !== 250) throw new Error(ehlo.text);
        while (!stopping && seq < (opts.max ?? Number.POSITIVE_INFINITY)) {
          const token = `${prefix}${seq++}`;
          const m = await conn.cmd("MAIL FROM:<app@app.test>");
          const r = await conn.cmd(`RCPT TO:<${token}@${opts.domain ?? "torture.test"}>`);
          const d = await conn.cmd("DATA");
          if (m.code !== 250 || r.code !== 250 || d.code !== 354) {
            if (d.code === 354) conn.send(".\r\n");
            const code = d.code === 354 ? 0 : ([m, r, d].find((x) => x.code !== 250)?.code ?? 0);
            stats.refused.set(code, (stats.refused.get(code) ?? 0) + 1);
            await conn.cmd("RSET");
            continue;
          }
          stats.unconfirmed.add(token);
          const done = conn.reply(opts.replyTimeoutMs ?? 30_000);
          conn.send(taggedMessage(token, opts.sizeBytes));
          const fin = await done;
          stats.unconfirmed.delete(token);
          if (fin.code === 250) {
            const q = QUEUED_AS.exec(fin.text);
            if (q) stats.acked.set(token, q[1] as string);
            else stats.oddAcks++;
          } else {
            stats.refused.set(fin.code, (stats.refused.get(fin.code) ?? 0) + 1);
            if (fin.code >= 400 && fin.code < 500) await Bun.sleep(20);
          }
        }
        await conn.cmd("QUIT", 2_000).catch(() => {});
      } catch {
        // The daemon died or the session was cut: the token in flight stays unconfirmed.
      }
      conn.close();
    }
  };
  const running = Array.from({ length: opts.sessions }, () => session());
  return {
    stats,
    stop: async () => {
      stopping = true;
      await Promise.all(running);
    },
  };
}
