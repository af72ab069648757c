/**
 * DKIM canonicalization (RFC 6376 §3.4) over message bytes.
 *
 * Owns: splitting a message into header fields and body, the simple and relaxed header
 * canonicalizations, and body hashing for both body canonicalizations.
 * Does not own: which headers are signed, keys, the DKIM-Signature tag list (signer.ts).
 * Invariants: the input bytes are never modified; body hashing makes one pass and copies at most a
 * bounded scratch buffer (simple: zero copies, relaxed: only lines that whitespace rules change).
 * A bare LF is accepted as a line end and canonicalized as CRLF, like every common verifier does.
 */
import { createHash, type Hash } from "node:crypto";
import { CR, LF, latin1Decoder } from "../lib/index.ts";

export type Canon = "simple" | "relaxed";

export interface HeaderField {
  /** Field name as written (case preserved). */
  name: string;
  /** Lowercased name, for matching. */
  key: string;
  /** The whole field as Latin-1 text, from the name to and including its final line end. */
  raw: string;
}

export interface ParsedMessage {
  fields: HeaderField[];
  /** Offset of the first body byte (after the empty line), or `bytes.length` when there is no body. */
  bodyOffset: number;
  /** The line end the message uses ("\r\n", or "\n" for a bare-LF message). */
  eol: "\r\n" | "\n";
}

/** Splits the header section into fields; continuation lines (starting with SP or HTAB) join the field above. */
export function parseMessage(bytes: Uint8Array): ParsedMessage {
  const fields: HeaderField[] = [];
  let pos = 0;
  let eol: "\r\n" | "\n" = "\r\n";
  const firstLf = bytes.indexOf(LF);
  if (firstLf > 0 && bytes[firstLf - 1] !== CR) eol = "\n";
  let current: { start: number; end: number } | undefined;
  const flush = () => {
    if (!current) return;
    const raw = latin1Decoder.decode(bytes.subarray(current.start, current.end));
    const colon = raw.indexOf(":");
    const name = (colon >= 0 ? raw.slice(0, colon) : raw).replace(/[ \t]+$/, "");
    fields.push({ name, key: name.toLowerCase(), raw });
    current = undefined;
  };
  while (pos < bytes.length) {
    const lf = bytes.indexOf(LF, pos);
    const lineEnd = lf < 0 ? bytes.length : lf + 1;
    const contentEnd = lf < 0 ? bytes.length : lf > pos && bytes[lf - 1] === CR ? lf - 1 : lf;
    if (contentEnd === pos) {
      // The empty line that separates the header from the body.
      flush();
      return { fields, bodyOffset: lineEnd, eol };
    }
    const first = bytes[pos];
    if ((first === 0x20 || first === 0x09) && current) current.end = lineEnd;
    else {
      flush();
      current = { start: pos, end: lineEnd };
    }
    pos = lineEnd;
  }
  flush();
  return { fields, bodyOffset: bytes.length, eol };
}

/** RFC 6376 §3.4.2: lowercase name, unfold, collapse WSP runs, trim around the colon and at the end. */
export function relaxedHeader(raw: string): string {
  const colon = raw.indexOf(":");
  const name = raw
    .slice(0, colon)
    .replace(/[ \t]+$/, "")
    .toLowerCase();
  const value = raw
    .slice(colon + 1)
    .replace(/\r?\n/g, "")
    .replace(/[ \t]+/g, " ")
    .replace(/^ | $/g, "");
  return `${name}:${value}\r\n`;
}

/** RFC 6376 §3.4.1: the field exactly as it is, with its line end made CRLF. */
export function simpleHeader(raw: string): string {
  const unfolded = raw.replace(/\r?\n/g, "\r\n");
  return unfolded.endsWith("\r\n") ? unfolded : `${unfolded}\r\n`;
}

export function canonHeader(raw: string, canon: Canon): string {
  return canon === "relaxed" ? relaxedHeader(raw) : simpleHeader(raw);
}

const SCRATCH_BYTES = 16 * 1024;
const CRLF_BYTES = new Uint8Array([CR, LF]);
const DOUBLE_SPACE = Buffer.from("  ");

/** Feeds a hash through a fixed scratch buffer so that many small pieces make few native calls. */
class Feeder {
  private readonly scratch = new Uint8Array(SCRATCH_BYTES);
  private used = 0;
  constructor(private readonly hash: Hash) {}

  push(bytes: Uint8Array): void {
    if (bytes.length > SCRATCH_BYTES / 2) {
      this.flush();
      this.hash.update(bytes);
      return;
    }
    if (this.used + bytes.length > SCRATCH_BYTES) this.flush();
    this.scratch.set(bytes, this.used);
    this.used += bytes.length;
  }

  byte(b: number): void {
    if (this.used === SCRATCH_BYTES) this.flush();
    this.scratch[this.used++] = b;
  }

  crlf(): void {
    this.push(CRLF_BYTES);
  }

  flush(): void {
    if (this.used > 0) this.hash.update(this.scratch.subarray(0, this.used));
    this.used = 0;
  }
}

/** Offset just after the last byte that is not part of a trailing run of (CR)LF line ends. */
function endOfContent(body: Uint8Array): number {
  let end = body.length;
  while (end > 0 && body[end - 1] === LF) {
    end--;
    if (end > 0 && body[end - 1] === CR) end--;
  }
  return end;
}

function hasBareLf(body: Uint8Array, end: number): boolean {
  for (let i = body.indexOf(LF); i !== -1 && i < end; i = body.indexOf(LF, i + 1)) {
    if (i === 0 || body[i - 1] !== CR) return true;
  }
  return false;
}

/**
 * RFC 6376 §3.4.3: trailing empty lines removed; an empty body is one CRLF; a last line without a
 * line end gets one. A CRLF body is hashed straight from the input, without copying.
 */
function hashSimpleBody(body: Uint8Array, hash: Hash): void {
  const end = endOfContent(body);
  if (end === 0) {
    hash.update(CRLF_BYTES);
    return;
  }
  if (!hasBareLf(body, end)) {
    hash.update(body.subarray(0, end));
    hash.update(CRLF_BYTES);
    return;
  }
  const feeder = new Feeder(hash);
  let pos = 0;
  while (pos < end) {
    const lf = body.indexOf(LF, pos);
    const stop = lf < 0 || lf > end ? end : lf;
    const contentEnd = stop > pos && body[stop - 1] === CR ? stop - 1 : stop;
    feeder.push(body.subarray(pos, contentEnd));
    feeder.crlf();
    pos = stop + 1;
  }
  feeder.flush();
}

/**
 * RFC 6376 §3.4.4: WSP runs become one SP, WSP at line ends is dropped, trailing empty lines are
 * dropped, and an empty body stays empty (errata 1384: no CRLF is added to an empty body).
 */
function hashRelaxedBody(body: Uint8Array, hash: Hash): void {
  const feeder = new Feeder(hash);
  // Most lines are already canonical: no HTAB, no double SP, no trailing WSP, CRLF-terminated.
  // Runs of such lines are hashed straight from the input in one piece ([runStart, committed));
  // only lines that the rules change are rewritten through the scratch buffer. Native searches find
  // the next HTAB and double SP, so a canonical line costs a few calls and no per-byte JS loop.
  const view = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const n = body.length;
  let nextTab = view.indexOf(0x09);
  let nextDoubleSpace = view.indexOf(DOUBLE_SPACE);
  let runStart = 0;
  let committed = 0;
  // Empty lines after `committed`, emitted only if a non-empty line follows (trailing ones are dropped).
  let pendingEmptyLines = 0;
  // Whether those empty lines are all literally CRLF, so that the run may simply extend over them.
  let pendingLiteral = true;
  const flushRun = () => {
    if (committed > runStart) feeder.push(body.subarray(runStart, committed));
    for (; pendingEmptyLines > 0; pendingEmptyLines--) feeder.crlf();
    pendingLiteral = true;
  };
  let pos = 0;
  while (pos < n) {
    const lf = body.indexOf(LF, pos);
    const lineEnd = lf < 0 ? n : lf;
    const hasCrlf = lf >= 0 && lineEnd > pos && body[lineEnd - 1] === CR;
    const rawEnd = hasCrlf ? lineEnd - 1 : lineEnd;
    let contentEnd = rawEnd;
    // Trailing WSP is ignored.
    while (contentEnd > pos && (body[contentEnd - 1] === 0x20 || body[contentEnd - 1] === 0x09)) contentEnd--;
    if (contentEnd === pos) {
      pendingEmptyLines++;
      if (!(hasCrlf && rawEnd === pos)) pendingLiteral = false;
      pos = lineEnd + 1;
      continue;
    }
    if (nextTab !== -1 && nextTab < pos) nextTab = view.indexOf(0x09, pos);
    if (nextDoubleSpace !== -1 && nextDoubleSpace < pos) nextDoubleSpace = view.indexOf(DOUBLE_SPACE, pos);
    const clean =
      (nextTab === -1 || nextTab >= contentEnd) && (nextDoubleSpace === -1 || nextDoubleSpace >= contentEnd);
    if (clean && hasCrlf && contentEnd === rawEnd) {
      if (pendingEmptyLines > 0 && !pendingLiteral) {
        flushRun();
        runStart = pos;
      }
      pendingEmptyLines = 0;
      pendingLiteral = true;
      committed = lineEnd + 1;
    } else {
      flushRun();
      if (clean) feeder.push(body.subarray(pos, contentEnd));
      else {
        // Copy what lies between the non-canonical WSP runs (those holding an HTAB or a double SP,
        // found by the native searches), and one SP for each such run.
        let segStart = pos;
        for (;;) {
          if (nextTab !== -1 && nextTab < segStart) nextTab = view.indexOf(0x09, segStart);
          if (nextDoubleSpace !== -1 && nextDoubleSpace < segStart)
            nextDoubleSpace = view.indexOf(DOUBLE_SPACE, segStart);
          const t = nextTab !== -1 && nextTab < contentEnd ? nextTab : contentEnd;
          const d = nextDoubleSpace !== -1 && nextDoubleSpace < contentEnd ? nextDoubleSpace : contentEnd;
          let wspStart = Math.min(t, d);
          if (wspStart === contentEnd) break;
          while (wspStart > segStart && body[wspStart - 1] === 0x20) wspStart--;
          let wspEnd = wspStart;
          while (wspEnd < contentEnd && (body[wspEnd] === 0x20 || body[wspEnd] === 0x09)) wspEnd++;
          if (wspStart > segStart) feeder.push(body.subarray(segStart, wspStart));
          feeder.byte(0x20);
          segStart = wspEnd;
        }
        feeder.push(body.subarray(segStart, contentEnd));
      }
      feeder.crlf();
      runStart = committed = lineEnd + 1;
    }
    pos = lineEnd + 1;
  }
  // Trailing empty lines are dropped.
  pendingEmptyLines = 0;
  flushRun();
  feeder.flush();
}

/** Base64 SHA-256 of the canonicalized body (the `bh=` tag). */
export function bodyHash(body: Uint8Array, canon: Canon): string {
  const hash = createHash("sha256");
  if (canon === "relaxed") hashRelaxedBody(body, hash);
  else hashSimpleBody(body, hash);
  return hash.digest("base64");
}
