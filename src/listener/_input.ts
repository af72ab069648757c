/**
 * Reading a session's input as far as its phase allows.
 *
 * Owns: `run` (process, keep the unconsumed bytes in our own copy, write the replies) and the input
 * loop: complete command and AUTH response lines (length, bare CR/LF, NUL and UTF-8 checks; pipelined
 * commands are answered in order), DATA bytes through the streaming `DotUnstuffer`, and the counted
 * bytes of a BDAT chunk (bare CR/LF checked without BINARYMIME).
 * Does not own: what a line means (_commands.ts, _auth.ts), what ends a message (_message.ts).
 * Invariants:
 * - nothing is processed while the session is busy (its Acceptor or a password check runs), closing,
 *   closed, or has output the kernel did not take: the bytes stay in `inbuf`;
 * - only `<CRLF>.<CRLF>` ends DATA; with `rejectBareNewlines` a bare CR or LF anywhere (commands,
 *   DATA, BDAT without BINARYMIME) gets `521 5.5.2` and the session ends (as Postfix's
 *   `smtpd_forbid_bare_newline`);
 * - a command line longer than `maxLineBytes` is refused once and the rest of it dropped.
 */
import { errorMessage, LF } from "../lib/index.ts";
import { findBareNewline, formatReply, reply } from "../smtp/index.ts";
import { authResponse } from "./_auth.ts";
import { command } from "./_commands.ts";
import { endChunk, endData } from "./_message.ts";
import {
  answer,
  bareNewline,
  endSession,
  flush,
  type ListenerContext,
  refuse,
  type Session,
} from "./_session.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Processes what can be processed, keeps the rest, writes the replies, and sets the read pause. */
export function run(ctx: ListenerContext, s: Session): void {
  try {
    consume(ctx, s);
  } catch (err) {
    // A bug, not the peer's fault: tell the peer something bland and drop the session.
    ctx.log.error("session failed", { listener: ctx.name, session: s.id, error: errorMessage(err) });
    s.out += formatReply(reply(421, "4.3.0", `${ctx.opts.hostname} Error: local error`));
    endSession(s);
  }
  if (s.inbuf && s.inOff >= s.inbuf.length) s.inbuf = undefined;
  else if (s.inbuf && (!s.inbufOwned || s.inOff > 0)) {
    // Keep only the unconsumed bytes, in our own copy (the chunk belongs to the socket layer).
    s.inbuf = s.inbuf.slice(s.inOff);
    s.inOff = 0;
    s.inbufOwned = true;
  }
  flush(s);
}

function consume(ctx: ListenerContext, s: Session): void {
  const opts = ctx.opts;
  const max = opts.maxLineBytes;
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
          if (opts.rejectBareNewlines && txn.params.body !== "BINARYMIME") {
            const bare = findBareNewline(piece, s.bdatCr);
            s.bdatCr = bare.endsWithCr;
            if (bare.kind) {
              bareNewline(ctx, s, bare.kind);
              return;
            }
          }
          txn.chunks.push(piece.slice());
        }
        s.inOff += take;
        s.bdatRemaining -= take;
        s.deadlineMs = ctx.clock.now() + opts.dataTimeoutMs;
        if (s.bdatRemaining > 0) return;
      }
      answer(ctx, s, endChunk(ctx, s));
      continue;
    }
    const buf = s.inbuf;
    if (!buf || s.inOff >= buf.length) return;
    if (s.phase === "data") {
      const dot = s.dot!;
      s.inOff = dot.push(buf, s.inOff);
      s.deadlineMs = ctx.clock.now() + opts.dataTimeoutMs;
      if (dot.done) {
        answer(ctx, s, endData(ctx, s));
        continue;
      }
      if (dot.bareNewline) {
        bareNewline(ctx, s, dot.bareNewline);
        return;
      }
      return;
    }
    // Command or AUTH response line.
    const start = s.inOff;
    const lf = buf.indexOf(LF, start);
    if (lf === -1) {
      if (buf.length - start > max) {
        if (!s.discardLine) refuse(ctx, s, reply(500, "5.5.2", "Error: line too long"));
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
      refuse(ctx, s, reply(500, "5.5.2", "Error: line too long"));
      continue;
    }
    const hasCr = lf > start && buf[lf - 1] === 13;
    const line = buf.subarray(start, hasCr ? lf - 1 : lf);
    if (opts.rejectBareNewlines) {
      if (!hasCr) {
        bareNewline(ctx, s, "LF");
        return;
      }
      if (line.includes(13)) {
        bareNewline(ctx, s, "CR");
        return;
      }
    }
    if (line.includes(0)) {
      refuse(ctx, s, reply(500, "5.5.2", "Error: NUL character in command"));
      continue;
    }
    let text: string;
    try {
      text = utf8.decode(line);
    } catch {
      refuse(ctx, s, reply(500, "5.5.2", "Error: invalid UTF-8 in command"));
      continue;
    }
    s.deadlineMs = ctx.clock.now() + opts.commandTimeoutMs;
    answer(ctx, s, s.phase === "auth" ? authResponse(ctx, s, text) : command(ctx, s, text));
  }
}
