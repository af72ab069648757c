/**
 * A raw SMTP client for end-to-end tests that need control over timing (a DATA that takes seconds,
 * a SIGTERM in the middle) or the queue ids from the replies.
 *
 * Owns: `rawSession` (write lines, read replies as they come) and `sendMessages` (n messages over one
 * session, returning their queue ids).
 */
import type { Socket } from "bun";

export interface RawSession {
  socket: Socket;
  /** The next complete reply (its last line), or "" once the server closed the connection. */
  reply(): Promise<string>;
  isClosed(): boolean;
}

export async function rawSession(port: number, host = "127.0.0.1"): Promise<RawSession> {
  let buf = "";
  let wake: (() => void) | undefined;
  let closed = false;
  const socket: Socket = await Bun.connect({
    hostname: host,
    port,
    socket: {
      data(_s, chunk) {
        buf += chunk.toString();
        wake?.();
      },
      close() {
        closed = true;
        wake?.();
      },
    },
  });
  const reply = async (): Promise<string> => {
    for (;;) {
      const m = /^(\d{3}) .*\r\n/m.exec(buf);
      if (m) {
        const end = buf.indexOf("\r\n", m.index) + 2;
        const r = buf.slice(0, end);
        buf = buf.slice(end);
        return r;
      }
      if (closed) return "";
      await new Promise<void>((r) => {
        wake = r;
      });
    }
  };
  return { socket, reply, isClosed: () => closed };
}

/** Sends `n` messages to `r<i>@<domain>` over one session; returns their queue ids. */
export async function sendMessages(port: number, n: number, domain = "example.net"): Promise<string[]> {
  const s = await rawSession(port);
  await s.reply();
  s.socket.write("EHLO client.test\r\n");
  await s.reply();
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    s.socket.write(`MAIL FROM:<a@app.test>\r\nRCPT TO:<r${i}@${domain}>\r\nDATA\r\n`);
    for (let k = 0; k < 3; k++) await s.reply();
    s.socket.write(`Subject: m${i}\r\n\r\nbody ${i}\r\n.\r\n`);
    const r = await s.reply();
    const m = /queued as ([0-9A-Z]{14})/.exec(r);
    if (!m) throw new Error(`message ${i} not accepted: ${r}`);
    ids.push(m[1]!);
  }
  s.socket.write("QUIT\r\n");
  await s.reply();
  s.socket.end();
  return ids;
}
