/**
 * Writing one group-commit batch to the segments: the BATCH record, one write and one fdatasync per
 * segment touched, rotation, and what a failed write leaves behind.
 *
 * Owns: `BatchWriter.flush` (the callback `GroupCommit` in _writer.ts calls with each batch): which
 * part of a batch goes to which segment, the write buffer, settling each entry at its (segment,
 * offset), the `mta_spool_write_errors_total` count.
 * Does not own: gathering entries into batches (_writer.ts), record encoding (_format.ts), creating
 * and sealing segments (_segments.ts).
 * Invariants:
 * - an entry's `apply` runs only after its bytes and the BATCH record before them are on stable
 *   storage (`sync: false` skips the fdatasync, for tests and benchmarks only);
 * - a segment grows past `segmentSizeBytes` only by one record larger than that alone in a segment;
 * - a failed write or fdatasync fails every entry not yet settled, cuts the file back to where the
 *   batch started and sends the next batch to a fresh segment, since after a failed fdatasync the
 *   state of the file's dirty pages is unknown.
 */
import type { Logger } from "../observe/index.ts";
import { BATCH_RECORD_BYTES, encodeBatchHeader, FILE_HEADER_BYTES } from "./_format.ts";
import type { FileLayer } from "./_files.ts";
import type { Segments } from "./_segments.ts";
import type { BatchEntry } from "./_writer.ts";
import { SpoolWriteError } from "./errors.ts";

/** A record alone in its batch above this size is written after its BATCH record, not copied behind it. */
const LARGE_RECORD_BYTES = 256 << 10;

export interface BatchWriterOptions {
  segments: Segments;
  files: FileLayer;
  sync: boolean;
  segmentSizeBytes: number;
  log: Logger | undefined;
}

export class BatchWriter {
  /** Set by the spool when it has metrics. */
  writeErrors: { inc(l?: Record<string, string>, by?: number): void } | undefined;
  private readonly segs: Segments;
  private readonly files: FileLayer;
  private readonly sync: boolean;
  private readonly segmentSizeBytes: number;
  private readonly log: Logger | undefined;

  constructor(opts: BatchWriterOptions) {
    this.segs = opts.segments;
    this.files = opts.files;
    this.sync = opts.sync;
    this.segmentSizeBytes = opts.segmentSizeBytes;
    this.log = opts.log;
  }

  /** One batch: one write and one fdatasync per segment it touches. */
  async flush(batch: BatchEntry[]): Promise<void> {
    const segs = this.segs;
    let i = 0;
    while (i < batch.length) {
      let seg = segs.active;
      try {
        if (segs.mustRotate || seg.size >= this.segmentSizeBytes) {
          seg = await segs.create();
          segs.mustRotate = false;
        }
      } catch (err) {
        this.failEntries(batch, i, err, "creating a segment");
        return;
      }
      // Each batch (the part of it that goes to this segment) starts with a BATCH record saying how
      // many bytes follow: recovery tells a batch a crash cut from one damaged after its fdatasync.
      const start = seg.size;
      let bytes = BATCH_RECORD_BYTES;
      let j = i;
      while (j < batch.length) {
        const n = batch[j]!.bytes.length;
        const empty = start === FILE_HEADER_BYTES && j === i;
        if (!empty && start + bytes + n > this.segmentSizeBytes) break;
        bytes += n;
        j++;
      }
      if (j === i) {
        segs.mustRotate = true;
        continue;
      }
      const header = encodeBatchHeader(bytes - BATCH_RECORD_BYTES, j - i);
      // One write of header and records, except for one large record, which is not copied.
      const pieces: Uint8Array[] = [];
      if (j - i === 1 && bytes > LARGE_RECORD_BYTES) pieces.push(header, batch[i]!.bytes);
      else {
        const buf = new Uint8Array(bytes);
        buf.set(header, 0);
        let o = BATCH_RECORD_BYTES;
        for (let k = i; k < j; k++) {
          buf.set(batch[k]!.bytes, o);
          o += batch[k]!.bytes.length;
        }
        pieces.push(buf);
      }
      try {
        let at = start;
        for (const p of pieces) {
          await this.files.write(seg.fd, p, at);
          at += p.length;
        }
        if (this.sync) await this.files.fdatasync(seg.fd);
      } catch (err) {
        // Nothing of this batch was acknowledged: cut it off, and write the next batch to a fresh
        // segment, since after a failed fdatasync the state of this file's dirty pages is unknown.
        try {
          this.files.truncate(seg.fd, start);
        } catch {}
        segs.mustRotate = true;
        this.failEntries(batch, i, err, "writing a batch");
        return;
      }
      seg.size = start + bytes;
      let off = start + BATCH_RECORD_BYTES;
      for (let k = i; k < j; k++) {
        const e = batch[k]!;
        try {
          e.resolve(e.apply(seg.seq, off));
        } catch (err) {
          e.reject(err);
        }
        off += e.bytes.length;
      }
      i = j;
    }
  }

  private failEntries(batch: BatchEntry[], from: number, cause: unknown, what: string): void {
    const code = (cause as { code?: string } | undefined)?.code;
    const err = new SpoolWriteError(`spool: ${what} failed${code ? ` (${code})` : ""}`, cause);
    this.writeErrors?.inc(undefined, batch.length - from);
    this.log?.error(err.message);
    for (let k = from; k < batch.length; k++) batch[k]!.reject(err);
  }
}
