/**
 * The segment files and their life cycle: active, sealed, compacted, deleted.
 *
 * Owns: `segments/` (listing, creating, opening, deleting `<20-digit sequence>.seg`), which segment is
 * active, each segment's live bytes and count, the pins between segments, the maintenance chain that
 * deletes and compacts one task at a time, positioned reads of one record with its checksum checked.
 * Does not own: what a record means (_format.ts), writing batches (_batches.ts), choosing what to
 * compact and moving it (_compact.ts), replaying records (_recover.ts), the index columns (_index.ts).
 * Invariants:
 * - a segment is deleted only when nothing live is in it and no existing segment still holds a
 *   record that it supersedes ("pins"): a dead message's MESSAGE record pins the segment holding the
 *   OUTCOME that killed it, a live message's pins the segment holding its last OUTCOME, and a record
 *   left behind by compaction pins the segment holding its copy. So recovery never resurrects mail;
 * - a segment's `pins` counts the `deps` entries of other segments naming it plus the live messages
 *   elsewhere whose last OUTCOME it holds; it never goes negative (asserted);
 * - maintenance tasks (deletes, compactions) run one after another, and none starts once `stopped`.
 */
import { join } from "node:path";
import { assert } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import {
  encodeFileHeader,
  FILE_HEADER_BYTES,
  RECORD_CRC_START,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
} from "./_format.ts";
import type { FileLayer } from "./_files.ts";
import type { SlotIndex } from "./_index.ts";
import { SpoolCorruptError } from "./errors.ts";

export function segmentName(seq: number): string {
  return `${String(seq).padStart(20, "0")}.seg`;
}

export interface Segment {
  seq: number;
  name: string;
  path: string;
  fd: number;
  /** Bytes durably written (the file size). */
  size: number;
  liveBytes: number;
  liveCount: number;
  /** Records in other existing segments that this segment's records supersede. */
  pins: number;
  /** Segments this one pins: seq -> count. */
  deps: Map<number, number>;
  sealed: boolean;
  deleting: boolean;
  compacting: boolean;
  /** Counts for verify. */
  messageRecords: number;
  outcomeRecords: number;
}

export interface SegmentsOptions {
  /** The spool's `segments/` directory. */
  dir: string;
  files: FileLayer;
  index: SlotIndex;
  readOnly: boolean;
  /** fdatasync new segments and sync the directory after creating or deleting one. */
  sync: boolean;
  log: Logger | undefined;
}

export class Segments {
  readonly bySeq = new Map<number, Segment>();
  /** Where appends go; unset in a read-only spool. */
  active!: Segment;
  lastSeq = 0;
  /** The next batch starts a new segment (after a write failure, damage, or an old format version). */
  mustRotate = false;
  /** Set by close: no delete or compaction starts from now on. */
  stopped = false;
  /**
   * Called for a sealed segment that still holds live messages whenever its accounting changed
   * (the compactor decides whether it is worth compacting).
   */
  onLiveSealed: (seg: Segment) => void = () => {};

  private readonly dir: string;
  private readonly files: FileLayer;
  private readonly index: SlotIndex;
  private readonly readOnly: boolean;
  private readonly sync: boolean;
  private readonly log: Logger | undefined;
  private maintenance: Promise<void> = Promise.resolve();

  constructor(opts: SegmentsOptions) {
    this.dir = opts.dir;
    this.files = opts.files;
    this.index = opts.index;
    this.readOnly = opts.readOnly;
    this.sync = opts.sync;
    this.log = opts.log;
  }

  /** Segment file names in log order; none when a read-only spool has no `segments/` yet. */
  names(): string[] {
    try {
      return this.files
        .readdir(this.dir)
        .filter((n) => /^\d{20}\.seg$/.test(n))
        .sort();
    } catch (err) {
      if (!this.readOnly || (err as { code?: string }).code !== "ENOENT") throw err;
      return [];
    }
  }

  /** Opens an existing segment (for recovery) and makes it the last one; its size is set by the scan. */
  openExisting(name: string, sealed: boolean): Segment {
    const seq = Number(name.slice(0, 20));
    const path = join(this.dir, name);
    const fd = this.files.open(path, this.readOnly ? "r" : "r+");
    const seg = newSegment(seq, name, path, fd, 0, sealed);
    this.bySeq.set(seq, seg);
    this.lastSeq = seq;
    return seg;
  }

  /** Creates the next segment, durably, makes it active and seals the one before. */
  async create(): Promise<Segment> {
    const seq = this.lastSeq + 1;
    const name = segmentName(seq);
    const path = join(this.dir, name);
    const fd = this.files.open(path, "w+");
    try {
      await this.files.write(fd, encodeFileHeader(seq), 0);
      if (this.sync) {
        await this.files.fdatasync(fd);
        await this.files.fsyncDir(this.dir);
      }
    } catch (err) {
      this.files.close(fd);
      await this.files.unlink(path).catch(() => {});
      throw err;
    }
    const seg = newSegment(seq, name, path, fd, FILE_HEADER_BYTES, false);
    this.lastSeq = seq;
    this.bySeq.set(seq, seg);
    const old = this.active as Segment | undefined;
    this.active = seg;
    if (old) {
      old.sealed = true;
      this.consider(old);
    }
    return seg;
  }

  /** Deletes a sealed segment with nothing live and no pins; hands one with live messages to the compactor. */
  consider(seg: Segment): void {
    if (!seg.sealed || seg.deleting || this.stopped) return;
    if (seg.liveCount === 0) {
      if (seg.pins === 0) this.scheduleDelete(seg);
      return;
    }
    this.onLiveSealed(seg);
  }

  scheduleDelete(seg: Segment): void {
    if (seg.deleting) return;
    seg.deleting = true;
    this.enqueue(async () => {
      try {
        this.files.close(seg.fd);
        await this.files.unlink(seg.path);
        if (this.sync) await this.files.fsyncDir(this.dir);
      } catch (err) {
        this.log?.error(`spool: could not delete segment ${seg.name}`, err);
        return;
      }
      this.bySeq.delete(seg.seq);
      for (const [to, n] of seg.deps) {
        const t = this.bySeq.get(to);
        if (!t) continue;
        t.pins -= n;
        assert(t.pins >= 0, () => `segment ${t.name} pins went negative`);
        this.consider(t);
      }
    });
  }

  /** Runs `task` on the maintenance chain, after every task queued before it. */
  enqueue(task: () => Promise<void>): void {
    this.maintenance = this.maintenance.then(task);
  }

  /** Waits until the maintenance chain (deletes, compactions, and what they trigger) is idle. */
  async settle(): Promise<void> {
    for (;;) {
      const m = this.maintenance;
      await m;
      if (m === this.maintenance) return;
    }
  }

  /** A record in `from` is superseded by one in `to`: `to` must outlive it. */
  addDep(from: number, to: number): void {
    const a = this.bySeq.get(from);
    const b = this.bySeq.get(to);
    if (!a || !b) return;
    a.deps.set(to, (a.deps.get(to) ?? 0) + 1);
    b.pins++;
  }

  unpin(seq: number): void {
    const s = this.bySeq.get(seq);
    if (!s) return;
    s.pins--;
    assert(s.pins >= 0, () => `segment ${s.name} pins went negative`);
    this.consider(s);
  }

  /** The slot's last OUTCOME is now at (seq, off): it pins its segment instead of the old one. */
  placeOutcome(slot: number, seq: number, off: number, len: number): void {
    const idx = this.index;
    const rs = idx.recSeg[slot]!;
    const old = idx.outSeg[slot]!;
    if (seq !== rs) this.bySeq.get(seq)!.pins++;
    idx.outSeg[slot] = seq;
    idx.outOff[slot] = off;
    idx.outLen[slot] = len;
    if (old !== 0 && old !== rs) this.unpin(old);
  }

  /** The message in `slot` is done: its record now pins the segment of the outcome that says so. */
  retire(slot: number): void {
    const idx = this.index;
    const rs = idx.recSeg[slot]!;
    const os = idx.outSeg[slot]!;
    const seg = this.bySeq.get(rs)!;
    // Turn the live pin (counted in placeOutcome) into a dependency of the record's segment.
    if (os !== 0 && os !== rs) seg.deps.set(os, (seg.deps.get(os) ?? 0) + 1);
    seg.liveBytes -= idx.recLen[slot]!;
    seg.liveCount--;
    idx.release(slot);
    this.consider(seg);
  }

  /** One record's bytes, read back with a positioned read (throws SpoolCorruptError). */
  readRecord(seq: number, off: number, len: number): Uint8Array {
    const seg = this.bySeq.get(seq);
    assert(seg, () => `segment ${seq} is not open`);
    const buf = new Uint8Array(len);
    const n = this.files.readSync(seg.fd, buf, 0, len, off);
    const dv = new DataView(buf.buffer);
    if (
      n !== len ||
      len < RECORD_HEADER_BYTES ||
      dv.getUint32(0, true) !== RECORD_MAGIC ||
      Bun.hash.crc32(buf.subarray(RECORD_CRC_START)) >>> 0 !== dv.getUint32(4, true)
    )
      throw new SpoolCorruptError(`record at ${seg.name}:${off} fails its checksum`, seg.name, off);
    return buf;
  }

  closeFds(): void {
    for (const s of this.bySeq.values()) {
      if (s.deleting) continue;
      try {
        this.files.close(s.fd);
      } catch {}
    }
  }
}

function newSegment(
  seq: number,
  name: string,
  path: string,
  fd: number,
  size: number,
  sealed: boolean,
): Segment {
  return {
    seq,
    name,
    path,
    fd,
    size,
    liveBytes: 0,
    liveCount: 0,
    pins: 0,
    deps: new Map(),
    sealed,
    deleting: false,
    compacting: false,
    messageRecords: 0,
    outcomeRecords: 0,
  };
}
