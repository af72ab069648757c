/**
 * An SMTP sink on loopback that measures what a remote site would see of a sender: how many
 * sessions it has open at every moment and when each message arrives, by client (its EHLO name).
 *
 * Owns: a Bun.listen server speaking enough SMTP (EHLO/HELO with PIPELINING, MAIL, RCPT, DATA, RSET,
 * NOOP, QUIT), the record of sessions opening and closing and of arrivals (time, EHLO name, first
 * recipient), a hook answering RCPT (e.g. a `421 4.7.0` for one address, then the session closes),
 * an optional delay before the reply to the final dot (to keep sessions busy), and the queries the
 * cluster tests and benchmarks ask (`maxConcurrent` in a window, by client, arrivals in a window).
 * Times are performance.now() of the test process (ms).
 */
import type { Socket } from "bun";

export interface Arrival {
  atMs: number;
  client: string;
  rcpt: string;
}

export interface SessionRecord {
  openedMs: number;
  closedMs: number | undefined;
  client: string;
  /** The client's IP address. */
  address: string;
}

export interface CountingSink extends AsyncDisposable {
  port: number;
  sessions: SessionRecord[];
  arrivals: Arrival[];
  /** Replies sent to RCPT other than 250, with when and to whom. */
  refusals: { atMs: number; wallMs: number; client: string; rcpt: string; reply: string }[];
  /** Open sessions now (all clients, or one). */
  open(client?: string): number;
  /** The most sessions open at once in [fromMs, toMs] (all clients, or those `client` names). */
  maxConcurrent(fromMs?: number, toMs?: number, client?: (c: string) => boolean): number;
  /** The first time at or after `fromMs` when at least `n` sessions were open at once (undefined: never). */
  firstTimeOpen(n: number, fromMs: number, client?: (c: string) => boolean): number | undefined;
  arrivalsBetween(fromMs: number, toMs: number, client?: string): Arrival[];
  waitFor(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

interface Conn {
  buf: string;
  inData: boolean;
  data: string;
  rcpts: string[];
  rec: SessionRecord;
  closing: boolean;
}

export async function startCountingSink(
  opts: {
    /** The reply to RCPT TO (default 250); a reply starting with 421 closes the session after it. */
    rcpt?: (to: string, client: string) => string | undefined;
    /** Ms to wait before answering the final dot. */
    dataDelayMs?: number;
  } = {},
): Promise<CountingSink> {
  const sessions: SessionRecord[] = [];
  const arrivals: Arrival[] = [];
  const refusals: CountingSink["refusals"] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  const conns = new Set<Socket<Conn>>();
  const notify = () => {
    for (const w of [...waiters])
      if (arrivals.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
  };
  const end = (s: Socket<Conn>) => {
    if (s.data.rec.closedMs === undefined) s.data.rec.closedMs = performance.now();
    conns.delete(s);
  };
  const write = (s: Socket<Conn>, text: string) => {
    if (!s.data.closing) s.write(text);
  };
  const line = (s: Socket<Conn>, l: string) => {
    const c = s.data;
    const verb = l.slice(0, 4).toUpperCase();
    if (verb === "EHLO" || verb === "HELO") {
      c.rec.client = l.slice(5).trim();
      write(s, verb === "EHLO" ? "250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" : "250 sink.test\r\n");
    } else if (verb === "MAIL") {
      c.rcpts = [];
      write(s, "250 2.1.0 ok\r\n");
    } else if (verb === "RCPT") {
      const to = /<([^>]*)>/.exec(l)?.[1] ?? "";
      const r = opts.rcpt?.(to, c.rec.client);
      if (r && !r.startsWith("250")) {
        refusals.push({
          atMs: performance.now(),
          wallMs: Date.now(),
          client: c.rec.client,
          rcpt: to,
          reply: r,
        });
        write(s, `${r}\r\n`);
        if (r.startsWith("421")) {
          c.closing = true;
          s.end();
        }
        return;
      }
      c.rcpts.push(to);
      write(s, "250 2.1.5 ok\r\n");
    } else if (verb === "DATA") {
      if (c.rcpts.length === 0) return write(s, "554 5.5.1 no valid recipients\r\n");
      c.inData = true;
      c.data = "";
      write(s, "354 go ahead\r\n");
    } else if (verb === "RSET" || verb === "NOOP") write(s, "250 2.0.0 ok\r\n");
    else if (verb === "QUIT") {
      write(s, "221 2.0.0 bye\r\n");
      c.closing = true;
      s.end();
    } else write(s, "502 5.5.2 unknown command\r\n");
  };
  const server = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        const rec: SessionRecord = {
          openedMs: performance.now(),
          closedMs: undefined,
          client: "",
          address: s.remoteAddress,
        };
        sessions.push(rec);
        s.data = { buf: "", inData: false, data: "", rcpts: [], rec, closing: false };
        conns.add(s);
        s.write("220 sink.test ESMTP\r\n");
      },
      data(s, bytes) {
        const c = s.data;
        c.buf += bytes.toString("latin1");
        for (;;) {
          if (c.closing) return;
          if (c.inData) {
            const i = c.buf.indexOf("\r\n.\r\n");
            const start = c.buf.startsWith(".\r\n") ? 0 : -1;
            if (i < 0 && start < 0) return;
            const cut = start === 0 ? 3 : i + 5;
            c.buf = c.buf.slice(cut);
            c.inData = false;
            const rcpt = c.rcpts[0] ?? "";
            const done = () => {
              if (c.closing) return;
              arrivals.push({ atMs: performance.now(), client: c.rec.client, rcpt });
              write(s, "250 2.0.0 queued\r\n");
              notify();
            };
            if (opts.dataDelayMs) setTimeout(done, opts.dataDelayMs);
            else done();
            continue;
          }
          const j = c.buf.indexOf("\r\n");
          if (j < 0) return;
          const l = c.buf.slice(0, j);
          c.buf = c.buf.slice(j + 2);
          line(s, l);
        }
      },
      close(s) {
        end(s);
      },
      error(s) {
        end(s);
      },
    },
  });
  const match = (client?: (c: string) => boolean) => (r: SessionRecord) => !client || client(r.client);
  const maxConcurrent = (fromMs = 0, toMs = Infinity, client?: (c: string) => boolean) => {
    const ev: [number, number][] = [];
    for (const r of sessions.filter(match(client))) {
      ev.push([r.openedMs, 1]);
      ev.push([r.closedMs ?? Infinity, -1]);
    }
    ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let cur = 0;
    let max = 0;
    let started = false;
    for (const [t, d] of ev) {
      if (t > toMs) break;
      if (!started && t >= fromMs) {
        started = true;
        max = cur; // open at fromMs
      }
      cur += d;
      if (started) max = Math.max(max, cur);
    }
    return started ? max : cur;
  };
  const close = async () => {
    for (const s of conns) s.end();
    server.stop(true);
  };
  return {
    port: server.port,
    sessions,
    arrivals,
    refusals,
    open: (client) =>
      sessions.filter((r) => r.closedMs === undefined && (!client || r.client === client)).length,
    maxConcurrent,
    firstTimeOpen(n, fromMs, client) {
      const ev: [number, number][] = [];
      for (const r of sessions.filter(match(client))) {
        ev.push([r.openedMs, 1]);
        if (r.closedMs !== undefined) ev.push([r.closedMs, -1]);
      }
      ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      let cur = 0;
      for (const [t, d] of ev) {
        cur += d;
        if (t >= fromMs && cur >= n) return t;
      }
      return undefined;
    },
    arrivalsBetween: (fromMs, toMs, client) =>
      arrivals.filter((a) => a.atMs >= fromMs && a.atMs <= toMs && (!client || a.client === client)),
    waitFor(n, timeoutMs = 120_000) {
      if (arrivals.length >= n) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const w = { n, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i < 0) return;
          waiters.splice(i, 1);
          reject(new Error(`sink: ${arrivals.length} of ${n} messages after ${timeoutMs} ms`));
        }, timeoutMs).unref?.();
      });
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
