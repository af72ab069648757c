/**
 * One inbound SMTP session's state, what its handlers share, and its output.
 *
 * Owns: the `Session` object (phase, HELO, TLS, AUTH, the transaction, unprocessed input, pending
 * output, the busy/paused/closing flags, the deadline), `ListenerContext` (what every handler of the
 * listener reads: options, Acceptor, clock, log, counters, the socket handlers, whether it is
 * stopping), and writing replies: gathering them, counting errors, writing with backpressure, pausing
 * reading, ending a session.
 * Does not own: reading input (_input.ts), what a command answers (_commands.ts, _message.ts,
 * _auth.ts, _tls.ts), accepting connections and closing the listener (_listener.ts).
 * Invariants:
 * - replies gathered in one turn are written in one `write`, in order;
 * - while `pending` holds bytes the kernel did not take, reading is paused and `flush` writes nothing
 *   new past them: a client that does not read cannot grow our buffers;
 * - a closing session's socket ends only after everything gathered has been written.
 */
import type { Socket, SocketHandler } from "bun";
import { type Clock, concatBytes, textEncoder } from "../lib/index.ts";
import type { Counter, Logger } from "../observe/index.ts";
import { type DotUnstuffer, type EsmtpParams, formatReply, reply, type SmtpReply } from "../smtp/index.ts";
import type { Acceptor, EnvelopeRecipient, ListenerOptions } from "./_types.ts";

export type Phase = "command" | "data" | "bdat" | "auth";

export interface Transaction {
  sender: string;
  params: EsmtpParams;
  recipients: EnvelopeRecipient[];
  /** BDAT chunks received so far (RFC 3030); undefined until the first BDAT. */
  chunks?: Uint8Array[];
  chunkBytes: number;
}

export interface AuthExchange {
  mech: "PLAIN" | "LOGIN";
  user?: string;
}

/** Above this many unprocessed input bytes the socket is paused while the session is busy. */
const MAX_BUFFERED_INPUT_BYTES = 64 * 1024;

export class Session {
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

/** What every handler of one listener reads; the listener (_listener.ts) is the one implementation. */
export interface ListenerContext {
  readonly name: string;
  readonly opts: ListenerOptions;
  readonly acceptor: Acceptor;
  readonly clock: Clock;
  readonly log: Logger;
  readonly labels: { listener: string };
  readonly cMessages: Counter;
  readonly cBytes: Counter;
  readonly cRejections: Counter;
  /** The socket handlers, for the TLS socket of a STARTTLS upgrade. */
  readonly handlers: SocketHandler<Session>;
  /** PEM contents; enables STARTTLS. */
  readonly tlsOptions: { cert: string; key: string } | undefined;
  /** Shutting down: a session that finishes an exchange with the Acceptor or AUTH is told goodbye. */
  readonly stopping: boolean;
  /** Goes on with a session after its Acceptor or password check answered (processes, flushes). */
  resume(s: Session): void;
}

export function send(s: Session, r: SmtpReply): void {
  s.out += formatReply(r);
}

/** Sends a handler's reply; 4xx/5xx ones count as errors. */
export function answer(ctx: ListenerContext, s: Session, r: SmtpReply | undefined): void {
  if (!r) return;
  if (r.code >= 400) refuse(ctx, s, r);
  else send(s, r);
}

/** A 4xx/5xx reply to a command: counted; too many and the session ends (Postfix smtpd_hard_error_limit). */
export function refuse(ctx: ListenerContext, s: Session, r: SmtpReply): void {
  send(s, r);
  countError(ctx, s, String(r.code));
}

export function countError(ctx: ListenerContext, s: Session, code: string): void {
  ctx.cRejections.inc({ ...ctx.labels, code });
  if (++s.errors >= ctx.opts.maxErrors) {
    send(s, reply(421, "4.7.0", `${ctx.opts.hostname} Error: too many errors`));
    endSession(s);
  }
}

export function bareNewline(ctx: ListenerContext, s: Session, kind: "CR" | "LF"): void {
  ctx.cRejections.inc({ ...ctx.labels, code: "521" });
  send(s, reply(521, "5.5.2", `${ctx.opts.hostname} Error: bare <${kind}> received`));
  endSession(s);
}

export function endSession(s: Session): void {
  s.closing = true;
  s.inbuf = undefined;
  s.dot = undefined;
}

export function flush(s: Session): void {
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

/** `421` for a session the listener is closing, unless it is ending already. */
export function goodbye(ctx: ListenerContext, s: Session): void {
  if (s.closing || s.closed) return;
  send(s, reply(421, "4.3.2", `${ctx.opts.hostname} Service shutting down`));
  endSession(s);
  flush(s);
}
