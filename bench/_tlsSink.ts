/**
 * A STARTTLS-capable SMTP sink for bench/tls.ts, run as its own process so that its CPU is not the
 * client's: accepts everything, discards the data, counts messages. Postfix's smtp-sink has no TLS.
 *
 *   bun bench/_tlsSink.ts HOST PORT CERT_FILE KEY_FILE     (prints "ready" when listening)
 */
import fs from "node:fs";
import net from "node:net";
import tls from "node:tls";

const [host, port, certFile, keyFile] = process.argv.slice(2);
const context = tls.createSecureContext({ cert: fs.readFileSync(certFile!), key: fs.readFileSync(keyFile!) });

const server = net.createServer((plain) => {
  let sock: net.Socket = plain;
  let buf = "";
  let inData = false;
  let secure = false;
  const onData = (d: Buffer) => {
    buf += d.toString("latin1");
    for (;;) {
      if (inData) {
        const end = buf.indexOf("\r\n.\r\n");
        if (end < 0) {
          if (buf.length > 8) buf = buf.slice(-8);
          return;
        }
        buf = buf.slice(end + 5);
        inData = false;
        sock.write("250 2.0.0 ok\r\n");
        continue;
      }
      const nl = buf.indexOf("\r\n");
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      const verb = line.slice(0, 4).toUpperCase();
      if (verb === "EHLO")
        sock.write(`250-sink.test\r\n250-PIPELINING\r\n${secure ? "" : "250-STARTTLS\r\n"}250 8BITMIME\r\n`);
      else if (verb === "STAR") {
        sock.write("220 2.0.0 go ahead\r\n");
        plain.removeAllListeners("data");
        const t = new tls.TLSSocket(plain, { isServer: true, secureContext: context });
        t.on("data", onData);
        t.on("error", () => {});
        sock = t;
        secure = true;
        buf = "";
        return;
      } else if (verb === "DATA") {
        sock.write("354 go\r\n");
        inData = true;
      } else if (verb === "QUIT") {
        sock.end("221 2.0.0 bye\r\n");
        return;
      } else sock.write("250 2.0.0 ok\r\n");
    }
  };
  plain.on("data", onData);
  plain.on("error", () => {});
  plain.write("220 sink.test ESMTP\r\n");
});
server.listen(Number(port), host, () => console.log("ready"));
