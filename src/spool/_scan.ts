/**
 * Sequential scan of one segment file: large reads, record framing and CRC checks, resync after damage.
 *
 * Owns: finding every valid record in a segment and the byte ranges that are not valid records.
 * Does not own: what records mean (spool.ts recovery, verify.ts).
 * Invariant: a bad record never stops the scan; the scan resumes at the next offset that holds a
 * record with a valid header and CRC, so one flipped byte costs one record.
 */
import {
  checkFileHeader,
  FILE_HEADER_BYTES,
  MAX_PAYLOAD_BYTES,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
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
  fileBytes: number;
  records: number;
  /** Bad ranges followed by a valid record. */
  damage: ScanDamage[];
  /** Offset from which nothing valid follows (a torn tail), or -1. */
  tailFrom: number;
}

/**
 * Calls `onRecord(buf, off, total, fileOffset)` for every valid record in file order; `buf` is only
 * valid during the call.
 */
export function scanSegment(
  files: FileLayer,
  fd: number,
  onRecord: (buf: Uint8Array, off: number, total: number, fileOffset: number) => void,
): ScanResult {
  const fileBytes = files.size(fd);
  const result: ScanResult = { sequence: -1, fileBytes, records: 0, damage: [], tailFrom: -1 };
  const head = new Uint8Array(FILE_HEADER_BYTES);
  if (
    fileBytes < FILE_HEADER_BYTES ||
    files.readSync(fd, head, 0, FILE_HEADER_BYTES, 0) < FILE_HEADER_BYTES
  ) {
    result.tailFrom = 0;
    return result;
  }
  result.sequence = checkFileHeader(head);
  if (result.sequence < 0) {
    result.tailFrom = 0;
    return result;
  }
  let buf = new Uint8Array(Math.min(CHUNK_BYTES, Math.max(fileBytes, 64)));
  let dv = new DataView(buf.buffer);
  let bufStart = FILE_HEADER_BYTES; // file offset of buf[0]
  let end = 0; // valid bytes in buf
  let pos = 0;
  let damageStart = -1;
  let damageReason = "";

  const fill = (): boolean => {
    // Keep [pos, end), read more after it; returns false at end of file.
    if (pos > 0) {
      buf.copyWithin(0, pos, end);
      bufStart += pos;
      end -= pos;
      pos = 0;
    }
    const want = Math.min(buf.length - end, fileBytes - (bufStart + end));
    if (want <= 0) return false;
    const n = files.readSync(fd, buf, end, want, bufStart + end);
    if (n <= 0) return false;
    end += n;
    return true;
  };

  for (;;) {
    let verdict: number; // > 0 record length, 0 need more bytes, -1 bad
    let reason = "";
    if (end - pos < RECORD_HEADER_BYTES) verdict = 0;
    else if (dv.getUint32(pos, true) !== RECORD_MAGIC) {
      verdict = -1;
      reason = "bad record magic";
    } else {
      const len = dv.getUint32(pos + 8, true);
      const type = buf[pos + 12]!;
      const total = RECORD_HEADER_BYTES + len;
      if (len > MAX_PAYLOAD_BYTES || bufStart + pos + total > fileBytes) {
        verdict = -1;
        reason = "record length runs past the end of the segment";
      } else if (
        (type !== 1 && type !== 2) ||
        buf[pos + 13] !== 0 ||
        buf[pos + 14] !== 0 ||
        buf[pos + 15] !== 0
      ) {
        verdict = -1;
        reason = `bad record type ${type}`;
      } else if (pos + total > end) {
        if (total > buf.length) {
          const nb = new Uint8Array(total + CHUNK_BYTES);
          nb.set(buf.subarray(pos, end));
          bufStart += pos;
          end -= pos;
          pos = 0;
          buf = nb;
          dv = new DataView(buf.buffer);
        }
        verdict = 0;
      } else {
        const crc = Bun.hash.crc32(buf.subarray(pos + 8, pos + total)) >>> 0;
        if (crc === dv.getUint32(pos + 4, true)) verdict = total;
        else {
          verdict = -1;
          reason = "checksum mismatch";
        }
      }
    }
    if (verdict > 0) {
      const fileOffset = bufStart + pos;
      if (damageStart >= 0) {
        result.damage.push({ offset: damageStart, bytes: fileOffset - damageStart, reason: damageReason });
        damageStart = -1;
      }
      onRecord(buf, pos, verdict, fileOffset);
      result.records++;
      pos += verdict;
      continue;
    }
    if (verdict === 0) {
      if (fill()) continue;
      if (pos >= end) break; // clean end of file
      // Fewer bytes than a record header at the end of the file.
      verdict = -1;
      reason = "incomplete record at end of segment";
    }
    // Bad bytes at pos: remember where the damage starts and look for the next candidate record.
    if (damageStart < 0) {
      damageStart = bufStart + pos;
      damageReason = reason;
    }
    let next = buf.indexOf(MAGIC_BYTE0, pos + 1);
    while (next !== -1 && next + 4 <= end && dv.getUint32(next, true) !== RECORD_MAGIC)
      next = buf.indexOf(MAGIC_BYTE0, next + 1);
    if (next === -1 || next > end) {
      pos = end;
      if (!fill()) break;
    } else if (next + 4 > end) {
      pos = next;
      if (!fill()) break;
    } else pos = next;
  }
  if (damageStart >= 0) result.tailFrom = damageStart;
  else if (pos < end) result.tailFrom = bufStart + pos;
  return result;
}
