/**
 * A receiving SMTP server on loopback that records what it got, and can turn hostile.
 *
 * Owns: a Bun.listen server speaking enough SMTP for mta's deliverer (EHLO with PIPELINING, MAIL, RCPT,
 * DATA, RSET, NOOP, QUIT, STARTTLS advertised only to break it), the record of every message it
 * accepted with 250 (its torture tokens, the "life" of the daemon it arrived in), and the open sockets.
 * Modes (switchable at any time, read when a session starts):
 *   good            accepts everything
 *   stall-mid-reply answers MAIL with "250 2.1" and no line end, then nothing
 *   endless         answers MAIL with 250- continuation lines forever
 *   close-in-data   answers DATA with 354, closes after the first body bytes
 *   garbage         answers EHLO and HELO with random bytes
 *   mute            greets, then never answers
 *   tls-fail        advertises STARTTLS, answers 220, then sends bytes that are not TLS and closes
 *   stall-after-dot receives the whole message, never answers the final dot (an "almost" delivery)
 * Invariant: a message is recorded as received only when its 250 was written.
 */
import type { Socket, TCPSocketListener } from "bun";

export type SinkMode =
  | "good"
  | "stall-mid-reply"
  | "endless"
  | "close-in-data"
  | "garbage"
  | "mute"
  | "tls-fail"
  | "stall-after-dot";

export interface Received {
  tokens: string[];
  /** The daemon's life (incremented by the crash loop at each kill) when the 250 was written. */
  life: number;
  bytes: number;
}

export interface RecordingSink {
  port: number;
  mode: SinkMode;
  life: number;
  received: Received[];
  /** Messages received in full by a hostile mode but never answered. */
  almost: Received[];
  /** token -> number of times accepted */
  counts: Map<string, number>;
  openSockets(): number;
  stop(): void;
}

const TOKEN = /^X-Torture-Seq: ([^\r\n]+)\r?$/gm;

export function tokensOf(text: string): string[] {
  return [...text.matchAll(TOKEN)].map((m) => m[1] as string);
}

interface Conn {
  mode: SinkMode;
  buf: Buffer;
  inData: boolean;
  dead: boolean;
  timer?: ReturnType<typeof setInterval>;
}

export function startRecordingSink(opts: { host?: string; mode?: SinkMode } = {}): RecordingSink {
  const sockets = new Set<Socket<Conn>>();
  const sink: RecordingSink = {
    port: 0,
    mode: opts.mode ?? "good",
    life: 0,
    received: [],
    almost: [],
    counts: new Map(),
    openSockets: () => sockets.size,
    stop: () => {
      for (const s of sockets) {
        if (s.data.timer) clearInterval(s.data.timer);
        s.terminate();
      }
      server.stop(true);
    },
  };
  const write = (s: Socket<Conn>, text: string) => {
    if (!s.data.dead) s.write(text);
  };
  const finishMessage = (s: Socket<Conn>, raw: Buffer) => {
    const text = raw.toString("latin1");
    const rec = { tokens: tokensOf(text), life: sink.life, bytes: raw.length };
    if (s.data.mode === "stall-after-dot") {
      sink.almost.push(rec);
      return;
    }
    sink.received.push(rec);
    for (const t of rec.tokens) sink.counts.set(t, (sink.counts.get(t) ?? 0) + 1);
    write(s, "250 2.0.0 Ok: got it\r\n");
  };
  const onLine = (s: Socket<Conn>, line: string) => {
    const mode = s.data.mode;
    const verb = line.slice(0, 4).toUpperCase();
    if (mode === "mute") return;
    if (verb === "EHLO" || verb === "HELO") {
      if (mode === "garbage") {
        const g = Buffer.alloc(64);
        for (let i = 0; i < g.length; i++) g[i] = Math.floor(Math.random() * 256);
        s.write(g);
        s.write("\r\n");
        return;
      }
      if (verb === "HELO") return write(s, "250 sink.test\r\n");
      const ext = ["sink.test", "PIPELINING", "8BITMIME", "SIZE 100000000"];
      if (mode === "tls-fail") ext.push("STARTTLS");
      return write(s, ext.map((e, i) => `250${i === ext.length - 1 ? " " : "-"}${e}\r\n`).join(""));
    }
    if (verb === "STAR" && mode === "tls-fail") {
      write(s, "220 2.0.0 go ahead\r\n");
      write(s, "\x15\x03\x01\x00\x02\x02\x28 this is not TLS\r\n");
      s.data.dead = true;
      s.end();
      return;
    }
    if (verb === "MAIL") {
      if (mode === "stall-mid-reply") {
        s.write("250 2.1");
        s.data.dead = true;
        return;
      }
      if (mode === "endless") {
        s.data.dead = true;
        const chunk = "250-this line goes on and the reply never ends\r\n".repeat(80);
        s.data.timer = setInterval(() => s.write(chunk), 20);
        return;
      }
      return write(s, "250 2.1.0 Ok\r\n");
    }
    if (verb === "RCPT") return write(s, "250 2.1.5 Ok\r\n");
    if (verb === "DATA") {
      s.data.inData = true;
      return write(s, "354 End data with <CR><LF>.<CR><LF>\r\n");
    }
    if (verb === "QUIT") {
      write(s, "221 2.0.0 Bye\r\n");
      s.data.dead = true;
      s.end();
      return;
    }
    if (verb === "RSET" || verb === "NOOP") return write(s, "250 2.0.0 Ok\r\n");
    return write(s, "502 5.5.2 Error: command not recognized\r\n");
  };
  const pump = (s: Socket<Conn>) => {
    const c = s.data;
    for (;;) {
      if (c.dead) return;
      if (c.inData) {
        if (c.mode === "close-in-data" && c.buf.length > 0) {
          c.dead = true;
          s.end();
          return;
        }
        // The body starts right after 354; an empty body is a lone ".\r\n".
        if (c.buf.length >= 3 && c.buf[0] === 0x2e && c.buf[1] === 0x0d && c.buf[2] === 0x0a) {
          c.buf = c.buf.subarray(3);
          c.inData = false;
          finishMessage(s, Buffer.alloc(0));
          continue;
        }
        const end = c.buf.indexOf("\r\n.\r\n");
        if (end < 0) return;
        const raw = c.buf.subarray(0, end + 2);
        c.buf = c.buf.subarray(end + 5);
        c.inData = false;
        finishMessage(s, Buffer.from(raw));
        continue;
      }
      const nl = c.buf.indexOf("\r\n");
      if (nl < 0) return;
      const line = c.buf.subarray(0, nl).toString("latin1");
      c.buf = c.buf.subarray(nl + 2);
      onLine(s, line);
    }
  };
  const server: TCPSocketListener<Conn> = Bun.listen<Conn>({
    hostname: opts.host ?? "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { mode: sink.mode, buf: Buffer.alloc(0), inData: false, dead: false };
        sockets.add(s);
        s.write("220 sink.test ESMTP torture\r\n");
      },
      data(s, chunk) {
        s.data.buf = s.data.buf.length ? Buffer.concat([s.data.buf, chunk]) : Buffer.from(chunk);
        pump(s);
      },
      close(s) {
        if (s.data?.timer) clearInterval(s.data.timer);
        sockets.delete(s);
      },
      error(s) {
        if (s.data?.timer) clearInterval(s.data.timer);
        sockets.delete(s);
      },
    },
  });
  sink.port = server.port;
  return sink;
}
