/**
 * A slow receiving SMTP server for bench/slow-remote.ts, run as a child process: it listens on many
 * loopback addresses (one Bun.listen per address, same port) and answers each message's end of DATA
 * only after a delay, like a remote MX that takes its time.
 *
 * Usage: bun bench/_slowSink.ts <port> <delayMs> <ip> [<ip> ...]
 * Prints one JSON line a second: {"open":n,"maxOpen":n,"messages":n,"sessions":n}.
 * Speaks just enough SMTP: 220, EHLO/HELO (8BITMIME, PIPELINING not offered), MAIL, RCPT, DATA,
 * RSET, NOOP, QUIT. Loopback only: refuses to bind anything outside 127.0.0.0/8.
 */
import type { Socket } from "bun";

const [portText, delayText, ...ips] = process.argv.slice(2);
const port = Number(portText);
const delayMs = Number(delayText);
if (!port || Number.isNaN(delayMs) || ips.length === 0) {
  console.error("usage: _slowSink.ts <port> <delayMs> <ip>...");
  process.exit(64);
}
for (const ip of ips) if (!ip.startsWith("127.")) throw new Error(`not a loopback address: ${ip}`);

interface State {
  buf: string;
  inData: boolean;
}

let open = 0;
let maxOpen = 0;
let messages = 0;
let sessions = 0;
const END = "\r\n.\r\n";

function onLine(s: Socket<State>, line: string): void {
  const verb = line.slice(0, 4).toUpperCase();
  if (verb === "EHLO") s.write("250-sink.test\r\n250 8BITMIME\r\n");
  else if (verb === "HELO") s.write("250 sink.test\r\n");
  else if (verb === "MAIL" || verb === "RCPT" || verb === "RSET" || verb === "NOOP")
    s.write("250 2.0.0 ok\r\n");
  else if (verb === "DATA") {
    s.data.inData = true;
    s.write("354 go ahead\r\n");
  } else if (verb === "QUIT") {
    s.write("221 2.0.0 bye\r\n");
    s.end();
  } else s.write("500 5.5.2 what\r\n");
}

const handlers = {
  open(s: Socket<State>) {
    s.data = { buf: "", inData: false };
    open++;
    sessions++;
    if (open > maxOpen) maxOpen = open;
    s.write("220 sink.test ESMTP\r\n");
  },
  data(s: Socket<State>, chunk: Buffer) {
    const st = s.data;
    st.buf += chunk.toString("latin1");
    for (;;) {
      if (st.inData) {
        const end = st.buf.indexOf(END);
        if (end < 0) {
          // Keep only what could be the start of the terminator.
          if (st.buf.length > 8) st.buf = st.buf.slice(-4);
          return;
        }
        st.buf = st.buf.slice(end + END.length);
        st.inData = false;
        setTimeout(() => {
          messages++;
          s.write("250 2.0.0 queued\r\n");
        }, delayMs);
        continue;
      }
      const nl = st.buf.indexOf("\r\n");
      if (nl < 0) return;
      const line = st.buf.slice(0, nl);
      st.buf = st.buf.slice(nl + 2);
      onLine(s, line);
    }
  },
  close() {
    open--;
  },
  error() {},
};

for (const ip of ips) Bun.listen<State>({ hostname: ip, port, socket: handlers });
console.log(JSON.stringify({ ready: ips.length }));
setInterval(() => console.log(JSON.stringify({ open, maxOpen, messages, sessions })), 1000);
