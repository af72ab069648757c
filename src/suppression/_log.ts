/**
 * The suppression list on disk: one append-only log file of add and remove records.
 *
 * Owns: the file header and the record encoding (below), scanning a file with a torn-tail check,
 * address and scope normalization.
 * Does not own: when records are written or synced (_store.ts), the table in RAM (_table.ts).
 *
 * File `suppressions.log`: a 16-byte header, `MTASUPPR`, u32 version (1), u32 zero, then records,
 * little endian:
 *
 *   offset  size  field
 *   0       4     CRC-32 of bytes 4 .. length (covers the length, type, fields and key)
 *   4       2     length of the whole record in bytes (17 + key length)
 *   6       1     type: 1 add, 2 remove
 *   7       1     reason: index into REASONS
 *   8       4     added at, seconds since the epoch
 *   12      4     expires at, seconds since the epoch; 0 = never
 *   16      1     scope length in bytes (0 = global)
 *   17      n     key: scope (a sender domain, lower case), NUL, address (lower case), UTF-8
 *
 * Invariant: records are only appended, each batch then fdatasync'ed; a record that fails its check is
 * the end of the usable log (a torn tail after a crash) and is cut off when the file is opened for
 * writing, never skipped over.
 */
import { BOUNCE_CLASSES } from "../lib/index.ts";

/** The list's file in its directory. */
export const LOG_FILE = "suppressions.log";
export const MAGIC = "MTASUPPR";
/** The outbox (cluster mode): this node's changes not yet seen back in the shared stream. */
export const OUTBOX_MAGIC = "MTASUPOB";
export const VERSION = 1;
export const FILE_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 17;
export const TYPE_ADD = 1;
export const TYPE_REMOVE = 2;

/** Why an address is suppressed: set by hand, by a complaint, or by a bounce of that class. */
export const REASONS = ["manual", "complaint", ...BOUNCE_CLASSES] as const;
export type SuppressionReason = (typeof REASONS)[number];
const REASON_INDEX = new Map<string, number>(REASONS.map((r, i) => [r, i]));

export function reasonIndex(reason: string): number | undefined {
  return REASON_INDEX.get(reason);
}

const MAX_ADDRESS_BYTES = 320;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Lower-cased address without angle brackets, or undefined when it is not `local@domain`. */
export function normalizeAddress(text: string): string | undefined {
  let a = text.trim();
  if (a.startsWith("<") && a.endsWith(">")) a = a.slice(1, -1).trim();
  a = a.toLowerCase();
  // One @ that is neither first nor last; no white space, controls or angle brackets (a quoted local
  // part with those is refused rather than guessed at).
  if (!/^[^\s<>@\x00-\x1f\x7f]+@[^\s<>@,;\x00-\x1f\x7f]+$/.test(a)) return undefined;
  if (a.length * 3 > MAX_ADDRESS_BYTES && Buffer.byteLength(a, "utf8") > MAX_ADDRESS_BYTES) return undefined;
  return a;
}

/** "" (global) or a lower-cased domain name, or undefined when it is not one. */
export function normalizeScope(text: string): string | undefined {
  const s = text.trim().toLowerCase().replace(/\.$/, "");
  if (s === "" || s === "*" || s === "global") return "";
  if (s.length > 253 || !/^[^\s@<>,;\x00-\x1f\x7f.][^\s@<>,;\x00-\x1f\x7f]*$/.test(s)) return undefined;
  return s;
}

export function keyOf(scope: string, address: string): string {
  return `${scope}\0${address}`;
}

/** The header of a log (`magic` MAGIC) or of an outbox (OUTBOX_MAGIC, `word` its first sequence number). */
export function encodeFileHeader(magic = MAGIC, word = 0): Uint8Array {
  const b = new Uint8Array(FILE_HEADER_BYTES);
  b.set(encoder.encode(magic), 0);
  const view = new DataView(b.buffer);
  view.setUint32(8, VERSION, true);
  view.setUint32(12, word >>> 0, true);
  return b;
}

export function checkFileHeader(b: Uint8Array, magic = MAGIC): string | undefined {
  if (b.length < FILE_HEADER_BYTES) return "shorter than its header";
  if (new TextDecoder("latin1").decode(b.subarray(0, 8)) !== magic)
    return magic === MAGIC ? "not a suppression log" : "not a suppression outbox";
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(8, true);
  if (v !== VERSION) return `version ${v}, expected ${VERSION}`;
  return undefined;
}

/** A time in ms as a record stores it: whole seconds rounded up, at least 1; 0 for none (never). */
export function recordSec(ms: number | undefined): number {
  return ms === undefined ? 0 : Math.max(1, Math.ceil(ms / 1000));
}

export interface LogRecord {
  type: typeof TYPE_ADD | typeof TYPE_REMOVE;
  reason: number;
  addedSec: number;
  expiresSec: number;
  scope: string;
  address: string;
}

function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

/** Encodes records back to back into one buffer (one allocation for a whole batch). */
export function encodeRecords(records: readonly LogRecord[]): Uint8Array {
  let worst = 0;
  for (const r of records) worst += RECORD_HEADER_BYTES + 1 + 3 * (r.scope.length + r.address.length);
  const b = Buffer.alloc(worst);
  let at = 0;
  for (const r of records) {
    const scopeBytes = r.scope === "" ? 0 : b.write(r.scope, at + RECORD_HEADER_BYTES, "utf8");
    b[at + RECORD_HEADER_BYTES + scopeBytes] = 0;
    const addressBytes = b.write(r.address, at + RECORD_HEADER_BYTES + scopeBytes + 1, "utf8");
    const length = RECORD_HEADER_BYTES + scopeBytes + 1 + addressBytes;
    put16(b, at + 4, length);
    b[at + 6] = r.type;
    b[at + 7] = r.reason;
    put32(b, at + 8, r.addedSec >>> 0);
    put32(b, at + 12, r.expiresSec >>> 0);
    b[at + 16] = scopeBytes;
    put32(b, at, Bun.hash.crc32(b.subarray(at + 4, at + length)) >>> 0);
    at += length;
  }
  return b.subarray(0, at);
}

export function encodeRecord(r: LogRecord): Uint8Array {
  return encodeRecords([r]);
}

/**
 * A record found while scanning: its fields and where its key is in `buf`. One object is reused for
 * every record of a scan (no allocation per record): copy what you keep.
 */
export interface ScannedRecord {
  /** File position of the record. */
  offset: number;
  buf: Uint8Array;
  /** The record's first byte in `buf`, and its length. */
  start: number;
  length: number;
  type: number;
  reason: number;
  addedSec: number;
  expiresSec: number;
  scopeBytes: number;
}

export function keyStart(r: ScannedRecord): number {
  return r.start + RECORD_HEADER_BYTES;
}

export function decodeKey(r: ScannedRecord): { scope: string; address: string } {
  const k = r.start + RECORD_HEADER_BYTES;
  return {
    scope: decoder.decode(r.buf.subarray(k, k + r.scopeBytes)),
    address: decoder.decode(r.buf.subarray(k + r.scopeBytes + 1, r.start + r.length)),
  };
}

/**
 * Scans records of `chunk` (which starts at file position `base`), calling `fn` for each good one;
 * returns how many bytes were used: the rest is an incomplete record (read more and call again) or,
 * when `bad` is set, a record that fails its check.
 */
export function scanChunk(
  chunk: Uint8Array,
  base: number,
  fn: (r: ScannedRecord) => void,
): { used: number; bad?: string } {
  const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  const r: ScannedRecord = {
    offset: 0,
    buf: chunk,
    start: 0,
    length: 0,
    type: 0,
    reason: 0,
    addedSec: 0,
    expiresSec: 0,
    scopeBytes: 0,
  };
  let at = 0;
  while (chunk.length - at >= 6) {
    const length = view.getUint16(at + 4, true);
    if (length < RECORD_HEADER_BYTES + 2) return { used: at, bad: `record length ${length} is too short` };
    if (chunk.length - at < length) break;
    const crc = view.getUint32(at, true);
    if (Bun.hash.crc32(chunk.subarray(at + 4, at + length)) >>> 0 !== crc)
      return { used: at, bad: "checksum mismatch" };
    const type = chunk[at + 6]!;
    const scopeBytes = chunk[at + 16]!;
    if ((type !== TYPE_ADD && type !== TYPE_REMOVE) || RECORD_HEADER_BYTES + scopeBytes + 1 >= length)
      return { used: at, bad: "malformed record" };
    r.offset = base + at;
    r.start = at;
    r.length = length;
    r.type = type;
    r.reason = chunk[at + 7]!;
    r.addedSec = view.getUint32(at + 8, true);
    r.expiresSec = view.getUint32(at + 12, true);
    r.scopeBytes = scopeBytes;
    fn(r);
    at += length;
  }
  return { used: at };
}

/** The fields of a scanned record, copied out. */
export function toLogRecord(r: ScannedRecord): LogRecord {
  const { scope, address } = decodeKey(r);
  return {
    type: r.type === TYPE_REMOVE ? TYPE_REMOVE : TYPE_ADD,
    reason: r.reason,
    addedSec: r.addedSec,
    expiresSec: r.expiresSec,
    scope,
    address,
  };
}

/**
 * Records encoded back to back (as `encodeRecords` makes them, e.g. received from another node):
 * every one checked as when read from the file. Throws naming the first bad one.
 */
export function decodeRecords(bytes: Uint8Array): LogRecord[] {
  const out: LogRecord[] = [];
  const r = scanChunk(bytes, 0, (x) => {
    if (x.reason >= REASONS.length) throw new Error(`unknown reason ${x.reason} at ${x.offset}`);
    out.push(toLogRecord(x));
  });
  if (r.bad) throw new Error(`${r.bad} at ${r.used}`);
  if (r.used !== bytes.length) throw new Error(`incomplete record at ${r.used}`);
  return out;
}
