/**
 * Reading the list's log file from an open file descriptor, a chunk at a time.
 *
 * Owns: `scanFd` (to the end in one go, reporting where good records stop and why) and
 * `scanFdYielding` (in slices, giving the event loop a turn between them, for a running daemon).
 * Does not own: the record format and its checks (_log.ts `scanChunk`), what a record means to the
 * caller (_store.ts, _read.ts, _compact.ts), cutting off a bad tail (_store.ts).
 * Invariant: records reach `fn` in file order and only whole and checked; a scan never reads past the
 * first bad record. The file may grow while it is read: what is there when a read reaches it counts.
 */
import * as fs from "node:fs";
import { type ScannedRecord, scanChunk } from "./_log.ts";

export const CHUNK_BYTES = 8 * 1024 * 1024;

/** Reads `fd` from `from` to its end (as it is when reached), handing every good record to `fn`. */
export function scanFd(
  fd: number,
  from: number,
  fn: (r: ScannedRecord) => void,
): { end: number; damage?: string; damageAt?: number } {
  const buf = Buffer.allocUnsafe(CHUNK_BYTES);
  let carry = 0;
  let pos = from;
  for (;;) {
    const n = fs.readSync(fd, buf, carry, buf.length - carry, pos + carry);
    if (n === 0) {
      return carry === 0
        ? { end: pos }
        : { end: pos, damage: `incomplete record of ${carry} bytes`, damageAt: pos };
    }
    const len = carry + n;
    const r = scanChunk(buf.subarray(0, len), pos, fn);
    if (r.bad) return { end: pos + r.used, damage: r.bad, damageAt: pos + r.used };
    buf.copyWithin(0, r.used, len);
    carry = len - r.used;
    pos += r.used;
  }
}

/** scanFd in slices of `sliceBytes`, giving the event loop a turn between slices (for a running daemon). */
export async function scanFdYielding(
  fd: number,
  from: number,
  fn: (r: ScannedRecord) => void,
  sliceBytes = 1 << 20,
  between: () => Promise<void> = () => new Promise<void>((resolve) => setImmediate(resolve)),
): Promise<void> {
  const buf = Buffer.allocUnsafe(sliceBytes);
  let carry = 0;
  let pos = from;
  for (;;) {
    const n = fs.readSync(fd, buf, carry, buf.length - carry, pos + carry);
    if (n === 0) return;
    const len = carry + n;
    const r = scanChunk(buf.subarray(0, len), pos, fn);
    if (r.bad) return;
    buf.copyWithin(0, r.used, len);
    carry = len - r.used;
    pos += r.used;
    await between();
  }
}
