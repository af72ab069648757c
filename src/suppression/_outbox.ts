/**
 * The outbox (cluster mode only): this node's own changes to the list that the cluster has not yet
 * been seen to carry (published to the shared stream and read back from it).
 *
 * Owns: `outbox.log` next to the list, the sequence numbers of own changes, which keys have an own
 * change pending.
 * Does not own: publishing (app/), the list itself (_store.ts), when it is opened (_shared.ts).
 *
 * File: the list's 16-byte header with magic `MTASUPOB`, version 1, and as its last u32 the sequence
 * number of the first record; then records exactly as in `suppressions.log`. A record's sequence
 * number is that first number plus its index. Records are appended (fdatasync'ed) before the same
 * change is written to the list, so a change the list has is never missing here. What is confirmed
 * is durable in the list's stream position file (`confirmed`, written with the stream position):
 * records up to it are dropped when the outbox is opened; once nothing is left the file is replaced
 * (rename) by a bare header carrying the next number.
 * Invariant: sequence numbers only grow over the life of the directory, so a confirmation of an old
 * publication (read again after a crash) can never confirm a newer change.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { errnoText, fdatasyncAsync, writeAllAt, writeFileDurable } from "../lib/index.ts";
import {
  checkFileHeader,
  encodeFileHeader,
  FILE_HEADER_BYTES,
  keyOf,
  type LogRecord,
  OUTBOX_MAGIC,
  scanChunk,
  toLogRecord,
} from "./_log.ts";

export const OUTBOX_FILE = "outbox.log";

export class Outbox {
  /** Own changes not yet confirmed, oldest first; records[i] has sequence number base + i. */
  private records: LogRecord[] = [];
  private base: number;
  private size: number;
  /** Key -> the sequence number of its last unconfirmed own change. */
  private readonly pending = new Map<string, number>();

  private constructor(
    private readonly file: string,
    private fd: number,
    private readonly sync: boolean,
    base: number,
    size: number,
  ) {
    this.base = base;
    this.size = size;
  }

  /**
   * Opens (creating) the outbox in `dir`: records up to `confirmed` are dropped, a torn tail is cut
   * (it was never acknowledged).
   */
  static open(dir: string, sync: boolean, confirmed: number): Outbox {
    const file = join(dir, OUTBOX_FILE);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      let size = fs.fstatSync(fd).size;
      if (size < FILE_HEADER_BYTES) {
        fs.writeSync(fd, encodeFileHeader(OUTBOX_MAGIC, confirmed + 1), 0, FILE_HEADER_BYTES, 0);
        fs.ftruncateSync(fd, FILE_HEADER_BYTES);
        if (sync) fs.fsyncSync(fd);
        return new Outbox(file, fd, sync, confirmed + 1, FILE_HEADER_BYTES);
      }
      const bytes = Buffer.allocUnsafe(size);
      fs.readSync(fd, bytes, 0, size, 0);
      const problem = checkFileHeader(bytes.subarray(0, FILE_HEADER_BYTES), OUTBOX_MAGIC);
      if (problem) throw new Error(`${file}: ${problem}`);
      const base = bytes.readUInt32LE(12);
      const box = new Outbox(file, fd, sync, base, size);
      const r = scanChunk(bytes.subarray(FILE_HEADER_BYTES), FILE_HEADER_BYTES, (x) =>
        box.remember(toLogRecord(x)),
      );
      if (FILE_HEADER_BYTES + r.used !== size) {
        size = FILE_HEADER_BYTES + r.used;
        fs.ftruncateSync(fd, size);
        if (sync) fs.fsyncSync(fd);
        box.size = size;
      }
      box.drop(confirmed);
      if (box.records.length === 0 && (box.size !== FILE_HEADER_BYTES || box.base <= confirmed)) {
        box.base = Math.max(box.base, confirmed + 1);
        box.reset();
      }
      return box;
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  private remember(r: LogRecord): void {
    this.records.push(r);
    this.pending.set(keyOf(r.scope, r.address), this.base + this.records.length - 1);
  }

  /**
   * Whether this key has an own change later than sequence number `after` that is not confirmed: it
   * comes later in the stream than what is being read, so it is the one every node ends with.
   */
  has(scope: string, address: string, after = 0): boolean {
    if (this.pending.size === 0) return false;
    const seq = this.pending.get(keyOf(scope, address));
    return seq !== undefined && seq > after;
  }

  get count(): number {
    return this.records.length;
  }

  /** The sequence number of the first unconfirmed record (the next one's when there are none). */
  get firstSeq(): number {
    return this.base;
  }

  /** Unconfirmed records from sequence number `from` on (at most `max`). */
  slice(from: number, max: number): LogRecord[] {
    const i = Math.max(0, from - this.base);
    return this.records.slice(i, i + max);
  }

  /** Appends durably; returns the size before, for `rollback` when the list's own write fails. */
  async append(records: readonly LogRecord[], bytes: Uint8Array): Promise<number> {
    const before = this.size;
    try {
      await writeAllAt(this.fd, bytes, before);
      if (this.sync) await fdatasyncAsync(this.fd);
    } catch (err) {
      try {
        fs.ftruncateSync(this.fd, before);
      } catch {}
      throw new Error(`cannot write the suppression outbox: ${errnoText(err)}`, { cause: err });
    }
    this.size = before + bytes.length;
    for (const r of records) this.remember(r);
    return before;
  }

  /** Undoes the last `append` (the list could not write the same change). */
  rollback(sizeBefore: number, count: number): void {
    try {
      fs.ftruncateSync(this.fd, sizeBefore);
    } catch {}
    this.size = sizeBefore;
    this.records.splice(this.records.length - count, count);
    this.pending.clear();
    for (const [i, r] of this.records.entries()) this.pending.set(keyOf(r.scope, r.address), this.base + i);
  }

  /**
   * Every record up to sequence number `through` is in the cluster's stream and was read back (and
   * `through` is durable in the position file). They leave RAM now; the file is replaced by a bare
   * header once nothing is left.
   */
  confirm(through: number): void {
    this.drop(through);
    if (this.records.length > 0 || this.size === FILE_HEADER_BYTES) return;
    this.reset();
  }

  private reset(): void {
    // A new file with only the header, renamed over the old one: a crash leaves either.
    writeFileDurable(this.file, encodeFileHeader(OUTBOX_MAGIC, this.base), this.sync);
    const fd = fs.openSync(this.file, fs.constants.O_RDWR);
    fs.closeSync(this.fd);
    this.fd = fd;
    this.size = FILE_HEADER_BYTES;
  }

  private drop(through: number): void {
    const n = Math.min(this.records.length, through - this.base + 1);
    if (n <= 0) return;
    for (const r of this.records.splice(0, n)) {
      const k = keyOf(r.scope, r.address);
      if ((this.pending.get(k) ?? 0) < this.base + n) this.pending.delete(k);
    }
    this.base += n;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
