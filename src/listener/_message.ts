/**
 * The end of a mail transaction: DATA and BDAT, and the message handed to the Acceptor.
 *
 * Owns: the DATA command and its end (RFC 1870 size overflow), BDAT chunks (RFC 3030: size, LAST,
 * refused chunks whose bytes are still read), the envelope and our `Received:`/submission headers in
 * front of the message, the Acceptor's answer as the reply, and the `250 ... queued as` line.
 * Does not own: reading the bytes (_input.ts), what "accepted" means (the Acceptor), the headers'
 * text (_headers.ts).
 * Invariants:
 * - `250` after DATA/BDAT LAST is sent only when the Acceptor returned `ok: true`;
 * - while the Acceptor runs the session is busy (no input is processed, no deadline runs);
 * - every reply line is at most 512 octets (`queuedReply` counts the ids it cannot name).
 */
import { concatBytes, errorMessage, textEncoder } from "../lib/index.ts";
import { DotUnstuffer, MAX_REPLY_LINE_OCTETS, reply, type SmtpReply } from "../smtp/index.ts";
import { receivedHeader, submissionHeaders } from "./_headers.ts";
import {
  bareNewline,
  endSession,
  goodbye,
  type ListenerContext,
  refuse,
  type Session,
  send,
} from "./_session.ts";
import type { Envelope } from "./_types.ts";

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

export function data(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  if (arg) return reply(501, "5.5.4", "Syntax: DATA");
  const txn = s.txn;
  if (!txn) return reply(503, "5.5.1", "Error: need MAIL command");
  if (txn.recipients.length === 0) return reply(554, "5.5.1", "Error: no valid recipients");
  if (txn.chunks) return reply(503, "5.5.1", "Error: DATA after BDAT");
  if (txn.params.body === "BINARYMIME") return reply(503, "5.5.1", "Error: BINARYMIME needs BDAT"); // RFC 3030 §3
  s.phase = "data";
  s.dot = new DotUnstuffer({
    maxBytes: ctx.opts.maxMessageBytes,
    rejectBareNewlines: ctx.opts.rejectBareNewlines,
  });
  s.deadlineMs = ctx.clock.now() + ctx.opts.dataTimeoutMs;
  return reply(354, undefined, "End data with <CR><LF>.<CR><LF>");
}

export function endData(ctx: ListenerContext, s: Session): SmtpReply | undefined {
  const dot = s.dot!;
  s.dot = undefined;
  s.phase = "command";
  if (dot.overflow) {
    s.txn = undefined;
    ctx.cMessages.inc({ ...ctx.labels, result: "too_big" });
    return reply(552, "5.3.4", "Error: message too big"); // RFC 1870 §6.3
  }
  return deliver(ctx, s, dot.take());
}

export function bdat(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  const m = /^(\d{1,15})(?:[ \t]+(LAST))?$/i.exec(arg);
  if (!m) {
    // The chunk's length is unknown, so the byte stream cannot be followed any further.
    endSession(s);
    return reply(501, "5.5.4", "Syntax: BDAT size [LAST]");
  }
  const size = Number(m[1]);
  const txn = s.txn;
  s.phase = "bdat";
  s.bdatRemaining = size;
  s.bdatLast = m[2] !== undefined;
  s.bdatRefusal = undefined;
  if (!txn?.chunks) s.bdatCr = false;
  s.deadlineMs = ctx.clock.now() + ctx.opts.dataTimeoutMs;
  if (!txn) s.bdatRefusal = reply(503, "5.5.1", "Error: need MAIL command");
  else if (txn.recipients.length === 0) s.bdatRefusal = reply(554, "5.5.1", "Error: no valid recipients");
  else if (txn.chunkBytes + size > ctx.opts.maxMessageBytes)
    s.bdatRefusal = reply(552, "5.3.4", "Error: message too big");
  else {
    txn.chunks ??= [];
    txn.chunkBytes += size;
  }
  return undefined;
}

export function endChunk(ctx: ListenerContext, s: Session): SmtpReply | undefined {
  s.phase = "command";
  const refusal = s.bdatRefusal;
  s.bdatRefusal = undefined;
  if (refusal) {
    // RFC 3030 §4.1: a refused chunk fails the transaction.
    s.txn = undefined;
    if (refusal.code === 552) ctx.cMessages.inc({ ...ctx.labels, result: "too_big" });
    return refusal;
  }
  const txn = s.txn!;
  if (!s.bdatLast) return reply(250, "2.0.0", `Ok: ${txn.chunkBytes} octets received`);
  if (s.bdatCr) {
    // The message ends in a CR that no LF followed.
    s.bdatCr = false;
    bareNewline(ctx, s, "CR");
    return undefined;
  }
  const parts = txn.chunks ?? [];
  return deliver(ctx, s, parts.length === 1 ? parts[0]! : concatBytes(parts));
}

/** Hands the message to the Acceptor; the session is busy until it answers. */
function deliver(ctx: ListenerContext, s: Session, body: Uint8Array): SmtpReply | undefined {
  const opts = ctx.opts;
  const txn = s.txn!;
  const nowMs = ctx.clock.now();
  const smtputf8 = txn.params.smtputf8 === true;
  const envelope: Envelope = {
    sender: txn.sender,
    recipients: txn.recipients,
    smtputf8,
    body: txn.params.body ?? "7BIT",
    listener: ctx.name,
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
    hostname: opts.hostname,
    esmtp: s.esmtp,
    smtputf8,
    authenticated: s.authUser !== undefined,
    tls: s.tls,
    recipients: txn.recipients.map((r) => r.address),
    nowMs,
  });
  if (opts.submission) head += submissionHeaders(body, opts.hostname, nowMs);
  const message = concatBytes([textEncoder.encode(head), body]);
  s.txn = undefined;
  s.busy = true;
  s.deadlineMs = Number.POSITIVE_INFINITY;
  let settled: Promise<SmtpReply>;
  try {
    settled = ctx.acceptor.accept(envelope, message).then(
      (res) => {
        if (res.ok) {
          ctx.cMessages.inc({ ...ctx.labels, result: "accepted" });
          ctx.cBytes.inc(ctx.labels, message.length);
          s.junk = 0;
          return queuedReply(res.ids);
        }
        ctx.cMessages.inc({ ...ctx.labels, result: "refused" });
        return res.reply;
      },
      (err) => acceptFailed(ctx, s, err),
    );
  } catch (err) {
    settled = Promise.resolve(acceptFailed(ctx, s, err));
  }
  void settled.then((r) => {
    s.busy = false;
    if (s.closed) return;
    s.deadlineMs = ctx.clock.now() + opts.commandTimeoutMs;
    if (r.code >= 400) refuse(ctx, s, r);
    else send(s, r);
    if (ctx.stopping && !s.closing) goodbye(ctx, s);
    ctx.resume(s);
  });
  return undefined;
}

function acceptFailed(ctx: ListenerContext, s: Session, err: unknown): SmtpReply {
  ctx.cMessages.inc({ ...ctx.labels, result: "failed" });
  ctx.log.error("accept failed; answering 451", {
    listener: ctx.name,
    session: s.id,
    error: errorMessage(err),
  });
  return reply(451, "4.3.0", "Error: local error in processing");
}
