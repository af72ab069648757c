/**
 * The on-disk format of spool segments: file header, record framing, MESSAGE and OUTCOME payloads.
 *
 * Owns: the byte layout (documented here and in docs/spool-format.md), encoding, decoding, CRC checks.
 * Does not own: which segment is written (_segments.ts, _batches.ts), when bytes reach the disk (_writer.ts).
 * Invariant: every integer is little-endian; every record's CRC-32 covers its length, type, reserved
 * bytes and payload, so a torn or flipped record never decodes as a valid one.
 *
 * Segment file header (16 bytes, at offset 0 of every `segments/<20-digit sequence>.seg`):
 *
 * | offset | size | field    | value                                    |
 * |-------:|-----:|----------|------------------------------------------|
 * |      0 |    8 | magic    | ASCII `MTASPOOL`                         |
 * |      8 |    4 | version  | u32: 2 (batch records); 1 is still read  |
 * |     12 |    4 | sequence | u32, the segment's sequence number       |
 *
 * Record (16-byte header + payload), repeated until the end of the file:
 *
 * | offset | size | field    | value                                                  |
 * |-------:|-----:|----------|--------------------------------------------------------|
 * |      0 |    4 | magic    | u32 0x43455253 (ASCII `SREC`), lets a scan resync       |
 * |      4 |    4 | crc32    | CRC-32 (IEEE) of bytes 8 .. 16+length                  |
 * |      8 |    4 | length   | u32 payload length in bytes                            |
 * |     12 |    1 | type     | 1 = MESSAGE, 2 = OUTCOME, 3 = BATCH                    |
 * |     13 |    3 | reserved | zero                                                   |
 * |     16 |    n | payload  | see below                                              |
 *
 * Version 2: every group-commit batch (the part of it written to one segment, with one write and one
 * fdatasync) starts with a BATCH record that says how many bytes and records follow it. A batch whose
 * bytes run past the end of the active segment was cut by a crash before its fdatasync returned, so
 * nothing in it was acknowledged; bad bytes inside a complete batch are damage to acknowledged data.
 *
 * BATCH payload (8 bytes): u32 batchBytes (the records after this one) | u32 recordCount
 *
 * Strings are `u32 byte length` + UTF-8 bytes. A message id is stored as its two numeric parts
 * (f64 milliseconds, u32 counter) and rebuilt as its 14 characters on demand (lib/ids.ts).
 *
 * MESSAGE payload (a new message, or a compaction copy carrying the message's current state):
 *   f64 idMs | u32 idCounter | f64 arrivalMs | u32 attempts | f64 nextAttemptMs | str sender |
 *   str destination | u32 recipientCount | recipient* | u32 attributeCount | (str key, str value)* |
 *   u32 bodyLength | body bytes
 *   recipient = str address | u8 notify bits (1 SUCCESS, 2 FAILURE, 4 DELAY, 8 NEVER; 0 = not given) |
 *               u8 flags (1 has ORCPT, 2 has last reply) | u8 state (0 pending, 1 delivered, 2 failed) |
 *               [str orcpt] | [str lastReply]
 *
 * OUTCOME payload (a snapshot of every recipient's state after an attempt; the last one wins):
 *   f64 idMs | u32 idCounter | u32 attempts | f64 nextAttemptMs | str reason |
 *   u32 recipientCount | (u8 state | u8 flags (2 has last reply) | [str lastReply])* | [tls trailer]
 *
 * TLS trailer (optional, after the OUTCOME's recipients and after a MESSAGE's body): what TLS the
 * last attempt of each recipient had, for `mta queue show`. Written only while the message stays
 * queued (a finished message is never shown), each distinct note once:
 *   u8 tag 1 | u32 tableCount | (str policy | str version | str cipher | u8 verified)* |
 *   u32 per recipient (0 = none, else 1 + index into the table); "" = no version / cipher
 * Readers stop after the part they know, so a binary that predates the trailer reads these records
 * as before (the CRC covers the trailer all the same); a record without one has no TLS notes.
 */
import type { NotifyKeyword } from "../smtp/index.ts";
import { textDecoder, textEncoder } from "../lib/index.ts";
import type { LastTls } from "./types.ts";

export const FILE_MAGIC = textEncoder.encode("MTASPOOL");
/** The version new segments get; 1 (no BATCH records) is still read. */
export const FILE_VERSION = 2;
export const FILE_HEADER_BYTES = 16;

export const RECORD_MAGIC = 0x43455253;
export const RECORD_HEADER_BYTES = 16;
/** Offset of the first byte the CRC covers. */
export const RECORD_CRC_START = 8;
/** Upper bound for a payload length; larger values are treated as damage, not allocated. */
export const MAX_PAYLOAD_BYTES = 0x7fff_0000;

export const TYPE_MESSAGE = 1;
export const TYPE_OUTCOME = 2;
export const TYPE_BATCH = 3;
/** A BATCH record: header + u32 batchBytes + u32 recordCount. */
export const BATCH_RECORD_BYTES = RECORD_HEADER_BYTES + 8;

export const STATE_PENDING = 0;
export const STATE_DELIVERED = 1;
export const STATE_FAILED = 2;

const NOTIFY_BITS: Record<NotifyKeyword, number> = { SUCCESS: 1, FAILURE: 2, DELAY: 4, NEVER: 8 };
const NOTIFY_ORDER: NotifyKeyword[] = ["SUCCESS", "FAILURE", "DELAY", "NEVER"];

export interface RecipientRecord {
  address: string;
  notify?: NotifyKeyword[];
  orcpt?: string;
  state: number;
  lastReply?: string;
  lastTls?: LastTls;
}

export interface MessageRecord {
  idMs: number;
  idCounter: number;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  sender: string;
  destination: string;
  recipients: RecipientRecord[];
  attributes: Record<string, string>;
  body: Uint8Array;
}

export interface OutcomeRecord {
  idMs: number;
  idCounter: number;
  attempts: number;
  nextAttemptMs: number;
  reason: string;
  recipients: { state: number; lastReply?: string; lastTls?: LastTls }[];
}

export function notifyToBits(notify: readonly NotifyKeyword[] | undefined): number {
  let bits = 0;
  for (const k of notify ?? []) bits |= NOTIFY_BITS[k];
  return bits;
}

export function bitsToNotify(bits: number): NotifyKeyword[] | undefined {
  if (bits === 0) return undefined;
  return NOTIFY_ORDER.filter((k) => (bits & NOTIFY_BITS[k]) !== 0);
}

export function encodeFileHeader(sequence: number): Uint8Array {
  const out = new Uint8Array(FILE_HEADER_BYTES);
  out.set(FILE_MAGIC, 0);
  const dv = new DataView(out.buffer);
  dv.setUint32(8, FILE_VERSION, true);
  dv.setUint32(12, sequence >>> 0, true);
  return out;
}

/** Whether `buf` starts with a valid file header: its version and sequence, or undefined. */
export function checkFileHeader(buf: Uint8Array): { version: number; sequence: number } | undefined {
  if (buf.length < FILE_HEADER_BYTES) return undefined;
  for (let i = 0; i < FILE_MAGIC.length; i++) if (buf[i] !== FILE_MAGIC[i]) return undefined;
  const dv = new DataView(buf.buffer, buf.byteOffset, FILE_HEADER_BYTES);
  const version = dv.getUint32(8, true);
  if (version !== 1 && version !== FILE_VERSION) return undefined;
  return { version, sequence: dv.getUint32(12, true) };
}

/** The BATCH record that starts a batch of `records` records totalling `bytes` bytes. */
export function encodeBatchHeader(bytes: number, records: number): Uint8Array {
  const out = new Uint8Array(BATCH_RECORD_BYTES);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, RECORD_MAGIC, true);
  dv.setUint32(8, 8, true);
  out[12] = TYPE_BATCH;
  dv.setUint32(16, bytes >>> 0, true);
  dv.setUint32(20, records >>> 0, true);
  dv.setUint32(4, Bun.hash.crc32(out.subarray(RECORD_CRC_START)) >>> 0, true);
  return out;
}

/** A growable little-endian writer. */
class Writer {
  buf: Uint8Array;
  dv: DataView;
  pos = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
  }
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
    this.dv = new DataView(b.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u32(v: number): void {
    this.ensure(4);
    this.dv.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  f64(v: number): void {
    this.ensure(8);
    this.dv.setFloat64(this.pos, v, true);
    this.pos += 8;
  }
  str(s: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 unit.
    this.ensure(4 + s.length * 3);
    const r = textEncoder.encodeInto(s, this.buf.subarray(this.pos + 4));
    this.dv.setUint32(this.pos, r.written, true);
    this.pos += 4 + r.written;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

function frame(w: Writer, type: number): Uint8Array {
  const out = w.buf.subarray(0, w.pos);
  const dv = w.dv;
  dv.setUint32(0, RECORD_MAGIC, true);
  dv.setUint32(8, w.pos - RECORD_HEADER_BYTES, true);
  out[12] = type;
  out[13] = 0;
  out[14] = 0;
  out[15] = 0;
  dv.setUint32(4, Bun.hash.crc32(out.subarray(RECORD_CRC_START)) >>> 0, true);
  return out;
}

export function encodeMessage(m: MessageRecord): Uint8Array {
  const w = new Writer(RECORD_HEADER_BYTES + 128 + m.body.length + m.recipients.length * 64);
  w.pos = RECORD_HEADER_BYTES;
  w.f64(m.idMs);
  w.u32(m.idCounter);
  w.f64(m.arrivalMs);
  w.u32(m.attempts);
  w.f64(m.nextAttemptMs);
  w.str(m.sender);
  w.str(m.destination);
  w.u32(m.recipients.length);
  for (const r of m.recipients) {
    w.str(r.address);
    w.u8(notifyToBits(r.notify));
    w.u8((r.orcpt !== undefined ? 1 : 0) | (r.lastReply !== undefined ? 2 : 0));
    w.u8(r.state);
    if (r.orcpt !== undefined) w.str(r.orcpt);
    if (r.lastReply !== undefined) w.str(r.lastReply);
  }
  const keys = Object.keys(m.attributes);
  w.u32(keys.length);
  for (const k of keys) {
    w.str(k);
    w.str(m.attributes[k]!);
  }
  w.u32(m.body.length);
  w.bytes(m.body);
  writeTlsTrailer(w, m.recipients);
  return frame(w, TYPE_MESSAGE);
}

export function encodeOutcome(o: OutcomeRecord): Uint8Array {
  const w = new Writer(RECORD_HEADER_BYTES + 64 + o.recipients.length * 80);
  w.pos = RECORD_HEADER_BYTES;
  w.f64(o.idMs);
  w.u32(o.idCounter);
  w.u32(o.attempts);
  w.f64(o.nextAttemptMs);
  w.str(o.reason);
  w.u32(o.recipients.length);
  for (const r of o.recipients) {
    w.u8(r.state);
    w.u8(r.lastReply !== undefined ? 2 : 0);
    if (r.lastReply !== undefined) w.str(r.lastReply);
  }
  writeTlsTrailer(w, o.recipients);
  return frame(w, TYPE_OUTCOME);
}

const TLS_TRAILER_TAG = 1;

/** The TLS trailer (see the layout above), only when some recipient has a TLS note. */
function writeTlsTrailer(w: Writer, recipients: readonly { lastTls?: LastTls }[]): void {
  if (!recipients.some((r) => r.lastTls)) return;
  const table: LastTls[] = [];
  const at = new Map<string, number>();
  const refs = recipients.map((r) => {
    const t = r.lastTls;
    if (!t) return 0;
    const key = `${t.policy}\n${t.version ?? ""}\n${t.cipher ?? ""}\n${t.verified}`;
    let i = at.get(key);
    if (i === undefined) {
      i = table.push(t) - 1;
      at.set(key, i);
    }
    return i + 1;
  });
  w.u8(TLS_TRAILER_TAG);
  w.u32(table.length);
  for (const t of table) {
    w.str(t.policy);
    w.str(t.version ?? "");
    w.str(t.cipher ?? "");
    w.u8(t.verified ? 1 : 0);
  }
  for (const ref of refs) w.u32(ref);
}

/** Reads a TLS trailer when one follows the part of the payload already read. */
function readTlsTrailer(r: Reader, recipients: { lastTls?: LastTls }[]): void {
  if (r.pos >= r.end || r.buf[r.pos] !== TLS_TRAILER_TAG) return;
  r.u8();
  const n = r.u32();
  const table: LastTls[] = [];
  for (let i = 0; i < n; i++) {
    const policy = r.str();
    const version = r.str();
    const cipher = r.str();
    const verified = r.u8() === 1;
    table.push({ policy, ...(version ? { version } : {}), ...(cipher ? { cipher } : {}), verified });
  }
  for (const rec of recipients) {
    const ref = r.u32();
    const tls = ref > 0 ? table[ref - 1] : undefined;
    if (tls) rec.lastTls = tls;
  }
}

export class DecodeError extends Error {
  override name = "DecodeError";
}

/** A bounds-checked little-endian reader over one payload. */
export class Reader {
  readonly dv: DataView;
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
  }
  need(n: number): void {
    if (this.pos + n > this.end) throw new DecodeError("payload ends early");
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  f64(): number {
    this.need(8);
    const v = this.dv.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  str(): string {
    const n = this.u32();
    this.need(n);
    const s = textDecoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }
  skipStr(): void {
    const n = this.u32();
    this.need(n);
    this.pos += n;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

/**
 * Checks the record framing at `off` within `buf[0..end)`.
 * Returns the record's total length, 0 when the buffer ends before the record does (need more
 * bytes), or -1 when the bytes at `off` are not a valid record.
 */
export function checkRecord(buf: Uint8Array, dv: DataView, off: number, end: number): number {
  if (off + RECORD_HEADER_BYTES > end) return 0;
  if (dv.getUint32(off, true) !== RECORD_MAGIC) return -1;
  const len = dv.getUint32(off + 8, true);
  const type = buf[off + 12];
  if (len > MAX_PAYLOAD_BYTES || (type !== TYPE_MESSAGE && type !== TYPE_OUTCOME && type !== TYPE_BATCH))
    return -1;
  if (buf[off + 13] !== 0 || buf[off + 14] !== 0 || buf[off + 15] !== 0) return -1;
  const total = RECORD_HEADER_BYTES + len;
  if (off + total > end) return 0;
  const crc = Bun.hash.crc32(buf.subarray(off + RECORD_CRC_START, off + total)) >>> 0;
  return crc === dv.getUint32(off + 4, true) ? total : -1;
}

export function decodeMessage(buf: Uint8Array, off: number, total: number): MessageRecord {
  const r = new Reader(buf, off + RECORD_HEADER_BYTES, off + total);
  const idMs = r.f64();
  const idCounter = r.u32();
  const arrivalMs = r.f64();
  const attempts = r.u32();
  const nextAttemptMs = r.f64();
  const sender = r.str();
  const destination = r.str();
  const n = r.u32();
  const recipients: RecipientRecord[] = [];
  for (let i = 0; i < n; i++) {
    const address = r.str();
    const notify = bitsToNotify(r.u8());
    const flags = r.u8();
    const state = r.u8();
    const rec: RecipientRecord = { address, state };
    if (notify) rec.notify = notify;
    if (flags & 1) rec.orcpt = r.str();
    if (flags & 2) rec.lastReply = r.str();
    recipients.push(rec);
  }
  const na = r.u32();
  const attributes: Record<string, string> = {};
  for (let i = 0; i < na; i++) {
    const k = r.str();
    attributes[k] = r.str();
  }
  const bodyLen = r.u32();
  const body = r.bytes(bodyLen);
  readTlsTrailer(r, recipients);
  return {
    idMs,
    idCounter,
    arrivalMs,
    attempts,
    nextAttemptMs,
    sender,
    destination,
    recipients,
    attributes,
    body,
  };
}

export function decodeOutcome(buf: Uint8Array, off: number, total: number): OutcomeRecord {
  const r = new Reader(buf, off + RECORD_HEADER_BYTES, off + total);
  const idMs = r.f64();
  const idCounter = r.u32();
  const attempts = r.u32();
  const nextAttemptMs = r.f64();
  const reason = r.str();
  const n = r.u32();
  const recipients: OutcomeRecord["recipients"] = [];
  for (let i = 0; i < n; i++) {
    const state = r.u8();
    const flags = r.u8();
    recipients.push(flags & 2 ? { state, lastReply: r.str() } : { state });
  }
  readTlsTrailer(r, recipients);
  return { idMs, idCounter, attempts, nextAttemptMs, reason, recipients };
}

/** What recovery needs from a record, decoded without allocating per recipient or attribute. */
export interface RecordHead {
  type: number;
  idMs: number;
  idCounter: number;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  destination: string;
  /** Recipient states; only the first `recipientCount` entries are meaningful. */
  states: number[];
  recipientCount: number;
  bodyBytes: number;
}

export function newRecordHead(): RecordHead {
  return {
    type: 0,
    idMs: 0,
    idCounter: 0,
    arrivalMs: 0,
    attempts: 0,
    nextAttemptMs: 0,
    destination: "",
    states: [],
    recipientCount: 0,
    bodyBytes: 0,
  };
}

/** Fills `h` from the record at `off`; throws DecodeError when the payload is malformed. */
export function peekRecord(buf: Uint8Array, off: number, total: number, h: RecordHead): void {
  const r = new Reader(buf, off + RECORD_HEADER_BYTES, off + total);
  h.type = buf[off + 12]!;
  h.idMs = r.f64();
  h.idCounter = r.u32();
  if (h.type === TYPE_MESSAGE) {
    h.arrivalMs = r.f64();
    h.attempts = r.u32();
    h.nextAttemptMs = r.f64();
    r.skipStr();
    h.destination = r.str();
    const n = r.u32();
    h.recipientCount = n;
    for (let i = 0; i < n; i++) {
      r.skipStr();
      r.u8();
      const flags = r.u8();
      h.states[i] = r.u8();
      if (flags & 1) r.skipStr();
      if (flags & 2) r.skipStr();
    }
    const na = r.u32();
    for (let i = 0; i < na * 2; i++) r.skipStr();
    h.bodyBytes = r.u32();
    r.need(h.bodyBytes);
  } else {
    h.attempts = r.u32();
    h.nextAttemptMs = r.f64();
    r.skipStr();
    const n = r.u32();
    h.recipientCount = n;
    for (let i = 0; i < n; i++) {
      h.states[i] = r.u8();
      if (r.u8() & 2) r.skipStr();
    }
  }
  if (h.recipientCount === 0) throw new DecodeError("record without recipients");
}
