/**
 * Inbound SMTP sessions over `Bun.listen`.
 *
 * Owns: one small `Session` state object per connection, driven by the socket's data/drain/close
 * handlers (no per-session async loop); the RFC 5321 state machine with PIPELINING, SIZE, 8BITMIME,
 * SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS, AUTH PLAIN/LOGIN, CHUNKING (BDAT), BINARYMIME and DSN;
 * relay policy and `<postmaster>`; limits (size, recipients, line length, errors, junk commands,
 * connections per listener and per IP); timeouts; backpressure; graceful close.
 * Does not own: what "accepted" means (the `Acceptor`), protocol syntax (smtp/).
 *
 * Implementation summary:
 * - Input arrives in `onData`; `process` consumes as much of it as the state allows: complete command
 *   lines (pipelined commands are answered in order, the replies written in one `write`), DATA bytes
 *   through a streaming `DotUnstuffer`, or the counted bytes of a BDAT chunk. Unconsumed bytes (a partial
 *   line, commands pipelined behind a message being accepted) are kept in `inbuf`.
 * - While the Acceptor or a password check runs, the session is `busy`: input is kept, not processed.
 * - When `socket.write` takes less than asked, the rest waits in `pending`, reading is paused, and no
 *   command is processed until `drain` has written it: a client that does not read cannot grow our buffers.
 * - Only `<CRLF>.<CRLF>` ends DATA; with `rejectBareNewlines` a bare CR or LF anywhere (commands, DATA,
 *   BDAT without BINARYMIME) gets `521 5.5.2` and the session ends (as Postfix's
 *   `smtpd_forbid_bare_newline`). Message content rules (NUL, long lines) are the Acceptor's (app/).
 * - After `STARTTLS`, bytes the client pipelined behind it in plaintext are dropped (CVE-2011-0411),
 *   and the plain socket's handlers ignore the encrypted bytes they keep receiving (a Bun trait).
 * - Timeouts: one sweep timer per listener compares each session's deadline with the clock.
 * Invariants: `250` after DATA/BDAT LAST is sent only when the Acceptor returned `ok: true`; every reply
 * line is at most 512 octets (formatReply cuts, `queuedReply` counts the ids it cannot name).
 */
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import {
  anyCidrContains,
  type Clock,
  concatBytes,
  errorMessage,
  isLoopback,
  LF,
  systemClock,
  textEncoder,
} from "../lib/index.ts";
import { type Counter, type Gauge, type Logger, Metrics } from "../observe/index.ts";
import {
  afterPrefix,
  DotUnstuffer,
  type EsmtpParams,
  findBareNewline,
  formatReply,
  MAX_REPLY_LINE_OCTETS,
  parseCommand,
  parseEsmtpParams,
  parsePath,
  reply,
  type SmtpReply,
} from "../smtp/index.ts";
import { decodeBase64, MECHANISMS, parsePlain, verifyUser } from "./_auth.ts";
import { receivedHeader, submissionHeaders } from "./_headers.ts";
import type { Acceptor, Envelope, EnvelopeRecipient, Listener, ListenerOptions } from "./_types.ts";

type Phase = "command" | "data" | "bdat" | "auth";

interface Transaction {
  sender: string;
  params: EsmtpParams;
  recipients: EnvelopeRecipient[];
  /** BDAT chunks received so far (RFC 3030); undefined until the first BDAT. */
  chunks?: Uint8Array[];
  chunkBytes: number;
}

interface AuthExchange {
  mech: "PLAIN" | "LOGIN";
  user?: string;
}

/** Above this many unprocessed input bytes the socket is paused while the session is busy. */
const MAX_BUFFERED_INPUT_BYTES = 64 * 1024;
/** Hard cap on unprocessed input (pausing keeps it far below; this only guards against a broken pause). */
const MAX_UNREAD_INPUT_BYTES = 4 * 1024 * 1024;
const utf8 = new TextDecoder("utf-8", { fatal: true });

class Session {
  phase: Phase = "command";
  helo = "";
  esmtp = false;
  /** STARTTLS was answered (the handshake may still be running). */
  tlsStarted = false;
  tls: { protocol: string; cipher: string } | undefined;
  authUser: string | undefined;
  txn: Transaction | undefined;
  auth: AuthExchange | undefined;
  /** Unprocessed input, from `inOff`. */
  inbuf: Uint8Array | undefined;
  inOff = 0;
  /** Whether `inbuf` is our copy (else it is the socket layer's chunk, only valid during `onData`). */
  inbufOwned = false;
  /** Dropping the rest of an overlong command line. */
  discardLine = false;
  /** Replies gathered during this turn, written by `flush`. */
  out = "";
  /** Bytes the kernel did not take yet. */
  pending: Uint8Array | undefined;
  paused = false;
  busy = false;
  /** No more commands: the socket ends once `out` and `pending` are written. */
  closing = false;
  closed = false;
  errors = 0;
  /** NOOP, RSET, VRFY and HELP since the last accepted message (Postfix's junk command count). */
  junk = 0;
  /** BDAT without BINARYMIME: the last chunk so far ended with a CR (its LF may open the next one). */
  bdatCr = false;
  deadlineMs: number;
  dot: DotUnstuffer | undefined;
  bdatRemaining = 0;
  bdatLast = false;
  /** The reply for a BDAT chunk that is read but refused (RFC 3030 §2: its bytes must still be read). */
  bdatRefusal: SmtpReply | undefined;

  constructor(
    public socket: Socket<Session>,
    readonly id: number,
    readonly ip: string,
    readonly port: number,
    readonly relayAllowed: boolean,
    nowMs: number,
    commandTimeoutMs: number,
  ) {
    this.deadlineMs = nowMs + commandTimeoutMs;
  }

  /** In the middle of a message (graceful close lets these finish). */
  inMessage(): boolean {
    return this.phase === "data" || this.phase === "bdat" || this.busy || this.txn?.chunks !== undefined;
  }
}

/**
 * The `250` after DATA/BDAT LAST. A message to many domains is stored as one queue entry per domain,
 * and 1,000 ids would make a 15,000-octet line (RFC 5321 §4.5.3.1.5 allows 512; Python's smtplib
 * raises on it and the client retries, delivering everything twice). So the reply names the ids while
 * the line stays within 512 octets and then says how many more there are: clients that read
 * "queued as <id>" still find the first id, and the delivery log's reception records name every id,
 * each with `transaction` set to the first one (accept/_pipeline.ts).
 */
function queuedReply(ids: readonly string[]): SmtpReply {
  let text = "Ok: queued as";
  // `250 2.0.0 ` + text + CRLF, with room left for " (and 99999 more)".
  const room = MAX_REPLY_LINE_OCTETS - 12 - 18;
  let named = 0;
  for (const id of ids) {
    if (named > 0 && text.length + 1 + id.length > room) break;
    text += ` ${id}`;
    named++;
  }
  if (named < ids.length) text += ` (and ${ids.length - named} more)`;
  return reply(250, "2.0.0", text);
}

export async function startListener(
  opts: ListenerOptions,
  acceptor: Acceptor,
  deps: { log: Logger; metrics?: Metrics; clock?: Clock },
): Promise<Listener> {
  const server = new SmtpServer(opts, acceptor, deps);
  await server.start();
  return server;
}

class SmtpServer implements Listener {
  readonly name: string;
  readonly host: string;
  port = 0;
  private server: TCPSocketListener<Session> | undefined;
  private readonly sessions = new Set<Session>();
  private readonly perIp = new Map<string, number>();
  private nextId = 1;
  private sweep: ReturnType<typeof setInterval> | undefined;
  private closingPromise: Promise<void> | undefined;
  /** Sessions in a message may finish until then (shutdown grace). */
  private graceEndMs = Number.POSITIVE_INFINITY;
  private stopping = false;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly labels: { listener: string };
  private readonly gConnections: Gauge;
  private readonly cConnections: Counter;
  private readonly cMessages: Counter;
  private readonly cBytes: Counter;
  private readonly cRejections: Counter;
  private readonly handlers: SocketHandler<Session>;
  private readonly tlsOptions: { cert: string; key: string } | undefined;

  constructor(
    private readonly opts: ListenerOptions,
    private readonly acceptor: Acceptor,
    deps: { log: Logger; metrics?: Metrics; clock?: Clock },
  ) {
    this.name = opts.name;
    this.host = opts.host;
    this.clock = deps.clock ?? systemClock;
    this.log = deps.log.withTag ? deps.log.withTag("listener") : deps.log;
    this.labels = { listener: opts.name };
    const m = deps.metrics ?? new Metrics();
    this.gConnections = m.gauge("mta_listener_connections", "Open SMTP sessions");
    this.cConnections = m.counter("mta_listener_connections_total", "SMTP connections, by result");
    this.cMessages = m.counter("mta_listener_messages_total", "Messages received, by result");
    this.cBytes = m.counter("mta_listener_message_bytes_total", "Bytes of messages handed to the acceptor");
    this.cRejections = m.counter("mta_listener_rejections_total", "4xx/5xx replies to commands, by code");
    this.tlsOptions = opts.tls ? { cert: opts.tls.cert, key: opts.tls.key } : undefined;
    this.handlers = {
      open: (socket) => this.onOpen(socket),
      data: (socket, data) => this.onData(socket, data),
      drain: (socket) => this.onDrain(socket),
      close: (socket) => this.onClose(socket),
      error: (socket, err) => {
        const s = socket.data as Session | undefined;
        this.log.debug("session error", { listener: this.name, session: s?.id, error: errorMessage(err) });
      },
    };
  }

  async start(): Promise<void> {
    if (this.opts.implicitTls && !this.tlsOptions)
      throw new Error(`listener ${this.name}: implicitTls needs tls`);
    this.server = Bun.listen<Session>({
      hostname: this.opts.host,
      port: this.opts.port,
      ...(this.opts.implicitTls && this.tlsOptions ? { tls: this.tlsOptions } : {}),
      socket: this.handlers,
    });
    this.port = this.server.port;
    const shortest = Math.min(this.opts.commandTimeoutMs, this.opts.dataTimeoutMs);
    const sweepMs = Math.max(10, Math.min(1000, Math.floor(shortest / 10)));
    this.sweep = setInterval(() => this.checkTimeouts(), sweepMs);
    this.sweep.unref?.();
  }

  connections(): number {
    return this.sessions.size;
  }

  // ---- socket events -------------------------------------------------------------------------------

  private onOpen(socket: Socket<Session>): void {
    const existing = socket.data as Session | undefined;
    if (existing) {
      // The TLS side of a STARTTLS upgrade (Bun calls open after the handshake).
      this.noteTls(existing, socket);
      return;
    }
    const ip = socket.remoteAddress;
    const fromIp = this.perIp.get(ip) ?? 0;
    if (
      this.stopping ||
      this.sessions.size >= this.opts.maxConnections ||
      fromIp >= this.opts.maxConnectionsPerIp
    ) {
      this.cConnections.inc({ ...this.labels, result: "refused" });
      socket.write(formatReply(reply(421, "4.7.0", `${this.opts.hostname} Error: too many connections`)));
      socket.end();
      return;
    }
    const s = new Session(
      socket,
      this.nextId++,
      ip,
      socket.remotePort,
      anyCidrContains(this.opts.relayFrom, ip),
      this.clock.now(),
      this.opts.commandTimeoutMs,
    );
    socket.data = s;
    this.sessions.add(s);
    this.perIp.set(ip, fromIp + 1);
    this.gConnections.inc(this.labels);
    this.cConnections.inc({ ...this.labels, result: "accepted" });
    if (this.opts.implicitTls) {
      s.tlsStarted = true;
      this.noteTls(s, socket);
    }
    s.out += formatReply(reply(220, undefined, `${this.opts.hostname} ESMTP`));
    this.flush(s);
  }

  private noteTls(s: Session, socket: Socket<Session>): void {
    if (s.tls || socket !== s.socket) return;
    try {
      s.tls = { protocol: socket.getTLSVersion() ?? "TLS", cipher: socket.getCipher()?.name ?? "unknown" };
    } catch {
      s.tls = { protocol: "TLS", cipher: "unknown" };
    }
  }

  private onData(socket: Socket<Session>, chunk: Uint8Array): void {
    const s = socket.data as Session | undefined;
    // After STARTTLS the plain socket keeps receiving the encrypted bytes: they are not for us.
    if (!s || s.closed || socket !== s.socket) return;
    if (s.tlsStarted && !s.tls) this.noteTls(s, socket);
    if (s.closing) return;
    if (s.inbuf) {
      s.inbuf = concatBytes([s.inbuf.subarray(s.inOff), chunk]);
      s.inbufOwned = true;
    } else {
      s.inbuf = chunk;
      s.inbufOwned = false;
    }
    s.inOff = 0;
    if (s.inbuf.length > MAX_UNREAD_INPUT_BYTES) {
      // Reading should have been paused long before this; never let a peer grow our memory.
      this.log.warn("input not consumed; dropping session", {
        listener: this.name,
        session: s.id,
        client: s.ip,
      });
      s.closed = true;
      socket.terminate();
      this.onCloseSession(s);
      return;
    }
    this.run(s);
  }

  private onDrain(socket: Socket<Session>): void {
    const s = socket.data as Session | undefined;
    if (!s || s.closed || socket !== s.socket) return;
    this.flush(s);
    if (!s.pending) this.run(s);
  }

  private onClose(socket: Socket<Session>): void {
    const s = socket.data as Session | undefined;
    if (!s || s.closed) return;
    s.closed = true;
    this.onCloseSession(s);
  }

  private onCloseSession(s: Session): void {
    s.inbuf = undefined;
    s.dot = undefined;
    s.txn = undefined;
    this.sessions.delete(s);
    const n = (this.perIp.get(s.ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(s.ip);
    else this.perIp.set(s.ip, n);
    this.gConnections.dec(this.labels);
  }

  /** Processes what can be processed, keeps the rest, writes the replies, and sets the read pause. */
  private run(s: Session): void {
    try {
      this.process(s);
    } catch (err) {
      // A bug, not the peer's fault: tell the peer something bland and drop the session.
      this.log.error("session failed", { listener: this.name, session: s.id, error: errorMessage(err) });
      s.out += formatReply(reply(421, "4.3.0", `${this.opts.hostname} Error: local error`));
      this.endSession(s);
    }
    if (s.inbuf && s.inOff >= s.inbuf.length) s.inbuf = undefined;
    else if (s.inbuf && (!s.inbufOwned || s.inOff > 0)) {
      // Keep only the unconsumed bytes, in our own copy (the chunk belongs to the socket layer).
      s.inbuf = s.inbuf.slice(s.inOff);
      s.inOff = 0;
      s.inbufOwned = true;
    }
    this.flush(s);
  }

  private process(s: Session): void {
    const max = this.opts.maxLineBytes;
    while (!s.busy && !s.closing && !s.closed && s.pending === undefined) {
      if (s.phase === "bdat") {
        if (s.bdatRemaining > 0) {
          const buf = s.inbuf;
          if (!buf || s.inOff >= buf.length) return;
          const take = Math.min(s.bdatRemaining, buf.length - s.inOff);
          const txn = s.txn;
          if (!s.bdatRefusal && txn?.chunks) {
            const piece = buf.subarray(s.inOff, s.inOff + take);
            // Without BINARYMIME, BDAT carries the same line-structured text as DATA (RFC 3030 §3), so a
            // bare CR or LF is refused alike: the content would be relayed through DATA later.
            if (this.opts.rejectBareNewlines && txn.params.body !== "BINARYMIME") {
              const bare = findBareNewline(piece, s.bdatCr);
              s.bdatCr = bare.endsWithCr;
              if (bare.kind) {
                this.bareNewline(s, bare.kind);
                return;
              }
            }
            txn.chunks.push(piece.slice());
          }
          s.inOff += take;
          s.bdatRemaining -= take;
          s.deadlineMs = this.clock.now() + this.opts.dataTimeoutMs;
          if (s.bdatRemaining > 0) return;
        }
        this.answer(s, this.endChunk(s));
        continue;
      }
      const buf = s.inbuf;
      if (!buf || s.inOff >= buf.length) return;
      if (s.phase === "data") {
        const dot = s.dot!;
        s.inOff = dot.push(buf, s.inOff);
        s.deadlineMs = this.clock.now() + this.opts.dataTimeoutMs;
        if (dot.done) {
          this.answer(s, this.endData(s));
          continue;
        }
        if (dot.bareNewline) {
          this.bareNewline(s, dot.bareNewline);
          return;
        }
        return;
      }
      // Command or AUTH response line.
      const start = s.inOff;
      const lf = buf.indexOf(LF, start);
      if (lf === -1) {
        if (buf.length - start > max) {
          if (!s.discardLine) this.refuse(s, reply(500, "5.5.2", "Error: line too long"));
          s.discardLine = true;
          s.inOff = buf.length;
        }
        return;
      }
      s.inOff = lf + 1;
      if (s.discardLine) {
        s.discardLine = false;
        continue;
      }
      if (lf + 1 - start > max) {
        this.refuse(s, reply(500, "5.5.2", "Error: line too long"));
        continue;
      }
      const hasCr = lf > start && buf[lf - 1] === 13;
      const line = buf.subarray(start, hasCr ? lf - 1 : lf);
      if (this.opts.rejectBareNewlines) {
        if (!hasCr) {
          this.bareNewline(s, "LF");
          return;
        }
        if (line.includes(13)) {
          this.bareNewline(s, "CR");
          return;
        }
      }
      if (line.includes(0)) {
        this.refuse(s, reply(500, "5.5.2", "Error: NUL character in command"));
        continue;
      }
      let text: string;
      try {
        text = utf8.decode(line);
      } catch {
        this.refuse(s, reply(500, "5.5.2", "Error: invalid UTF-8 in command"));
        continue;
      }
      s.deadlineMs = this.clock.now() + this.opts.commandTimeoutMs;
      this.answer(s, s.phase === "auth" ? this.authResponse(s, text) : this.command(s, text));
    }
  }

  // ---- output ------------------------------------------------------------------------------------

  private send(s: Session, r: SmtpReply): void {
    s.out += formatReply(r);
  }

  /** Sends a handler's reply; 4xx/5xx ones count as errors. */
  private answer(s: Session, r: SmtpReply | undefined): void {
    if (!r) return;
    if (r.code >= 400) this.refuse(s, r);
    else this.send(s, r);
  }

  /** A 4xx/5xx reply to a command: counted; too many and the session ends (Postfix smtpd_hard_error_limit). */
  private refuse(s: Session, r: SmtpReply): void {
    this.send(s, r);
    this.countError(s, String(r.code));
  }

  private countError(s: Session, code: string): void {
    this.cRejections.inc({ ...this.labels, code });
    if (++s.errors >= this.opts.maxErrors) {
      this.send(s, reply(421, "4.7.0", `${this.opts.hostname} Error: too many errors`));
      this.endSession(s);
    }
  }

  private bareNewline(s: Session, kind: "CR" | "LF"): void {
    this.cRejections.inc({ ...this.labels, code: "521" });
    this.send(s, reply(521, "5.5.2", `${this.opts.hostname} Error: bare <${kind}> received`));
    this.endSession(s);
  }

  private endSession(s: Session): void {
    s.closing = true;
    s.inbuf = undefined;
    s.dot = undefined;
  }

  private flush(s: Session): void {
    if (s.closed) return;
    if (s.out.length > 0) {
      const text = s.out;
      s.out = "";
      if (s.pending) s.pending = concatBytes([s.pending, textEncoder.encode(text)]);
      else {
        const written = s.socket.write(text);
        if (written < 0) {
          s.closing = true;
          return;
        }
        const bytes = Buffer.byteLength(text);
        if (written < bytes) s.pending = textEncoder.encode(text).subarray(written);
      }
    } else if (s.pending) {
      const written = s.socket.write(s.pending);
      if (written < 0) {
        s.pending = undefined;
        s.closing = true;
        return;
      }
      s.pending = written >= s.pending.length ? undefined : s.pending.subarray(written);
    }
    if (s.pending === undefined && s.closing) {
      s.socket.end();
      return;
    }
    const buffered = s.inbuf ? s.inbuf.length - s.inOff : 0;
    const pause = s.pending !== undefined || (s.busy && buffered > MAX_BUFFERED_INPUT_BYTES);
    if (pause !== s.paused) {
      s.paused = pause;
      if (pause) s.socket.pause();
      else s.socket.resume();
    }
  }

  // ---- commands ----------------------------------------------------------------------------------

  private command(s: Session, line: string): SmtpReply | undefined {
    const { verb, arg } = parseCommand(line);
    switch (verb) {
      case "EHLO":
      case "HELO":
        return this.hello(s, verb, arg);
      case "MAIL":
        return this.mail(s, arg);
      case "RCPT":
        return this.rcpt(s, arg);
      case "DATA":
        return this.data(s, arg);
      case "BDAT":
        return this.bdat(s, arg);
      case "RSET":
        if (arg) return reply(501, "5.5.4", "Syntax: RSET");
        s.txn = undefined;
        return this.junk(s, reply(250, "2.0.0", "Ok"));
      case "NOOP":
        return this.junk(s, reply(250, "2.0.0", "Ok"));
      case "QUIT":
        this.endSession(s);
        return reply(221, "2.0.0", "Bye");
      case "VRFY":
        // RFC 5321 §3.5.3: 252 when we will not verify but will accept mail for the address.
        if (!arg) return reply(501, "5.5.4", "Syntax: VRFY address");
        return this.junk(
          s,
          reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"),
        );
      case "EXPN":
        return reply(502, "5.5.1", "Error: command not implemented");
      case "HELP":
        return this.junk(
          s,
          reply(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
          ),
        );
      case "STARTTLS":
        return this.starttls(s, arg);
      case "AUTH":
        return this.authStart(s, arg);
      default:
        return reply(500, "5.5.2", "Error: command not recognized");
    }
  }

  /**
   * NOOP, RSET, VRFY and HELP are answered as usual, but past `maxJunkCommands` since the last accepted
   * message each one counts as an error, so a client cannot hold a session with them forever (Postfix's
   * `smtpd_junk_command_limit`, default 100, reset after mail is accepted).
   */
  private junk(s: Session, r: SmtpReply): SmtpReply | undefined {
    if (++s.junk <= this.opts.maxJunkCommands) return r;
    this.send(s, r);
    this.countError(s, "junk");
    return undefined;
  }

  private authOffered(s: Session): boolean {
    if (this.opts.auth === "off" || !this.opts.users) return false;
    return s.tls !== undefined || (this.opts.allowPlaintextAuth === true && isLoopback(s.ip));
  }

  private hello(s: Session, verb: "EHLO" | "HELO", arg: string): SmtpReply | undefined {
    if (!arg) return reply(501, "5.5.4", `Syntax: ${verb} hostname`);
    s.helo = arg.split(/[ \t]/)[0]!;
    s.esmtp = verb === "EHLO";
    s.txn = undefined; // RFC 5321 §4.1.4: EHLO resets the state as RSET does
    if (verb === "HELO") return reply(250, undefined, this.opts.hostname);
    const lines = [
      this.opts.hostname,
      "PIPELINING",
      `SIZE ${this.opts.maxMessageBytes}`,
      "8BITMIME",
      "SMTPUTF8",
      "ENHANCEDSTATUSCODES",
    ];
    if (this.tlsOptions && !s.tlsStarted) lines.push("STARTTLS");
    if (this.authOffered(s) && !s.authUser) lines.push(`AUTH ${MECHANISMS.join(" ")}`);
    lines.push("DSN", "CHUNKING", "BINARYMIME");
    return { code: 250, lines };
  }

  private mail(s: Session, arg: string): SmtpReply | undefined {
    if (!s.helo) return reply(503, "5.5.1", "Error: send HELO/EHLO first");
    if (s.txn) return reply(503, "5.5.1", "Error: nested MAIL command");
    if (this.opts.auth === "required" && !s.authUser) return reply(530, "5.7.0", "Authentication required");
    const rest = afterPrefix(arg, "FROM:");
    if (rest === undefined) return reply(501, "5.5.4", "Syntax: MAIL FROM:<address>");
    const path = parsePath(rest, { allowNull: true, role: "sender" });
    if (!path.ok) return path.reply;
    if (path.rest && !s.esmtp) return reply(555, "5.5.4", "Parameters need EHLO");
    const p = parseEsmtpParams(path.rest, "MAIL");
    if (!p.ok) return p.reply;
    if (p.params.sizeBytes !== undefined && p.params.sizeBytes > this.opts.maxMessageBytes)
      return reply(552, "5.3.4", "Message size exceeds fixed limit");
    if (path.mailbox?.utf8 && !p.params.smtputf8)
      return reply(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8");
    s.txn = { sender: path.address, params: p.params, recipients: [], chunkBytes: 0 };
    return reply(250, "2.1.0", "Ok");
  }

  private rcpt(s: Session, arg: string): SmtpReply | undefined {
    const txn = s.txn;
    if (!txn) return reply(503, "5.5.1", "Error: need MAIL command");
    if (txn.chunks) return reply(503, "5.5.1", "Error: RCPT after BDAT");
    const rest = afterPrefix(arg, "TO:");
    if (rest === undefined) return reply(501, "5.5.4", "Syntax: RCPT TO:<address>");
    // RFC 5321 §4.5.1: `<Postmaster>` without a domain (any case) MUST be accepted, from anyone: it is
    // how a stranger reports a problem. It is the postmaster of this host, so it goes to
    // postmaster@<hostname> (route that domain to the operators' mailbox).
    const pm = /^<postmaster>(?=$|[ \t])/i.exec(rest.trimStart());
    if (pm) {
      const params = parseEsmtpParams(rest.trimStart().slice(pm[0].length).trim(), "RCPT");
      if (!params.ok) return params.reply;
      if (txn.recipients.length >= this.opts.maxRecipients)
        return reply(452, "4.5.3", "Error: too many recipients");
      const r: EnvelopeRecipient = { address: `postmaster@${this.opts.hostname}` };
      if (params.params.notify) r.notify = params.params.notify;
      if (params.params.orcpt) r.orcpt = params.params.orcpt;
      txn.recipients.push(r);
      return reply(250, "2.1.5", "Ok");
    }
    const path = parsePath(rest, { allowNull: false, role: "recipient" });
    if (!path.ok) return path.reply;
    if (path.rest && !s.esmtp) return reply(555, "5.5.4", "Parameters need EHLO");
    const p = parseEsmtpParams(path.rest, "RCPT");
    if (!p.ok) return p.reply;
    if (path.mailbox?.utf8 && !txn.params.smtputf8)
      return reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8");
    if (txn.recipients.length >= this.opts.maxRecipients)
      return reply(452, "4.5.3", "Error: too many recipients"); // RFC 5321 §4.5.3.1.10
    const relay = s.relayAllowed || Boolean(s.authUser);
    const verdict = this.acceptor.checkRecipient?.({ sender: txn.sender, recipient: path.address, relay });
    if (verdict !== undefined && verdict !== "local") return verdict;
    if (!relay && verdict !== "local") return reply(554, "5.7.1", "Relay access denied");
    const r: EnvelopeRecipient = { address: path.address };
    if (p.params.notify) r.notify = p.params.notify;
    if (p.params.orcpt) r.orcpt = p.params.orcpt;
    txn.recipients.push(r);
    return reply(250, "2.1.5", "Ok");
  }

  private data(s: Session, arg: string): SmtpReply | undefined {
    if (arg) return reply(501, "5.5.4", "Syntax: DATA");
    const txn = s.txn;
    if (!txn) return reply(503, "5.5.1", "Error: need MAIL command");
    if (txn.recipients.length === 0) return reply(554, "5.5.1", "Error: no valid recipients");
    if (txn.chunks) return reply(503, "5.5.1", "Error: DATA after BDAT");
    if (txn.params.body === "BINARYMIME") return reply(503, "5.5.1", "Error: BINARYMIME needs BDAT"); // RFC 3030 §3
    s.phase = "data";
    s.dot = new DotUnstuffer({
      maxBytes: this.opts.maxMessageBytes,
      rejectBareNewlines: this.opts.rejectBareNewlines,
    });
    s.deadlineMs = this.clock.now() + this.opts.dataTimeoutMs;
    return reply(354, undefined, "End data with <CR><LF>.<CR><LF>");
  }

  private endData(s: Session): SmtpReply | undefined {
    const dot = s.dot!;
    s.dot = undefined;
    s.phase = "command";
    if (dot.overflow) {
      s.txn = undefined;
      this.cMessages.inc({ ...this.labels, result: "too_big" });
      return reply(552, "5.3.4", "Error: message too big"); // RFC 1870 §6.3
    }
    return this.deliver(s, dot.take());
  }

  private bdat(s: Session, arg: string): SmtpReply | undefined {
    const m = /^(\d{1,15})(?:[ \t]+(LAST))?$/i.exec(arg);
    if (!m) {
      // The chunk's length is unknown, so the byte stream cannot be followed any further.
      this.endSession(s);
      return reply(501, "5.5.4", "Syntax: BDAT size [LAST]");
    }
    const size = Number(m[1]);
    const txn = s.txn;
    s.phase = "bdat";
    s.bdatRemaining = size;
    s.bdatLast = m[2] !== undefined;
    s.bdatRefusal = undefined;
    if (!txn?.chunks) s.bdatCr = false;
    s.deadlineMs = this.clock.now() + this.opts.dataTimeoutMs;
    if (!txn) s.bdatRefusal = reply(503, "5.5.1", "Error: need MAIL command");
    else if (txn.recipients.length === 0) s.bdatRefusal = reply(554, "5.5.1", "Error: no valid recipients");
    else if (txn.chunkBytes + size > this.opts.maxMessageBytes)
      s.bdatRefusal = reply(552, "5.3.4", "Error: message too big");
    else {
      txn.chunks ??= [];
      txn.chunkBytes += size;
    }
    return undefined;
  }

  private endChunk(s: Session): SmtpReply | undefined {
    s.phase = "command";
    const refusal = s.bdatRefusal;
    s.bdatRefusal = undefined;
    if (refusal) {
      // RFC 3030 §4.1: a refused chunk fails the transaction.
      s.txn = undefined;
      if (refusal.code === 552) this.cMessages.inc({ ...this.labels, result: "too_big" });
      return refusal;
    }
    const txn = s.txn!;
    if (!s.bdatLast) return reply(250, "2.0.0", `Ok: ${txn.chunkBytes} octets received`);
    if (s.bdatCr) {
      // The message ends in a CR that no LF followed.
      s.bdatCr = false;
      this.bareNewline(s, "CR");
      return undefined;
    }
    const parts = txn.chunks ?? [];
    return this.deliver(s, parts.length === 1 ? parts[0]! : concatBytes(parts));
  }

  /** Hands the message to the Acceptor; the session is busy until it answers. */
  private deliver(s: Session, body: Uint8Array): SmtpReply | undefined {
    const txn = s.txn!;
    const nowMs = this.clock.now();
    const smtputf8 = txn.params.smtputf8 === true;
    const envelope: Envelope = {
      sender: txn.sender,
      recipients: txn.recipients,
      smtputf8,
      body: txn.params.body ?? "7BIT",
      listener: this.name,
      clientAddress: s.ip,
      clientPort: s.port,
      helo: s.helo,
    };
    if (txn.params.envId !== undefined) envelope.envId = txn.params.envId;
    if (txn.params.ret !== undefined) envelope.ret = txn.params.ret;
    if (s.authUser !== undefined) envelope.authUser = s.authUser;
    if (s.tls) envelope.tls = s.tls;
    let head = receivedHeader({
      helo: s.helo,
      clientAddress: s.ip,
      hostname: this.opts.hostname,
      esmtp: s.esmtp,
      smtputf8,
      authenticated: s.authUser !== undefined,
      tls: s.tls,
      recipients: txn.recipients.map((r) => r.address),
      nowMs,
    });
    if (this.opts.submission) head += submissionHeaders(body, this.opts.hostname, nowMs);
    const message = concatBytes([textEncoder.encode(head), body]);
    s.txn = undefined;
    s.busy = true;
    s.deadlineMs = Number.POSITIVE_INFINITY;
    let settled: Promise<SmtpReply>;
    try {
      settled = this.acceptor.accept(envelope, message).then(
        (res) => {
          if (res.ok) {
            this.cMessages.inc({ ...this.labels, result: "accepted" });
            this.cBytes.inc(this.labels, message.length);
            s.junk = 0;
            return queuedReply(res.ids);
          }
          this.cMessages.inc({ ...this.labels, result: "refused" });
          return res.reply;
        },
        (err) => this.acceptFailed(s, err),
      );
    } catch (err) {
      settled = Promise.resolve(this.acceptFailed(s, err));
    }
    void settled.then((r) => {
      s.busy = false;
      if (s.closed) return;
      s.deadlineMs = this.clock.now() + this.opts.commandTimeoutMs;
      if (r.code >= 400) this.refuse(s, r);
      else this.send(s, r);
      if (this.stopping && !s.closing) this.goodbye(s);
      this.run(s);
    });
    return undefined;
  }

  private acceptFailed(s: Session, err: unknown): SmtpReply {
    this.cMessages.inc({ ...this.labels, result: "failed" });
    this.log.error("accept failed; answering 451", {
      listener: this.name,
      session: s.id,
      error: errorMessage(err),
    });
    return reply(451, "4.3.0", "Error: local error in processing");
  }

  // ---- STARTTLS and AUTH ---------------------------------------------------------------------------

  private starttls(s: Session, arg: string): SmtpReply | undefined {
    if (!this.tlsOptions) return reply(502, "5.5.1", "Error: command not implemented");
    if (s.tlsStarted) return reply(503, "5.5.1", "Error: TLS already active");
    if (arg) return reply(501, "5.5.4", "Syntax: STARTTLS");
    this.send(s, reply(220, "2.0.0", "Ready to start TLS"));
    // CVE-2011-0411: whatever the client pipelined after STARTTLS in plaintext is dropped, never executed.
    s.inbuf = undefined;
    s.inOff = 0;
    this.flush(s);
    if (s.closed || s.pending) {
      // The 220 did not fit in the socket buffer: the client is not reading; give up on it.
      s.socket.terminate();
      return undefined;
    }
    // RFC 3207 §4.2: forget everything learned before the handshake.
    s.helo = "";
    s.esmtp = false;
    s.txn = undefined;
    s.authUser = undefined;
    s.tlsStarted = true;
    const [, tlsSocket] = s.socket.upgradeTLS<Session>({
      data: s,
      tls: this.tlsOptions,
      socket: this.handlers,
    });
    s.socket = tlsSocket;
    return undefined;
  }

  private authStart(s: Session, arg: string): SmtpReply | undefined {
    if (!this.authOffered(s)) {
      if (this.opts.auth !== "off" && this.tlsOptions && !s.tls)
        return reply(530, "5.7.0", "Must issue a STARTTLS command first");
      return reply(503, "5.5.1", "Error: authentication not enabled");
    }
    if (!s.helo) return reply(503, "5.5.1", "Error: send HELO/EHLO first");
    if (s.authUser) return reply(503, "5.5.1", "Error: already authenticated");
    if (s.txn) return reply(503, "5.5.1", "Error: MAIL transaction in progress");
    const [mechText = "", initial] = arg.split(/[ \t]+/);
    const mech = mechText.toUpperCase();
    if (mech !== "PLAIN" && mech !== "LOGIN")
      return reply(504, "5.5.4", "Error: unsupported authentication mechanism");
    s.auth = { mech };
    if (initial === undefined) {
      s.phase = "auth";
      s.out += mech === "PLAIN" ? "334 \r\n" : "334 VXNlcm5hbWU6\r\n";
      return undefined;
    }
    // RFC 4954 §4: "=" is an empty initial response.
    return this.authStep(s, initial === "=" ? "" : initial);
  }

  private authResponse(s: Session, line: string): SmtpReply | undefined {
    if (line === "*") {
      s.phase = "command";
      s.auth = undefined;
      return reply(501, "5.0.0", "Authentication aborted");
    }
    return this.authStep(s, line);
  }

  private authStep(s: Session, response: string): SmtpReply | undefined {
    const a = s.auth!;
    const decoded = decodeBase64(response);
    if (decoded === undefined) {
      s.phase = "command";
      s.auth = undefined;
      return reply(501, "5.5.2", "Error: cannot decode response");
    }
    let user: string;
    let password: string;
    if (a.mech === "PLAIN") {
      const p = parsePlain(decoded);
      if (!p) {
        s.phase = "command";
        s.auth = undefined;
        return reply(501, "5.5.2", "Error: malformed PLAIN response");
      }
      ({ user, password } = p);
    } else if (a.user === undefined) {
      a.user = decoded;
      s.phase = "auth";
      s.out += "334 UGFzc3dvcmQ6\r\n";
      return undefined;
    } else {
      user = a.user;
      password = decoded;
    }
    s.phase = "command";
    s.auth = undefined;
    s.busy = true;
    s.deadlineMs = Number.POSITIVE_INFINITY;
    void verifyUser(this.opts.users ?? {}, user, password).then((ok) => {
      s.busy = false;
      if (s.closed) return;
      s.deadlineMs = this.clock.now() + this.opts.commandTimeoutMs;
      if (ok) {
        s.authUser = user;
        this.send(s, reply(235, "2.7.0", "Authentication successful"));
      } else {
        this.log.info("authentication failed", { listener: this.name, session: s.id, client: s.ip, user });
        this.refuse(s, reply(535, "5.7.8", "Error: authentication failed"));
      }
      if (this.stopping && !s.closing) this.goodbye(s);
      this.run(s);
    });
    return undefined;
  }

  // ---- timeouts and closing ------------------------------------------------------------------------

  private checkTimeouts(): void {
    const now = this.clock.now();
    for (const s of this.sessions) {
      if (s.closing || now < s.deadlineMs) continue;
      this.log.debug("session timed out", { listener: this.name, session: s.id, phase: s.phase });
      this.send(s, reply(421, "4.4.2", `${this.opts.hostname} Error: timeout exceeded`));
      this.endSession(s);
      this.flush(s);
      // A client that does not read cannot be told; do not wait for it.
      if (s.pending) s.socket.terminate();
    }
  }

  private goodbye(s: Session): void {
    if (s.closing || s.closed) return;
    this.send(s, reply(421, "4.3.2", `${this.opts.hostname} Service shutting down`));
    this.endSession(s);
    this.flush(s);
  }

  /** A second call while closing can only shorten the grace (a second SIGTERM ends it at once). */
  close(opts: { graceMs?: number } = {}): Promise<void> {
    const end = Date.now() + (opts.graceMs ?? 0);
    this.graceEndMs = Math.min(this.graceEndMs, end);
    this.closingPromise ??= this.shutdown();
    return this.closingPromise;
  }

  private async shutdown(): Promise<void> {
    this.stopping = true;
    this.server?.stop(false);
    for (const s of this.sessions) if (!s.inMessage()) this.goodbye(s);
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    while (Date.now() < this.graceEndMs && [...this.sessions].some((s) => s.inMessage() && !s.closing))
      await sleep(10);
    // Sessions still receiving a message get 421 now; one whose message is with the Acceptor is answered
    // when it returns (its reply is followed by 421), so nothing acknowledged is lost.
    for (const s of this.sessions) if (!s.busy) this.goodbye(s);
    while ([...this.sessions].some((s) => s.busy)) await sleep(10);
    const hardEnd = Date.now() + 2000;
    while (this.sessions.size > 0 && Date.now() < hardEnd) await sleep(10);
    for (const s of this.sessions) s.socket.terminate();
    if (this.sweep) clearInterval(this.sweep);
    this.server?.stop(true);
  }
}
