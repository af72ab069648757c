/**
 * A scripted SMTP server on loopback for driving the outbound client through every failure mode.
 *
 * Owns: a node:net listener speaking just enough SMTP (EHLO/HELO, STARTTLS via node:tls, MAIL, RCPT,
 * DATA, RSET, NOOP, QUIT), with hooks that answer, drop or stall at each step, and a record of what
 * each session said and delivered (the raw dot-stuffed DATA bytes and the un-stuffed body).
 */
import fs from "node:fs";
import net from "node:net";
import tls from "node:tls";

export type Action = string | "drop" | "stall";

export interface PeerScript {
  greeting?: Action;
  /** Extension lines after the first EHLO line; "reject" answers EHLO with 502 (HELO fallback). */
  ehlo?: string[] | "reject";
  /** Certificate for STARTTLS, or "fail" to answer 220 and then break the handshake. */
  tls?: { cert: string; key: string } | "fail";
  mail?: (from: string, params: string, session: PeerSession) => Action;
  rcpt?: (to: string, params: string, session: PeerSession) => Action;
  data?: (session: PeerSession) => Action;
  /** Stop reading from the socket once DATA is accepted (the client's writes back up). */
  stopReadingInData?: boolean;
  /** Drop the connection after this many bytes of message data. */
  dropAfterDataBytes?: number;
  dataDone?: (message: PeerMessage, session: PeerSession) => Action;
  rset?: (session: PeerSession) => Action;
  /** Accept AUTH PLAIN and AUTH LOGIN with these credentials (535 otherwise). */
  auth?: { username: string; password: string };
}

export interface PeerMessage {
  from: string;
  mailParams: string;
  rcpts: { to: string; params: string }[];
  /** Bytes as sent on the wire between DATA's 354 and the final dot line, excluded. */
  raw: Buffer;
  /** The message with the dot-stuffing undone. */
  body: Buffer;
}

export interface PeerSession {
  id: number;
  commands: string[];
  messages: PeerMessage[];
  tls: boolean;
  closed: boolean;
  remoteAddress: string;
  authenticated?: string;
}

export interface ScriptedPeer {
  host: string;
  port: number;
  sessions: PeerSession[];
  script: PeerScript;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

function unstuff(raw: Buffer): Buffer {
  const text = raw.toString("latin1");
  return Buffer.from(text.replace(/(^|\r\n)\.\./g, "$1."), "latin1");
}

export async function startScriptedPeer(script: PeerScript = {}): Promise<ScriptedPeer> {
  const sessions: PeerSession[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((plain) => {
    const session: PeerSession = {
      id: sessions.length,
      commands: [],
      messages: [],
      tls: false,
      closed: false,
      remoteAddress: plain.remoteAddress ?? "",
    };
    sessions.push(session);
    let sock: net.Socket = plain;
    sockets.add(plain);
    let buf = Buffer.alloc(0);
    let inData = false;
    let dataBytes = 0;
    let stalled = false;
    let current: Omit<PeerMessage, "raw" | "body"> | undefined;
    let loginStep: { user?: string } | undefined;
    const b64 = (t: string) => Buffer.from(t, "base64").toString("utf8");
    const checkLogin = (user: string, pass: string): boolean => {
      const ok = user === script.auth?.username && pass === script.auth?.password;
      if (ok) session.authenticated = user;
      return send(ok ? "235 2.7.0 authenticated" : "535 5.7.8 bad credentials");
    };

    const send = (a: Action): boolean => {
      if (a === "drop") {
        sock.destroy();
        session.closed = true;
        stalled = true;
        return false;
      }
      if (a === "stall") {
        stalled = true;
        return false;
      }
      sock.write(`${a}\r\n`);
      return true;
    };

    const onLine = (line: string) => {
      session.commands.push(line);
      if (loginStep) {
        if (loginStep.user === undefined) {
          loginStep.user = b64(line);
          return send("334 UGFzc3dvcmQ6");
        }
        const user = loginStep.user;
        loginStep = undefined;
        return checkLogin(user, b64(line));
      }
      const verb = line.split(" ")[0]!.toUpperCase();
      if (verb === "EHLO") {
        if (script.ehlo === "reject") return send("502 5.5.1 EHLO not implemented");
        const ext = [...(script.ehlo ?? ["PIPELINING", "8BITMIME", "SIZE 10000000"])];
        if (script.tls && !session.tls) ext.push("STARTTLS");
        const lines = ["peer.test hello", ...ext];
        return send(lines.map((l, i) => `250${i === lines.length - 1 ? " " : "-"}${l}`).join("\r\n"));
      }
      if (verb === "HELO") return send("250 peer.test");
      if (verb === "STARTTLS" && script.tls) {
        send("220 2.0.0 ready to start TLS");
        if (script.tls === "fail") {
          sock.write("this is not a TLS server hello\r\n");
          sock.end();
          stalled = true;
          return;
        }
        const secure = new tls.TLSSocket(plain, {
          isServer: true,
          key: script.tls.key,
          cert: script.tls.cert,
        });
        sock = secure;
        session.tls = true;
        buf = Buffer.alloc(0);
        plain.removeAllListeners("data");
        secure.on("data", onData);
        secure.on("error", () => {});
        return;
      }
      if (verb === "AUTH" && script.auth) {
        const [, mech = "", initial] = line.split(" ");
        if (mech.toUpperCase() === "PLAIN") {
          const [, user = "", pass = ""] = b64(initial ?? "").split("\0");
          return checkLogin(user, pass);
        }
        if (mech.toUpperCase() === "LOGIN") {
          loginStep = {};
          return send("334 VXNlcm5hbWU6");
        }
        return send("504 5.5.4 mechanism not supported");
      }
      if (verb === "MAIL") {
        const m = /^MAIL FROM:<([^>]*)>\s*(.*)$/i.exec(line);
        const a = script.mail?.(m?.[1] ?? "", m?.[2] ?? "", session) ?? "250 2.1.0 ok";
        if (a.startsWith("2")) current = { from: m?.[1] ?? "", mailParams: m?.[2] ?? "", rcpts: [] };
        return send(a);
      }
      if (verb === "RCPT") {
        const m = /^RCPT TO:<([^>]*)>\s*(.*)$/i.exec(line);
        const a = current
          ? (script.rcpt?.(m?.[1] ?? "", m?.[2] ?? "", session) ?? "250 2.1.5 ok")
          : "503 5.5.1 MAIL first";
        if (a.startsWith("2")) current!.rcpts.push({ to: m?.[1] ?? "", params: m?.[2] ?? "" });
        return send(a);
      }
      if (verb === "DATA") {
        if (!current || current.rcpts.length === 0) return send("554 5.5.1 no valid recipients");
        const a = script.data?.(session) ?? "354 go ahead";
        if (a.startsWith("354")) {
          inData = true;
          dataBytes = 0;
        }
        const sent = send(a);
        if (inData && script.stopReadingInData) {
          sock.pause();
          stalled = true;
        }
        return sent;
      }
      if (verb === "RSET") {
        current = undefined;
        return send(script.rset?.(session) ?? "250 2.0.0 ok");
      }
      if (verb === "NOOP") return send("250 2.0.0 ok");
      if (verb === "QUIT") {
        send("221 2.0.0 bye");
        sock.end();
        return;
      }
      return send("500 5.5.2 unknown command");
    };

    const onData = (chunk: Buffer) => {
      if (stalled) return;
      buf = Buffer.concat([buf, chunk]);
      while (!stalled && buf.length > 0) {
        if (inData) {
          if (script.dropAfterDataBytes !== undefined && dataBytes + buf.length > script.dropAfterDataBytes) {
            send("drop");
            return;
          }
          // The data ends with CRLF.CRLF; a message may also be empty ("." on the first line).
          const end = buf.indexOf("\r\n.\r\n");
          const emptyEnd = buf.subarray(0, 3).toString("latin1") === ".\r\n";
          if (end === -1 && !emptyEnd) return;
          const raw = emptyEnd ? Buffer.alloc(0) : Buffer.from(buf.subarray(0, end + 2));
          buf = buf.subarray(emptyEnd ? 3 : end + 5);
          inData = false;
          const msg: PeerMessage = { ...current!, raw, body: unstuff(raw) };
          current = undefined;
          const a = script.dataDone?.(msg, session) ?? "250 2.0.0 queued";
          if (a.startsWith("2")) session.messages.push(msg);
          send(a);
          continue;
        }
        const nl = buf.indexOf("\r\n");
        if (nl === -1) return;
        const line = buf.subarray(0, nl).toString("latin1");
        buf = buf.subarray(nl + 2);
        onLine(line);
      }
    };

    plain.on("data", onData);
    plain.on("error", () => {});
    plain.on("close", () => {
      session.closed = true;
      sockets.delete(plain);
    });
    const g = script.greeting ?? "220 peer.test ESMTP scripted";
    send(g);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { host: "127.0.0.1", port, sessions, script, close, [Symbol.asyncDispose]: close };
}

/** A port on loopback where nothing listens (bound, then closed). */
export async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** A throwaway self-signed certificate for `localhost` (EC P-256), made with openssl. */
export function selfSignedCert(dir: string): { cert: string; key: string } {
  const r = Bun.spawnSync([
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-subj",
    "/CN=localhost",
    "-days",
    "2",
    "-keyout",
    `${dir}/key.pem`,
    "-out",
    `${dir}/cert.pem`,
  ]);
  if (r.exitCode !== 0) throw new Error(`openssl failed: ${r.stderr.toString()}`);
  return { cert: fs.readFileSync(`${dir}/cert.pem`, "utf8"), key: fs.readFileSync(`${dir}/key.pem`, "utf8") };
}
