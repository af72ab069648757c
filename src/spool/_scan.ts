/**
 * Sequential scan of one segment file: large reads, record framing and CRC checks, batch boundaries,
 * resync after damage.
 *
 * Owns: finding every valid record in a segment, and sorting the bytes that are not valid records into
 * damage (bad bytes inside a complete batch, or followed by valid data) and a torn tail (an incomplete
 * last batch, which was never acknowledged).
 * Does not own: what records mean (_recover.ts, verify.ts), what is done with damage (_recover.ts).
 * Invariants:
 * - a bad record never stops the scan: it resumes at the next offset that holds a record with a valid
 *   header and CRC, so one flipped byte costs one record;
 * - damage inside a complete batch ends, at the latest, where the batch ends (the BATCH record says);
 * - no record of an incomplete batch is reported: the batch was cut before its fdatasync returned;
 * - version 1 segments (no BATCH records) keep their old rule: bad bytes through the end are a tail.
 */
import {
  BATCH_RECORD_BYTES,
  checkFileHeader,
  FILE_HEADER_BYTES,
  MAX_PAYLOAD_BYTES,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  TYPE_BATCH,
  TYPE_MESSAGE,
  TYPE_OUTCOME,
} from "./_format.ts";
import type { FileLayer } from "./_files.ts";

const CHUNK_BYTES = 8 << 20;
/** First byte of RECORD_MAGIC as stored (little-endian). */
const MAGIC_BYTE0 = RECORD_MAGIC & 0xff;

export interface ScanDamage {
  /** File offset where the bad bytes start. */
  offset: number;
  /** Bytes skipped. */
  bytes: number;
  reason: string;
}

export interface ScanResult {
  /** The segment's sequence from its header, or -1 when the header is bad. */
  sequence: number;
  /** Format version from the header (1 or 2); 2 when the header is bad. */
  version: number;
  fileBytes: number;
  records: number;
  batches: number;
  /** Bad ranges that are not a torn tail. */
  damage: ScanDamage[];
  /** Offset from which the rest is a torn tail (never acknowledged), or -1. */
  tailFrom: number;
  tailReason: string;
}

/** A sliding window over the file, read in large chunks. */
class Window {
  buf: Uint8Array;
  dv: DataView;
  /** File offsets of buf[0] and of the end of the valid bytes. */
  start = 0;
  end = 0;

  constructor(
    private readonly files: FileLayer,
    private readonly fd: number,
    readonly fileBytes: number,
  ) {
    this.buf = new Uint8Array(Math.min(CHUNK_BYTES, Math.max(fileBytes, 64)));
    this.dv = new DataView(this.buf.buffer);
  }

  /** Makes the file bytes [off, off+n) addressable (the caller checked that the file holds them). */
  load(off: number, n: number): number {
    if (off >= this.start && off + n <= this.end) return off - this.start;
    if (n > this.buf.length) {
      this.buf = new Uint8Array(n + CHUNK_BYTES);
      this.dv = new DataView(this.buf.buffer);
    }
    const want = Math.min(this.buf.length, this.fileBytes - off);
    let got = 0;
    while (got < want) {
      const r = this.files.readSync(this.fd, this.buf, got, want - got, off + got);
      if (r <= 0) break;
      got += r;
    }
    this.start = off;
    this.end = off + got;
    if (got < n) throw new Error(`segment shrank while being read (wanted ${n} bytes at ${off})`);
    return 0;
  }

  /** The next offset in [from, limit) where the record magic starts, or -1. */
  findMagic(from: number, limit: number): number {
    let p = from;
    while (p + 4 <= limit) {
      const i0 = this.load(p, 4);
      const stop = Math.min(this.end, limit) - this.start;
      let i = this.buf.indexOf(MAGIC_BYTE0, i0);
      while (i !== -1 && i + 4 <= stop) {
        if (this.dv.getUint32(i, true) === RECORD_MAGIC) return this.start + i;
        i = this.buf.indexOf(MAGIC_BYTE0, i + 1);
      }
      p = this.start + Math.max(i0 + 1, stop - 3);
    }
    return -1;
  }

  allZero(from: number, to: number): boolean {
    for (let p = from; p < to; ) {
      const i = this.load(p, Math.min(to - p, CHUNK_BYTES));
      const n = Math.min(this.end, to) - p;
      for (let k = 0; k < n; k++) if (this.buf[i + k] !== 0) return false;
      p += n;
    }
    return true;
  }
}

/**
 * Calls `onRecord(buf, off, total, fileOffset)` for every valid MESSAGE and OUTCOME record in file
 * order; `buf` is only valid during the call.
 */
export function scanSegment(
  files: FileLayer,
  fd: number,
  onRecord: (buf: Uint8Array, off: number, total: number, fileOffset: number) => void,
): ScanResult {
  const fileBytes = files.size(fd);
  const result: ScanResult = {
    sequence: -1,
    version: 2,
    fileBytes,
    records: 0,
    batches: 0,
    damage: [],
    tailFrom: -1,
    tailReason: "",
  };
  const win = new Window(files, fd, fileBytes);
  if (fileBytes < FILE_HEADER_BYTES) {
    result.tailFrom = 0;
    result.tailReason = "incomplete segment header";
    return result;
  }
  const header = checkFileHeader(win.buf.subarray(win.load(0, FILE_HEADER_BYTES)));
  if (header) {
    result.sequence = header.sequence;
    result.version = header.version;
  } else if (win.allZero(0, fileBytes)) {
    // A segment whose creation a crash cut short: nothing was ever written to it.
    result.tailFrom = 0;
    result.tailReason = "segment header never written";
    return result;
  } else {
    // The records after a damaged header can still be read: they carry their own checksums.
    result.damage.push({ offset: 0, bytes: FILE_HEADER_BYTES, reason: "bad segment header" });
  }

  let pos = FILE_HEADER_BYTES;
  let batchEnd = -1;
  let damageStart = -1;
  let damageReason = "";
  let reason = "";
  const closeDamage = (at: number) => {
    if (damageStart < 0) return;
    result.damage.push({ offset: damageStart, bytes: at - damageStart, reason: damageReason });
    damageStart = -1;
  };
  /** Length of the valid record at `pos` ending at or before `limit`, or -1 (then `reason` says why). */
  const check = (limit: number): number => {
    if (pos + RECORD_HEADER_BYTES > limit) {
      reason = "incomplete record";
      return -1;
    }
    let i = win.load(pos, RECORD_HEADER_BYTES);
    const { buf, dv } = win;
    if (dv.getUint32(i, true) !== RECORD_MAGIC) {
      reason = "bad record magic";
      return -1;
    }
    const len = dv.getUint32(i + 8, true);
    const type = buf[i + 12]!;
    if (
      (type !== TYPE_MESSAGE && type !== TYPE_OUTCOME && type !== TYPE_BATCH) ||
      buf[i + 13] !== 0 ||
      buf[i + 14] !== 0 ||
      buf[i + 15] !== 0 ||
      (type === TYPE_BATCH && len !== BATCH_RECORD_BYTES - RECORD_HEADER_BYTES)
    ) {
      reason = `bad record type ${type}`;
      return -1;
    }
    const total = RECORD_HEADER_BYTES + len;
    if (len > MAX_PAYLOAD_BYTES || pos + total > limit) {
      reason =
        batchEnd >= 0 ? "record runs past the end of its batch" : "record runs past the end of the segment";
      return -1;
    }
    i = win.load(pos, total);
    const crc = Bun.hash.crc32(win.buf.subarray(i + 8, i + total)) >>> 0;
    if (crc !== win.dv.getUint32(i + 4, true)) {
      reason = "checksum mismatch";
      return -1;
    }
    return total;
  };

  for (;;) {
    if (batchEnd >= 0 && pos >= batchEnd) {
      closeDamage(batchEnd);
      pos = batchEnd;
      batchEnd = -1;
    }
    if (pos >= fileBytes) break;
    const limit = batchEnd >= 0 ? batchEnd : fileBytes;
    let total = check(limit);
    if (total > 0) {
      const i = win.load(pos, total);
      const type = win.buf[i + 12];
      if (type === TYPE_BATCH && batchEnd >= 0) {
        reason = "batch record inside a batch";
        total = -1;
      } else {
        closeDamage(pos);
        if (type === TYPE_BATCH) {
          const len = win.dv.getUint32(i + 16, true);
          if (pos + total + len > fileBytes) {
            // Cut before its fdatasync returned: none of it was acknowledged.
            result.tailFrom = pos;
            result.tailReason = "incomplete batch";
            break;
          }
          result.batches++;
          batchEnd = pos + total + len;
        } else {
          onRecord(win.buf, i, total, pos);
          result.records++;
        }
        pos += total;
        continue;
      }
    }
    // Bad bytes at pos: remember where they start and look for the next candidate record.
    if (damageStart < 0) {
      damageStart = pos;
      damageReason = reason;
    }
    const next = win.findMagic(pos + 1, limit);
    if (next >= 0) {
      pos = next;
      continue;
    }
    if (batchEnd >= 0) {
      pos = batchEnd; // the damage ends with its batch
      continue;
    }
    // Bad bytes through the end of the file, outside any batch: a torn tail only when they cannot be
    // anything acknowledged (version 1 had no batches to tell; a cut BATCH record; zeros from a
    // file system that grew the file before the data landed). Anything else is damage.
    const rest = fileBytes - damageStart;
    if (result.version === 1 || rest < BATCH_RECORD_BYTES || win.allZero(damageStart, fileBytes)) {
      result.tailFrom = damageStart;
      result.tailReason = result.version === 1 ? damageReason : "incomplete batch record";
      damageStart = -1;
    } else closeDamage(fileBytes);
    break;
  }
  return result;
}
