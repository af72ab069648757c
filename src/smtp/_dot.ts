/**
 * The DATA terminator and dot transparency (RFC 5321 §4.5.2), both directions.
 *
 * Owns: `dotStuff` (client: body -> wire bytes with `.CRLF`), `DotUnstuffer` (server: streaming wire bytes ->
 * body, size enforcement, bare CR/LF detection).
 * Invariant: only `<CRLF>.<CRLF>` (or `.<CRLF>` as the very first line) ends the data; a bare LF or a bare
 * CR never starts or ends a line, so `<LF>.<LF>` and `<LF>.<CRLF>` cannot smuggle a second message.
 */
import { CR, DOT, LF } from "../lib/index.ts";

/**
 * Client side: doubles a dot at the start of every line, ends the body with CRLF if it does not, and
 * appends the terminating `.CRLF`. One allocation of the exact output size.
 *
 * A "line" starts after an LF and also after a bare CR (one not followed by LF): a next hop that takes
 * a bare CR for a line end must never see `<CR>.<CR>` or `<CR>.<CRLF>` as the end of the data (SMTP
 * smuggling). mta stores no bare CR in line-structured mail (accept/_pipeline.ts normalizes them), so this
 * only matters for mail that reached the spool some other way.
 */
export function dotStuff(body: Uint8Array): Uint8Array {
  const n = body.length;
  let dots = n > 0 && body[0] === DOT ? 1 : 0;
  for (let i = 0; i + 1 < n; i++) {
    const b = body[i];
    if ((b === LF || (b === CR && body[i + 1] !== LF)) && body[i + 1] === DOT) dots++;
  }
  const endsWithCrlf = n >= 2 && body[n - 2] === CR && body[n - 1] === LF;
  const tail = endsWithCrlf || n === 0 ? 3 : 5;
  const out = new Uint8Array(n + dots + tail);
  let o = 0;
  let from = 0;
  if (n > 0 && body[0] === DOT) out[o++] = DOT;
  for (let i = 0; i + 1 < n; i++) {
    const b = body[i];
    if ((b === LF || (b === CR && body[i + 1] !== LF)) && body[i + 1] === DOT) {
      out.set(body.subarray(from, i + 1), o);
      o += i + 1 - from;
      out[o++] = DOT;
      from = i + 1;
    }
  }
  out.set(body.subarray(from), o);
  o += n - from;
  if (tail === 5) {
    out[o++] = CR;
    out[o++] = LF;
  }
  out[o++] = DOT;
  out[o++] = CR;
  out[o++] = LF;
  return out;
}

/**
 * The first bare CR or bare LF in `chunk` (a CR not followed by LF, an LF not preceded by CR), for
 * content that arrives in pieces (BDAT chunks): `prevCr` says the previous piece ended with a CR, and
 * `endsWithCr` that this one does (whether it is bare is decided by the next piece, or by the end).
 */
export function findBareNewline(
  chunk: Uint8Array,
  prevCr: boolean,
): { kind?: "CR" | "LF"; endsWithCr: boolean } {
  let cr = prevCr;
  for (let i = 0; i < chunk.length; i++) {
    const b = chunk[i];
    if (cr && b !== LF) return { kind: "CR", endsWithCr: false };
    if (b === LF && !cr) return { kind: "LF", endsWithCr: false };
    cr = b === CR;
  }
  return { endsWithCr: cr };
}

enum St {
  /** After CRLF (or at the start): a dot here is transparency or the terminator. */
  LineStart,
  /** Inside a line. */
  Mid,
  /** Inside a line, just after a CR. */
  Cr,
  /** A dot at the start of a line was removed. */
  Dot,
  /** `.` CR at the start of a line: LF ends the data. */
  DotCr,
}

export interface DotUnstufferOptions {
  /** Bytes of message content kept at most; beyond it content is dropped but the terminator still sought. */
  maxBytes: number;
  /** Stop at a bare CR or bare LF (Postfix `smtpd_forbid_bare_newline`); else keep them as content. */
  rejectBareNewlines: boolean;
}

/**
 * Server side, streaming: feed the bytes that follow `354` with `push`; it returns how many bytes of the
 * chunk belong to the data (the rest is the next pipelined command). When `done`, `take()` returns the
 * message without the terminator (its last line keeps its CRLF). Holds no more than `maxBytes` of
 * content plus one chunk.
 */
export class DotUnstuffer {
  /** The terminator has been seen. */
  done = false;
  /** Content bytes seen (counted even past `maxBytes`). */
  bytes = 0;
  /** Set when content exceeded `maxBytes` (the caller answers `552 5.3.4` at the end). */
  overflow = false;
  /** Set (and `push` stops) at a bare CR or LF when `rejectBareNewlines`. */
  bareNewline: "CR" | "LF" | undefined;
  private st: St = St.LineStart;
  private parts: Uint8Array[] = [];
  private kept = 0;

  constructor(private readonly opts: DotUnstufferOptions) {}

  private emit(chunk: Uint8Array, from: number, to: number): void {
    if (to <= from) return;
    this.bytes += to - from;
    if (this.overflow) return;
    if (this.kept + (to - from) > this.opts.maxBytes) {
      this.overflow = true;
      this.parts = [];
      return;
    }
    this.parts.push(chunk.slice(from, to));
    this.kept += to - from;
  }

  private emitByte(b: number): void {
    this.emit(Uint8Array.of(b), 0, 1);
  }

  /** Consumes bytes from `chunk[start..]`; returns the index just past the last byte consumed. */
  push(chunk: Uint8Array, start = 0): number {
    const n = chunk.length;
    const strict = this.opts.rejectBareNewlines;
    let i = start;
    // `from` marks the start of a pending span of content that is copied out in one piece.
    let from = i;
    while (i < n && !this.done && this.bareNewline === undefined) {
      switch (this.st) {
        case St.LineStart: {
          if (chunk[i] === DOT) {
            this.emit(chunk, from, i);
            i++;
            from = i;
            this.st = St.Dot;
          } else this.st = St.Mid;
          break;
        }
        case St.Dot: {
          const b = chunk[i]!;
          if (b === CR) {
            this.emit(chunk, from, i);
            i++;
            from = i;
            this.st = St.DotCr;
          } else {
            // RFC 5321 §4.5.2: the first dot is deleted whatever follows it.
            this.st = St.Mid;
          }
          break;
        }
        case St.DotCr: {
          if (chunk[i] === LF) {
            i++;
            from = i;
            this.done = true;
          } else if (strict) {
            this.bareNewline = "CR";
          } else {
            // ".<CR>x": the dot was removed; the CR is content.
            this.emitByte(CR);
            this.st = St.Mid;
          }
          break;
        }
        case St.Cr: {
          if (chunk[i] === LF) {
            i++;
            this.st = St.LineStart;
          } else if (strict) {
            this.bareNewline = "CR";
          } else this.st = St.Mid;
          break;
        }
        case St.Mid: {
          const cr = chunk.indexOf(CR, i);
          if (strict) {
            const lf = chunk.indexOf(LF, i);
            if (lf !== -1 && (cr === -1 || lf < cr)) {
              this.emit(chunk, from, lf);
              from = lf;
              i = lf;
              this.bareNewline = "LF";
              break;
            }
          }
          if (cr === -1) {
            i = n;
          } else {
            i = cr + 1;
            this.st = St.Cr;
          }
          break;
        }
      }
    }
    // After the terminator, content before it was already emitted when the dot was seen.
    if (!this.done) this.emit(chunk, from, i);
    return i;
  }

  /** The message content (valid once `done`, empty when it overflowed). */
  take(): Uint8Array {
    const out = new Uint8Array(this.kept);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    this.parts = [];
    this.kept = 0;
    return out;
  }
}
