/**
 * A minimal SMTP server on loopback (no PIPELINING) that answers DATA after a delay and counts
 * sessions: how many are open at once, in all and per client address.
 */
import net from "node:net";

export interface CountingPeer extends AsyncDisposable {
  port: number;
  /** Open sessions right now, and the most ever open at once. */
  open: number;
  maxOpen: number;
  sessions: number;
  /** Per client (source) address: open sessions now and the most at once. */
  openBy: Map<string, number>;
  maxOpenBy: Map<string, number>;
  /** Accepted messages: envelope sender, recipients, body, the client's address and EHLO name. */
  messages: { from: string; to: string[]; body: string; source: string; ehlo: string }[];
  /** Reply to each RCPT (default 250). */
  rcpt: (to: string) => string;
}

/**
 * A minimal SMTP server (no PIPELINING) that answers DATA after `dataDelayMs` and counts sessions;
 * `quitDelayMs`: the 221 to QUIT comes that much later (a session counts as open until it closes).
 */
export async function countingPeer(
  dataDelayMs: number,
  opts: { quitDelayMs?: number } = {},
): Promise<CountingPeer> {
  const sockets = new Set<net.Socket>();
  const peer: CountingPeer = {
    port: 0,
    open: 0,
    maxOpen: 0,
    sessions: 0,
    openBy: new Map(),
    maxOpenBy: new Map(),
    messages: [],
    rcpt: () => "250 2.1.5 ok",
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = net.createServer((sock) => {
    sockets.add(sock);
    peer.sessions++;
    peer.open++;
    peer.maxOpen = Math.max(peer.maxOpen, peer.open);
    const source = (sock.remoteAddress ?? "").replace(/^::ffff:/, "");
    const nowBy = (peer.openBy.get(source) ?? 0) + 1;
    peer.openBy.set(source, nowBy);
    peer.maxOpenBy.set(source, Math.max(peer.maxOpenBy.get(source) ?? 0, nowBy));
    sock.on("close", () => {
      peer.open--;
      peer.openBy.set(source, (peer.openBy.get(source) ?? 1) - 1);
      sockets.delete(sock);
    });
    sock.on("error", () => {});
    let buf = "";
    let inData = false;
    let from = "";
    let to: string[] = [];
    let ehlo = "";
    sock.write("220 counting.test ESMTP\r\n");
    sock.on("data", (chunk) => {
      buf += chunk.toString("latin1");
      for (;;) {
        if (inData) {
          const end = buf.indexOf("\r\n.\r\n");
          if (end < 0) return;
          const body = buf.slice(0, end + 2);
          buf = buf.slice(end + 5);
          inData = false;
          const msg = { from, to, body, source, ehlo };
          setTimeout(() => {
            peer.messages.push(msg);
            if (!sock.destroyed) sock.write("250 2.0.0 queued\r\n");
          }, dataDelayMs);
          continue;
        }
        const nl = buf.indexOf("\r\n");
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (process.env.PEER_DEBUG) console.log(`peer ${peer.sessions} <`, line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO" || verb === "HELO") ehlo = line.slice(5).trim();
        if (verb === "EHLO") sock.write("250-counting.test\r\n250 8BITMIME\r\n");
        else if (verb === "HELO") sock.write("250 counting.test\r\n");
        else if (verb === "MAIL") {
          from = /<([^>]*)>/.exec(line)?.[1] ?? "";
          to = [];
          sock.write("250 2.1.0 ok\r\n");
        } else if (verb === "RCPT") {
          const addr = /<([^>]*)>/.exec(line)?.[1] ?? "";
          const r = peer.rcpt(addr);
          if (r.startsWith("2")) to.push(addr);
          sock.write(`${r}\r\n`);
        } else if (verb === "DATA") {
          inData = true;
          sock.write("354 go ahead\r\n");
        } else if (verb === "RSET" || verb === "NOOP") sock.write("250 2.0.0 ok\r\n");
        else if (verb === "QUIT") {
          const bye = () => {
            if (sock.destroyed) return;
            sock.write("221 2.0.0 bye\r\n");
            sock.end();
          };
          if (opts.quitDelayMs) setTimeout(bye, opts.quitDelayMs);
          else bye();
          return;
        } else sock.write("500 5.5.2 what\r\n");
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  peer.port = (server.address() as net.AddressInfo).port;
  return peer;
}
