/**
 * Inbound SMTP over `Bun.listen`: the listener and the life of its connections.
 *
 * Owns: binding the socket (plain, or TLS from the first byte), accepting connections under the
 * per-listener and per-IP limits, creating a `Session` per connection and dispatching the socket's
 * open/data/drain/close events to it (no per-session async loop), the counters and gauge of
 * connections and messages, the one timeout sweep, and graceful close.
 * Does not own: a session's state and output (_session.ts), reading its input (_input.ts), what
 * commands answer (_commands.ts, _message.ts, _auth.ts, _tls.ts), what "accepted" means (the
 * `Acceptor`, in app/), protocol syntax (smtp/).
 *
 * Implementation summary:
 * - Input arrives in `onData`, is appended to the session's `inbuf`, and `run` (_input.ts) consumes
 *   as much of it as the session's phase allows; replies gathered in one turn go out in one `write`.
 * - While the Acceptor or a password check runs, the session is `busy`: input is kept, not processed;
 *   when it answers, `resume` runs the session again.
 * - After `STARTTLS` the plain socket's handlers keep receiving the encrypted bytes (a Bun trait, bun
 *   issue 26297): every handler ignores a socket that is not the session's current one.
 * - Timeouts: one sweep timer per listener compares each session's deadline with the clock.
 * Invariants: unprocessed input never exceeds `MAX_UNREAD_INPUT_BYTES` (reading is paused long
 * before; past it the session is dropped); a session in a message may finish until the shutdown
 * grace ends, and one whose message is with the Acceptor is answered before its 421.
 */
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import { anyCidrContains, type Clock, concatBytes, errorMessage, systemClock } from "../lib/index.ts";
import { type Counter, type Gauge, type Logger, Metrics } from "../observe/index.ts";
import { formatReply, reply } from "../smtp/index.ts";
import { run } from "./_input.ts";
import { endSession, flush, goodbye, type ListenerContext, Session, send } from "./_session.ts";
import { noteTls } from "./_tls.ts";
import type { Acceptor, Listener, ListenerOptions } from "./_types.ts";

/** Hard cap on unprocessed input (pausing keeps it far below; this only guards against a broken pause). */
const MAX_UNREAD_INPUT_BYTES = 4 * 1024 * 1024;

export async function startListener(
  opts: ListenerOptions,
  acceptor: Acceptor,
  deps: { log: Logger; metrics?: Metrics; clock?: Clock },
): Promise<Listener> {
  const server = new SmtpServer(opts, acceptor, deps);
  await server.start();
  return server;
}

class SmtpServer implements Listener, ListenerContext {
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
  /** Shutting down (see ListenerContext). */
  stopping = false;
  readonly clock: Clock;
  readonly log: Logger;
  readonly labels: { listener: string };
  private readonly gConnections: Gauge;
  private readonly cConnections: Counter;
  readonly cMessages: Counter;
  readonly cBytes: Counter;
  readonly cRejections: Counter;
  readonly handlers: SocketHandler<Session>;
  readonly tlsOptions: { cert: string; key: string } | undefined;

  constructor(
    readonly opts: ListenerOptions,
    readonly acceptor: Acceptor,
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
      noteTls(existing, socket);
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
      noteTls(s, socket);
    }
    s.out += formatReply(reply(220, undefined, `${this.opts.hostname} ESMTP`));
    flush(s);
  }

  private onData(socket: Socket<Session>, chunk: Uint8Array): void {
    const s = socket.data as Session | undefined;
    // After STARTTLS the plain socket keeps receiving the encrypted bytes: they are not for us.
    if (!s || s.closed || socket !== s.socket) return;
    if (s.tlsStarted && !s.tls) noteTls(s, socket);
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
    run(this, s);
  }

  private onDrain(socket: Socket<Session>): void {
    const s = socket.data as Session | undefined;
    if (!s || s.closed || socket !== s.socket) return;
    flush(s);
    if (!s.pending) run(this, s);
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

  /** A session whose Acceptor or password check answered: go on with its input. */
  resume(s: Session): void {
    run(this, s);
  }

  // ---- timeouts and closing ------------------------------------------------------------------------

  private checkTimeouts(): void {
    const now = this.clock.now();
    for (const s of this.sessions) {
      if (s.closing || now < s.deadlineMs) continue;
      this.log.debug("session timed out", { listener: this.name, session: s.id, phase: s.phase });
      send(s, reply(421, "4.4.2", `${this.opts.hostname} Error: timeout exceeded`));
      endSession(s);
      flush(s);
      // A client that does not read cannot be told; do not wait for it.
      if (s.pending) s.socket.terminate();
    }
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
    for (const s of this.sessions) if (!s.inMessage()) goodbye(this, s);
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    while (Date.now() < this.graceEndMs && [...this.sessions].some((s) => s.inMessage() && !s.closing))
      await sleep(10);
    // Sessions still receiving a message get 421 now; one whose message is with the Acceptor is answered
    // when it returns (its reply is followed by 421), so nothing acknowledged is lost.
    for (const s of this.sessions) if (!s.busy) goodbye(this, s);
    while ([...this.sessions].some((s) => s.busy)) await sleep(10);
    const hardEnd = Date.now() + 2000;
    while (this.sessions.size > 0 && Date.now() < hardEnd) await sleep(10);
    for (const s of this.sessions) s.socket.terminate();
    if (this.sweep) clearInterval(this.sweep);
    this.server?.stop(true);
  }
}
