/**
 * The spool (AsyncFS): segment files with group commit, an in-RAM index that is the queue, crash
 * recovery and compaction.
 *
 * Owns: the spool directory (LOCK, segments/), segment life cycle (active, sealed, compacted, deleted),
 * replay of records into the index, the body cache.
 * Does not own: byte layout (_format.ts), batching (_writer.ts), index columns (_index.ts), scheduling.
 * Invariants:
 * - an append or outcome resolves only after its record is durable; the index changes only then;
 * - records are only appended; a message's state is its last MESSAGE record (new or compaction copy,
 *   which carries the current state) followed by its last OUTCOME record (a full snapshot);
 * - a segment is deleted only when nothing live is in it and no existing segment still holds a
 *   record that it supersedes ("pins"): a dead message's MESSAGE record pins the segment holding the
 *   OUTCOME that killed it, a live message's pins the segment holding its last OUTCOME, and a record
 *   left behind by compaction pins the segment holding its copy. So recovery never resurrects mail.
 */
import { join } from "node:path";
import { assert, type Clock, newMessageId, systemClock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import {
  BATCH_RECORD_BYTES,
  DecodeError,
  decodeMessage,
  decodeOutcome,
  encodeFileHeader,
  encodeMessage,
  encodeOutcome,
  encodeBatchHeader,
  FILE_HEADER_BYTES,
  FILE_VERSION,
  joinId,
  type MessageRecord,
  newRecordHead,
  peekRecord,
  RECORD_CRC_START,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  STATE_DELIVERED,
  STATE_FAILED,
  STATE_PENDING,
  splitId,
  TYPE_MESSAGE,
} from "./_format.ts";
import { type FileLayer, nodeFileLayer } from "./_files.ts";
import { SlotIndex } from "./_index.ts";
import { type SpoolLock, takeLock } from "./_lock.ts";
import { quarantineRange } from "./_quarantine.ts";
import { scanSegment } from "./_scan.ts";
import { type BatchEntry, GroupCommit } from "./_writer.ts";
import { SpoolClosedError, SpoolCorruptError, SpoolWriteError } from "./errors.ts";
import type {
  CompactReport,
  DamagedRecord,
  NewMessage,
  OutcomeUpdate,
  RecipientState,
  RecoveryReport,
  SpoolOptions,
  SpoolStats,
  StoredMessage,
  LastTls,
  StoredRecipient,
} from "./types.ts";

const DEFAULT_SEGMENT_BYTES = 64 << 20;
const DEFAULT_BODY_CACHE_BYTES = 64 << 20;
/** A record alone in its batch above this size is written after its BATCH record, not copied behind it. */
const LARGE_RECORD_BYTES = 256 << 10;

const STATE_NAMES: RecipientState[] = ["pending", "delivered", "failed"];

/** What the last attempt left on a recipient: its reply and its TLS. */
interface LastOutcome {
  lastReply?: string;
  lastTls?: LastTls;
}
const STATE_CODES: Record<RecipientState, number> = {
  pending: STATE_PENDING,
  delivered: STATE_DELIVERED,
  failed: STATE_FAILED,
};

export function segmentName(seq: number): string {
  return `${String(seq).padStart(20, "0")}.seg`;
}

interface Segment {
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

class BodyCache {
  private map = new Map<number, Uint8Array>();
  bytes = 0;
  hits = 0;
  misses = 0;
  constructor(private readonly limitBytes: number) {}
  get size(): number {
    return this.map.size;
  }
  set(slot: number, body: Uint8Array): void {
    if (this.limitBytes <= 0 || body.length > this.limitBytes / 8) return;
    this.delete(slot);
    this.map.set(slot, body);
    this.bytes += body.length;
    while (this.bytes > this.limitBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.delete(first.value);
    }
  }
  get(slot: number): Uint8Array | undefined {
    const b = this.map.get(slot);
    if (b) this.hits++;
    else this.misses++;
    return b;
  }
  delete(slot: number): void {
    const b = this.map.get(slot);
    if (!b) return;
    this.map.delete(slot);
    this.bytes -= b.length;
  }
}

export class Spool {
  readonly dir: string;
  readonly recovery: RecoveryReport;

  private readonly segDir: string;
  private readonly files: FileLayer;
  private readonly clock: Clock;
  private readonly log: Logger | undefined;
  private readonly sync: boolean;
  private readonly segmentSizeBytes: number;
  private readonly compactBelow: number;
  private readonly index = new SlotIndex(1024);
  private readonly segments = new Map<number, Segment>();
  private active!: Segment;
  private lastSeq = 0;
  private mustRotate = false;
  private readonly writer: GroupCommit;
  private readonly cache: BodyCache;
  private readonly slotChains = new Map<number, Promise<unknown>>();
  private maintenance: Promise<void> = Promise.resolve();
  private closed = false;
  private lock: SpoolLock | undefined;
  private compactions = 0;
  private readonly metrics: {
    appends?: { inc(l?: Record<string, string>, by?: number): void };
    writeErrors?: { inc(l?: Record<string, string>, by?: number): void };
  } = {};

  private constructor(
    opts: SpoolOptions,
    private readonly readOnly: boolean,
  ) {
    this.dir = opts.dir;
    this.segDir = join(opts.dir, "segments");
    this.files = opts.fileLayer ?? nodeFileLayer;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.log;
    this.sync = opts.sync ?? true;
    this.segmentSizeBytes = opts.segmentSizeBytes ?? DEFAULT_SEGMENT_BYTES;
    this.compactBelow = opts.compactBelowLiveRatio ?? 0.3;
    this.cache = new BodyCache(opts.bodyCacheBytes ?? DEFAULT_BODY_CACHE_BYTES);
    this.writer = new GroupCommit((batch) => this.flush(batch));
    this.recovery = {
      segments: 0,
      records: 0,
      messages: 0,
      deadMessages: 0,
      recipients: { pending: 0, delivered: 0, failed: 0 },
      truncatedBytes: 0,
      damaged: [],
      segmentsReclaimed: 0,
      ms: 0,
    };
    if (opts.metrics) this.registerMetrics(opts.metrics);
  }

  /** Takes LOCK (throws SpoolLockedError naming the holder's pid) and rebuilds the index from the segments. */
  static async open(opts: SpoolOptions): Promise<Spool> {
    const spool = new Spool(opts, false);
    // 0700 both: a spool made by an older version (0755) is tightened too.
    spool.files.mkdirp(opts.dir);
    spool.files.mkdirp(spool.segDir);
    spool.lock = takeLock(opts.dir);
    try {
      await spool.recover();
    } catch (err) {
      spool.closeFds();
      spool.lock.release();
      throw err;
    }
    return spool;
  }

  /** Opens without the lock and without changing a byte: for `verify` and `stats` on an idle spool. */
  static async openReadOnly(opts: SpoolOptions): Promise<Spool> {
    const spool = new Spool(opts, true);
    await spool.recover();
    return spool;
  }

  /** Record counts per segment, for verify. */
  segmentRecords(): { name: string; bytes: number; messageRecords: number; outcomeRecords: number }[] {
    return [...this.segments.values()].map((s) => ({
      name: s.name,
      bytes: s.size,
      messageRecords: s.messageRecords,
      outcomeRecords: s.outcomeRecords,
    }));
  }

  // ---------------------------------------------------------------- recovery

  private async recover(): Promise<void> {
    const t0 = performance.now();
    const rep = this.recovery;
    let names: string[] = [];
    try {
      names = this.files
        .readdir(this.segDir)
        .filter((n) => /^\d{20}\.seg$/.test(n))
        .sort();
    } catch (err) {
      if (!this.readOnly || (err as { code?: string }).code !== "ENOENT") throw err;
    }
    const head = newRecordHead();
    const idx = this.index;
    /** Segments holding records superseded by a compaction copy (an interrupted compaction). */
    const staleSources = new Set<number>();
    /** Segments holding damage: compacted right after the scan, once their bad bytes are quarantined. */
    const damagedSegments = new Set<number>();
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      const seq = Number(name.slice(0, 20));
      const last = i === names.length - 1;
      const path = join(this.segDir, name);
      const fd = this.files.open(path, this.readOnly ? "r" : "r+");
      const seg: Segment = {
        seq,
        name,
        path,
        fd,
        size: 0,
        liveBytes: 0,
        liveCount: 0,
        pins: 0,
        deps: new Map(),
        sealed: !last,
        deleting: false,
        compacting: false,
        messageRecords: 0,
        outcomeRecords: 0,
      };
      this.segments.set(seq, seg);
      this.lastSeq = seq;
      const damage: DamagedRecord[] = [];
      const result = scanSegment(this.files, fd, (buf, off, total, fileOffset) => {
        try {
          peekRecord(buf, off, total, head);
        } catch (err) {
          if (!(err instanceof DecodeError)) throw err;
          damage.push({
            segment: name,
            offset: fileOffset,
            bytes: total,
            reason: `malformed payload: ${err.message}`,
          });
          return;
        }
        let slot = idx.find(head.idMs, head.idCounter);
        if (head.type === TYPE_MESSAGE) {
          seg.messageRecords++;
          if (slot < 0) {
            slot = idx.allocate(head.idMs, head.idCounter);
          } else {
            // A compaction copy: the older record stays behind until its segment goes.
            const from = idx.recSeg[slot]!;
            if (from !== seq) {
              staleSources.add(from);
              this.addDep(from, seq);
            }
          }
          idx.recSeg[slot] = seq;
          idx.recOff[slot] = fileOffset;
          idx.recLen[slot] = total;
          idx.outSeg[slot] = 0;
          idx.dest[slot] = idx.internDestination(head.destination);
          idx.arrival[slot] = head.arrivalMs;
          idx.attempts[slot] = head.attempts;
          idx.nextAttempt[slot] = head.nextAttemptMs;
          idx.size[slot] = head.bodyBytes;
          idx.setStates(slot, head.states, head.recipientCount);
        } else {
          seg.outcomeRecords++;
          if (slot < 0) return; // its message's segments are gone: the message was finished
          if (head.recipientCount !== idx.rcptCount[slot]) {
            damage.push({
              segment: name,
              offset: fileOffset,
              bytes: total,
              reason: `outcome names ${head.recipientCount} recipients, message has ${idx.rcptCount[slot]}`,
            });
            return;
          }
          idx.attempts[slot] = head.attempts;
          idx.nextAttempt[slot] = head.nextAttemptMs;
          idx.outSeg[slot] = seq;
          idx.outOff[slot] = fileOffset;
          idx.outLen[slot] = total;
          idx.setStates(slot, head.states, head.recipientCount);
        }
      });
      rep.records += result.records;
      for (const d of result.damage) damage.push({ segment: name, ...d });
      seg.size = result.fileBytes;
      if (result.tailFrom >= 0) {
        const bytes = result.fileBytes - result.tailFrom;
        if (last) {
          // A batch cut by a crash before its fdatasync returned: never acknowledged, so cut it off.
          rep.truncatedBytes = bytes;
          rep.tornTail = { segment: name, offset: result.tailFrom, bytes, reason: result.tailReason };
          if (!this.readOnly) {
            if (result.tailFrom < FILE_HEADER_BYTES) {
              this.files.truncate(fd, 0);
              await this.files.write(fd, encodeFileHeader(seq), 0);
              seg.size = FILE_HEADER_BYTES;
            } else {
              this.files.truncate(fd, result.tailFrom);
              seg.size = result.tailFrom;
            }
            await this.files.fdatasync(fd);
          }
        } else {
          // A sealed segment was complete when the next one was started: a short end is damage.
          damage.push({
            segment: name,
            offset: result.tailFrom,
            bytes,
            reason: `${result.tailReason} at the end of a sealed segment`,
          });
        }
      }
      if (damage.length > 0) {
        damage.sort((a, b) => a.offset - b.offset);
        damagedSegments.add(seq);
        for (const d of damage) {
          if (!this.readOnly)
            d.quarantine = quarantineRange(this.files, fd, this.dir, name, d.offset, d.bytes);
          rep.damaged.push(d);
        }
      }
      // Appends go to a segment of the current version, and never after damage.
      if (last && !this.readOnly && (result.version < FILE_VERSION || damage.length > 0))
        this.mustRotate = true;
    }
    rep.segments = names.length;

    // Final states: free the dead, account the living.
    for (let slot = 0; slot < idx.highWater; slot++) {
      if (idx.live[slot] !== 1) continue;
      const rs = idx.recSeg[slot]!;
      const os = idx.outSeg[slot]!;
      if (idx.pending[slot] === 0) {
        rep.deadMessages++;
        if (os !== 0 && os !== rs) this.addDep(rs, os);
        idx.release(slot);
        continue;
      }
      const seg = this.segments.get(rs)!;
      seg.liveBytes += idx.recLen[slot]!;
      seg.liveCount++;
      if (os !== 0 && os !== rs) this.segments.get(os)!.pins++;
    }
    const byState = this.countRecipients();
    rep.recipients = byState;
    rep.messages = idx.liveCount;

    if (!this.readOnly) {
      if (names.length === 0) await this.createSegment();
      else this.active = this.segments.get(this.lastSeq)!;
      if (this.mustRotate) {
        // Seal the old or damaged active segment now, so that the loop below can reclaim it.
        await this.createSegment();
        this.mustRotate = false;
      }
      for (const seg of [...this.segments.values()]) {
        if (!seg.sealed) continue;
        if (seg.liveCount === 0 && seg.pins === 0) {
          this.scheduleDelete(seg);
          rep.segmentsReclaimed++;
        } else if ((staleSources.has(seg.seq) || damagedSegments.has(seg.seq)) && seg.liveCount > 0) {
          this.scheduleCompact(seg);
          rep.segmentsReclaimed++;
        }
      }
      await this.settle();
    }
    rep.ms = performance.now() - t0;
    if (rep.damaged.length > 0)
      this.log?.warn(
        `spool ${this.dir}: ${rep.damaged.length} damaged range(s) skipped${this.readOnly ? "" : " and copied to the quarantine"}`,
      );
    this.log?.info(
      `spool ${this.dir}: ${rep.messages} messages in ${rep.segments} segments recovered in ${rep.ms.toFixed(0)} ms`,
    );
  }

  /** Waits until the maintenance chain (deletes, compactions, and what they trigger) is idle. */
  private async settle(): Promise<void> {
    for (;;) {
      const m = this.maintenance;
      await m;
      if (m === this.maintenance) return;
    }
  }

  private addDep(from: number, to: number): void {
    const a = this.segments.get(from);
    const b = this.segments.get(to);
    if (!a || !b) return;
    a.deps.set(to, (a.deps.get(to) ?? 0) + 1);
    b.pins++;
  }

  private countRecipients(): { pending: number; delivered: number; failed: number } {
    const idx = this.index;
    const out = { pending: 0, delivered: 0, failed: 0 };
    for (let slot = 0; slot < idx.highWater; slot++) {
      if (idx.live[slot] !== 1) continue;
      const n = idx.rcptCount[slot]!;
      out.pending += idx.pending[slot]!;
      if (n === 1) continue;
      const s = idx.states.get(slot)!;
      for (let i = 0; i < n; i++) {
        if (s[i] === STATE_DELIVERED) out.delivered++;
        else if (s[i] === STATE_FAILED) out.failed++;
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- segments

  private async createSegment(): Promise<Segment> {
    const seq = this.lastSeq + 1;
    const name = segmentName(seq);
    const path = join(this.segDir, name);
    const fd = this.files.open(path, "w+");
    try {
      await this.files.write(fd, encodeFileHeader(seq), 0);
      if (this.sync) {
        await this.files.fdatasync(fd);
        await this.files.fsyncDir(this.segDir);
      }
    } catch (err) {
      this.files.close(fd);
      await this.files.unlink(path).catch(() => {});
      throw err;
    }
    const seg: Segment = {
      seq,
      name,
      path,
      fd,
      size: FILE_HEADER_BYTES,
      liveBytes: 0,
      liveCount: 0,
      pins: 0,
      deps: new Map(),
      sealed: false,
      deleting: false,
      compacting: false,
      messageRecords: 0,
      outcomeRecords: 0,
    };
    this.lastSeq = seq;
    this.segments.set(seq, seg);
    const old = this.active as Segment | undefined;
    this.active = seg;
    if (old) {
      old.sealed = true;
      this.considerSegment(old);
    }
    return seg;
  }

  /** Deletes a sealed segment with nothing live and no pins, or compacts one mostly dead. */
  private considerSegment(seg: Segment): void {
    if (!seg.sealed || seg.deleting || this.closed) return;
    if (seg.liveCount === 0) {
      if (seg.pins === 0) this.scheduleDelete(seg);
      return;
    }
    const dataBytes = seg.size - FILE_HEADER_BYTES;
    if (!seg.compacting && dataBytes > 0 && seg.liveBytes / dataBytes < this.compactBelow)
      this.scheduleCompact(seg);
  }

  private scheduleDelete(seg: Segment): void {
    if (seg.deleting) return;
    seg.deleting = true;
    this.maintenance = this.maintenance.then(async () => {
      try {
        this.files.close(seg.fd);
        await this.files.unlink(seg.path);
        if (this.sync) await this.files.fsyncDir(this.segDir);
      } catch (err) {
        this.log?.error(`spool: could not delete segment ${seg.name}`, err);
        return;
      }
      this.segments.delete(seg.seq);
      for (const [to, n] of seg.deps) {
        const t = this.segments.get(to);
        if (!t) continue;
        t.pins -= n;
        assert(t.pins >= 0, `segment ${t.name} pins went negative`);
        this.considerSegment(t);
      }
    });
  }

  private scheduleCompact(seg: Segment): void {
    if (seg.compacting) return;
    seg.compacting = true;
    this.maintenance = this.maintenance.then(async () => {
      try {
        await this.compactSegment(seg);
      } catch (err) {
        this.log?.warn(`spool: compaction of ${seg.name} failed; will retry later`, err);
      } finally {
        seg.compacting = false;
      }
    });
  }

  /** Re-appends the live messages of `seg` with their current state, then lets it be deleted. */
  private async compactSegment(seg: Segment): Promise<{ moved: number; deleted: boolean }> {
    if (this.closed || !this.segments.has(seg.seq) || seg.deleting) return { moved: 0, deleted: false };
    const idx = this.index;
    const work: Promise<unknown>[] = [];
    let moved = 0;
    for (let slot = 0; slot < idx.highWater; slot++) {
      if (idx.live[slot] !== 1) continue;
      if (idx.recSeg[slot] === seg.seq) {
        moved++;
        work.push(this.withSlot(slot, () => this.relocate(slot, seg.seq)));
      } else if (idx.outSeg[slot] === seg.seq) {
        work.push(this.withSlot(slot, () => this.copyOutcome(slot, seg.seq)));
      }
    }
    const results = await Promise.allSettled(work);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    this.compactions++;
    const deleted = seg.liveCount === 0 && seg.pins === 0;
    if (deleted) {
      // Runs after this task on the maintenance chain.
      seg.compacting = false;
      this.considerSegment(seg);
    }
    return { moved, deleted };
  }

  private relocate(slot: number, fromSeq: number): Promise<void> {
    const idx = this.index;
    if (idx.live[slot] !== 1 || idx.recSeg[slot] !== fromSeq) return Promise.resolve();
    const m = this.readMessageRecord(slot);
    const last = this.lastOutcomes(slot, m);
    for (let i = 0; i < m.recipients.length; i++) {
      const r = m.recipients[i]!;
      r.state = idx.stateOf(slot, i);
      const { lastReply, lastTls } = last[i] ?? {};
      if (lastReply !== undefined) r.lastReply = lastReply;
      else delete r.lastReply;
      if (lastTls !== undefined) r.lastTls = lastTls;
      else delete r.lastTls;
    }
    m.attempts = idx.attempts[slot]!;
    m.nextAttemptMs = idx.nextAttempt[slot]!;
    const bytes = encodeMessage(m);
    return this.submit(bytes, (seq, off) => {
      const from = this.segments.get(fromSeq)!;
      from.liveBytes -= idx.recLen[slot]!;
      from.liveCount--;
      const os = idx.outSeg[slot]!;
      if (os !== 0 && os !== fromSeq) this.unpin(os);
      const to = this.segments.get(seq)!;
      to.liveBytes += bytes.length;
      to.liveCount++;
      idx.recSeg[slot] = seq;
      idx.recOff[slot] = off;
      idx.recLen[slot] = bytes.length;
      idx.outSeg[slot] = 0;
      // The copy left behind in `from` must not outlive this one.
      this.addDep(fromSeq, seq);
    });
  }

  private copyOutcome(slot: number, fromSeq: number): Promise<void> {
    const idx = this.index;
    if (idx.live[slot] !== 1 || idx.outSeg[slot] !== fromSeq) return Promise.resolve();
    const bytes = this.readRecord(fromSeq, idx.outOff[slot]!, idx.outLen[slot]!).slice();
    return this.submit(bytes, (seq, off) => {
      this.setOutcomeLocation(slot, seq, off, bytes.length);
    });
  }

  private unpin(seq: number): void {
    const s = this.segments.get(seq);
    if (!s) return;
    s.pins--;
    assert(s.pins >= 0, `segment ${s.name} pins went negative`);
    this.considerSegment(s);
  }

  private setOutcomeLocation(slot: number, seq: number, off: number, len: number): void {
    const idx = this.index;
    const rs = idx.recSeg[slot]!;
    const old = idx.outSeg[slot]!;
    if (seq !== rs) this.segments.get(seq)!.pins++;
    idx.outSeg[slot] = seq;
    idx.outOff[slot] = off;
    idx.outLen[slot] = len;
    if (old !== 0 && old !== rs) this.unpin(old);
  }

  // ---------------------------------------------------------------- writing

  private submit<T>(bytes: Uint8Array, apply: (seq: number, off: number) => T): Promise<T> {
    if (this.closed || this.readOnly) return Promise.reject(new SpoolClosedError());
    return this.writer.submit(bytes, apply);
  }

  /** One batch: one write and one fdatasync per segment it touches. */
  private async flush(batch: BatchEntry[]): Promise<void> {
    let i = 0;
    while (i < batch.length) {
      let seg = this.active;
      try {
        if (this.mustRotate || seg.size >= this.segmentSizeBytes) {
          seg = await this.createSegment();
          this.mustRotate = false;
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
        this.mustRotate = true;
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
        this.mustRotate = true;
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
    this.metrics.writeErrors?.inc(undefined, batch.length - from);
    this.log?.error(err.message);
    for (let k = from; k < batch.length; k++) batch[k]!.reject(err);
  }

  /** Runs `fn` after every earlier operation on `slot` has settled. */
  private withSlot<T>(slot: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.slotChains.get(slot);
    const p = prev ? prev.then(fn, fn) : fn();
    this.slotChains.set(slot, p);
    const clear = (): void => {
      if (this.slotChains.get(slot) === p) this.slotChains.delete(slot);
    };
    p.then(clear, clear);
    return p;
  }

  /** Appends a message; resolves after its record is on stable storage (rejects with SpoolWriteError). */
  append(msg: NewMessage): Promise<{ id: string; slot: number }> {
    if (this.closed || this.readOnly) return Promise.reject(new SpoolClosedError());
    if (msg.recipients.length === 0)
      return Promise.reject(new RangeError("a message needs at least one recipient"));
    const now = this.clock.now();
    const id = newMessageId(now);
    const parts = splitId(id)!;
    const arrivalMs = msg.arrivalMs ?? now;
    const attempts = msg.attempts ?? 0;
    const nextAttemptMs = msg.nextAttemptMs ?? arrivalMs;
    const rec: MessageRecord = {
      idMs: parts.ms,
      idCounter: parts.counter,
      arrivalMs,
      attempts,
      nextAttemptMs,
      sender: msg.sender,
      destination: msg.destination,
      recipients: msg.recipients.map((r) => ({ ...r, state: STATE_PENDING })),
      attributes: msg.attributes ?? {},
      body: msg.body,
    };
    const bytes = encodeMessage(rec);
    const destId = this.index.internDestination(msg.destination);
    const n = msg.recipients.length;
    return this.writer.submit(bytes, (seq, off) => {
      const idx = this.index;
      const slot = idx.allocate(parts.ms, parts.counter);
      idx.recSeg[slot] = seq;
      idx.recOff[slot] = off;
      idx.recLen[slot] = bytes.length;
      idx.outSeg[slot] = 0;
      idx.dest[slot] = destId;
      idx.arrival[slot] = arrivalMs;
      idx.attempts[slot] = attempts;
      idx.nextAttempt[slot] = nextAttemptMs;
      idx.size[slot] = msg.body.length;
      idx.rcptCount[slot] = n;
      idx.pending[slot] = n;
      if (n === 1) idx.state0[slot] = STATE_PENDING;
      else idx.states.set(slot, new Uint8Array(n));
      const seg = this.segments.get(seq)!;
      seg.liveBytes += bytes.length;
      seg.liveCount++;
      this.cache.set(slot, bytes.subarray(bytes.length - msg.body.length));
      this.metrics.appends?.inc();
      return { id, slot };
    });
  }

  /** Appends many messages; they share batches with everything else in flight. */
  appendMany(msgs: NewMessage[]): Promise<PromiseSettledResult<{ id: string; slot: number }>[]> {
    return Promise.allSettled(msgs.map((m) => this.append(m)));
  }

  /**
   * Records the result of an attempt, durably. Frees the slot when no recipient is pending
   * (the slot number may then be reused by a later append).
   */
  recordOutcome(slot: number, u: OutcomeUpdate): Promise<void> {
    if (this.closed || this.readOnly) return Promise.reject(new SpoolClosedError());
    return this.withSlot(slot, () => this.writeOutcome(slot, u));
  }

  private writeOutcome(slot: number, u: OutcomeUpdate): Promise<void> {
    const idx = this.index;
    if (idx.live[slot] !== 1) return Promise.reject(new RangeError(`slot ${slot} holds no live message`));
    const n = idx.rcptCount[slot]!;
    const states = new Uint8Array(n);
    for (let i = 0; i < n; i++) states[i] = idx.stateOf(slot, i);
    const last: LastOutcome[] = new Array(n);
    const touched = new Uint8Array(n);
    for (const r of u.recipients) {
      if (!Number.isInteger(r.index) || r.index < 0 || r.index >= n)
        return Promise.reject(new RangeError(`recipient index ${r.index} out of range (0..${n - 1})`));
      states[r.index] = STATE_CODES[r.state];
      last[r.index] = {
        ...(r.reply !== undefined ? { lastReply: r.reply } : {}),
        ...(r.tls !== undefined ? { lastTls: r.tls } : {}),
      };
      touched[r.index] = 1;
    }
    if (touched.includes(0) && (idx.attempts[slot]! > 0 || idx.outSeg[slot] !== 0)) {
      // Keep the last reply and TLS of recipients this attempt did not touch (a full snapshot).
      const prev = this.lastOutcomes(slot, this.readMessageRecord(slot));
      for (let i = 0; i < n; i++) if (!touched[i]) last[i] = prev[i] ?? {};
    }
    const nextAttemptMs = u.nextAttemptMs ?? idx.nextAttempt[slot]!;
    const finished = !states.includes(STATE_CODES.pending);
    const bytes = encodeOutcome({
      idMs: idx.idMs[slot]!,
      idCounter: idx.idCounter[slot]!,
      attempts: u.attempts,
      nextAttemptMs,
      reason: u.reason ?? "",
      // A finished message is never shown again: its TLS notes would be bytes nobody reads.
      recipients: Array.from(states, (state, i) => {
        const l = last[i] ?? {};
        return finished && l.lastTls
          ? { state, ...(l.lastReply !== undefined ? { lastReply: l.lastReply } : {}) }
          : { state, ...l };
      }),
    });
    return this.submit(bytes, (seq, off) => {
      idx.attempts[slot] = u.attempts;
      idx.nextAttempt[slot] = nextAttemptMs;
      idx.setStates(slot, states);
      this.setOutcomeLocation(slot, seq, off, bytes.length);
      if (idx.pending[slot] === 0) this.finish(slot);
    });
  }

  /** The message is done: its record now pins the segment of the outcome that says so. */
  private finish(slot: number): void {
    const idx = this.index;
    const rs = idx.recSeg[slot]!;
    const os = idx.outSeg[slot]!;
    if (os !== 0 && os !== rs) {
      // Turn the live pin (counted in setOutcomeLocation) into a dependency of the record's segment.
      const seg = this.segments.get(rs)!;
      seg.deps.set(os, (seg.deps.get(os) ?? 0) + 1);
    }
    const seg = this.segments.get(rs)!;
    seg.liveBytes -= idx.recLen[slot]!;
    seg.liveCount--;
    this.cache.delete(slot);
    idx.release(slot);
    this.considerSegment(seg);
  }

  // ---------------------------------------------------------------- reading

  private readRecord(seq: number, off: number, len: number): Uint8Array {
    const seg = this.segments.get(seq);
    assert(seg, `segment ${seq} is not open`);
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

  private readMessageRecord(slot: number): MessageRecord {
    const idx = this.index;
    const buf = this.readRecord(idx.recSeg[slot]!, idx.recOff[slot]!, idx.recLen[slot]!);
    return decodeMessage(buf, 0, buf.length);
  }

  /** Each recipient's last reply and TLS: from the latest OUTCOME record, else the MESSAGE record. */
  private lastOutcomes(slot: number, m: MessageRecord): LastOutcome[] {
    const idx = this.index;
    const os = idx.outSeg[slot]!;
    const pick = (r: LastOutcome): LastOutcome => ({
      ...(r.lastReply !== undefined ? { lastReply: r.lastReply } : {}),
      ...(r.lastTls !== undefined ? { lastTls: r.lastTls } : {}),
    });
    if (os === 0) return m.recipients.map(pick);
    const buf = this.readRecord(os, idx.outOff[slot]!, idx.outLen[slot]!);
    return decodeOutcome(buf, 0, buf.length).recipients.map(pick);
  }

  private assertLive(slot: number): void {
    if (this.index.live[slot] !== 1) throw new RangeError(`slot ${slot} holds no live message`);
  }

  private envelopeOf(slot: number, m: MessageRecord): StoredMessage {
    const idx = this.index;
    const last = this.lastOutcomes(slot, m);
    const recipients: StoredRecipient[] = m.recipients.map((r, i) => {
      const out: StoredRecipient = {
        address: r.address,
        state: STATE_NAMES[idx.stateOf(slot, i)] ?? "pending",
      };
      if (r.notify) out.notify = r.notify;
      if (r.orcpt !== undefined) out.orcpt = r.orcpt;
      const { lastReply, lastTls } = last[i] ?? {};
      if (lastReply !== undefined) out.lastReply = lastReply;
      if (lastTls !== undefined) out.lastTls = lastTls;
      return out;
    });
    return {
      id: joinId(idx.idMs[slot]!, idx.idCounter[slot]!),
      slot,
      sender: m.sender,
      destination: m.destination,
      arrivalMs: idx.arrival[slot]!,
      attempts: idx.attempts[slot]!,
      nextAttemptMs: idx.nextAttempt[slot]!,
      sizeBytes: idx.size[slot]!,
      recipients,
      attributes: m.attributes,
    };
  }

  /** The envelope, read back from the segment with positioned reads (throws SpoolCorruptError). */
  readEnvelope(slot: number): StoredMessage {
    this.assertLive(slot);
    return this.envelopeOf(slot, this.readMessageRecord(slot));
  }

  /** Envelope and body; the body comes from the cache of recently written bodies when it is there. */
  async read(slot: number): Promise<{ message: StoredMessage; body: Uint8Array }> {
    this.assertLive(slot);
    const m = this.readMessageRecord(slot);
    const cached = this.cache.get(slot);
    return { message: this.envelopeOf(slot, m), body: cached ?? m.body };
  }

  slotOf(id: string): number | undefined {
    const p = splitId(id);
    if (!p) return undefined;
    const s = this.index.find(p.ms, p.counter);
    return s < 0 ? undefined : s;
  }

  isLive(slot: number): boolean {
    return this.index.live[slot] === 1;
  }
  idOf(slot: number): string {
    return joinId(this.index.idMs[slot]!, this.index.idCounter[slot]!);
  }
  destinationOf(slot: number): string {
    return this.index.destNames[this.index.dest[slot]!]!;
  }
  nextAttemptOf(slot: number): number {
    return this.index.nextAttempt[slot]!;
  }
  attemptsOf(slot: number): number {
    return this.index.attempts[slot]!;
  }
  arrivalOf(slot: number): number {
    return this.index.arrival[slot]!;
  }
  sizeOf(slot: number): number {
    return this.index.size[slot]!;
  }
  pendingRecipientsOf(slot: number): number {
    return this.index.pending[slot]!;
  }
  /** Recipient state by index, without reading the disk. */
  recipientStateOf(slot: number, index: number): RecipientState | undefined {
    return STATE_NAMES[this.index.stateOf(slot, index)];
  }
  get messageCount(): number {
    return this.index.liveCount;
  }

  forEachLive(cb: (slot: number) => void): void {
    const idx = this.index;
    const n = idx.highWater;
    for (let slot = 0; slot < n; slot++) if (idx.live[slot] === 1) cb(slot);
  }

  /** Counts per destination, from one pass over the index. */
  countsByDestination(): Map<
    string,
    { messages: number; recipients: number; bytes: number; oldestMs: number }
  > {
    const idx = this.index;
    const byId = new Map<number, { messages: number; recipients: number; bytes: number; oldestMs: number }>();
    this.forEachLive((slot) => {
      const d = idx.dest[slot]!;
      let c = byId.get(d);
      if (!c) byId.set(d, (c = { messages: 0, recipients: 0, bytes: 0, oldestMs: Number.POSITIVE_INFINITY }));
      c.messages++;
      c.recipients += idx.pending[slot]!;
      c.bytes += idx.size[slot]!;
      if (idx.arrival[slot]! < c.oldestMs) c.oldestMs = idx.arrival[slot]!;
    });
    const out = new Map<string, { messages: number; recipients: number; bytes: number; oldestMs: number }>();
    for (const [d, c] of byId) out.set(idx.destNames[d]!, c);
    return out;
  }

  stats(): SpoolStats {
    let fileBytes = 0;
    let liveBytes = 0;
    for (const s of this.segments.values()) {
      fileBytes += s.size;
      liveBytes += s.liveBytes;
    }
    const gc = this.writer.stats;
    return {
      segments: this.segments.size,
      activeSegment: this.active?.name ?? "",
      fileBytes,
      liveBytes,
      deadBytes: fileBytes - liveBytes,
      messages: this.index.liveCount,
      recipients: this.countRecipients(),
      destinations: this.countDestinations(),
      groupCommit: {
        batches: gc.batches,
        records: gc.records,
        bytes: gc.bytes,
        recordsPerBatch: gc.batches ? gc.records / gc.batches : 0,
        largestBatchRecords: gc.largestBatchRecords,
        queued: this.writer.queued,
      },
      bodyCache: {
        entries: this.cache.size,
        bytes: this.cache.bytes,
        hits: this.cache.hits,
        misses: this.cache.misses,
      },
      compactions: this.compactions,
    };
  }

  private countDestinations(): number {
    const seen = new Set<number>();
    this.forEachLive((slot) => seen.add(this.index.dest[slot]!));
    return seen.size;
  }

  /** Compacts every sealed segment below the live ratio and deletes every empty one, now. */
  async compact(): Promise<CompactReport> {
    if (this.closed || this.readOnly) throw new SpoolClosedError();
    await this.settle();
    const report: CompactReport = {
      segmentsCompacted: 0,
      messagesMoved: 0,
      segmentsDeleted: 0,
      bytesReclaimed: 0,
    };
    const before = new Map([...this.segments.values()].map((s) => [s.seq, s.size]));
    for (const seg of [...this.segments.values()]) {
      if (!seg.sealed || seg.deleting) continue;
      const dataBytes = seg.size - FILE_HEADER_BYTES;
      if (seg.liveCount > 0 && dataBytes > 0 && seg.liveBytes / dataBytes < this.compactBelow) {
        seg.compacting = true;
        try {
          const r = await this.compactSegment(seg);
          report.segmentsCompacted++;
          report.messagesMoved += r.moved;
        } finally {
          seg.compacting = false;
        }
      }
      this.considerSegment(seg);
    }
    await this.settle();
    for (const [seq, size] of before) {
      if (!this.segments.has(seq)) {
        report.segmentsDeleted++;
        report.bytesReclaimed += size;
      }
    }
    return report;
  }

  /** Waits for in-flight batches and maintenance, closes the files and releases LOCK. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.writer.drained();
    await Promise.allSettled([...this.slotChains.values()]);
    this.closed = true;
    await this.settle();
    this.closeFds();
    this.lock?.release();
  }

  private closeFds(): void {
    for (const s of this.segments.values()) {
      if (s.deleting) continue;
      try {
        this.files.close(s.fd);
      } catch {}
    }
  }

  /** Segment bookkeeping, for verify and tests. */
  segmentInfo(): {
    name: string;
    bytes: number;
    liveBytes: number;
    liveMessages: number;
    pins: number;
    sealed: boolean;
  }[] {
    return [...this.segments.values()].map((s) => ({
      name: s.name,
      bytes: s.size,
      liveBytes: s.liveBytes,
      liveMessages: s.liveCount,
      pins: s.pins,
      sealed: s.sealed,
    }));
  }

  private registerMetrics(m: Metrics): void {
    this.metrics.appends = m.counter("mta_spool_appends_total", "Messages appended durably to the spool");
    this.metrics.writeErrors = m.counter(
      "mta_spool_write_errors_total",
      "Records whose batch failed to write",
    );
    m.gauge("mta_spool_messages", "Live messages in the spool", (set) => set(this.index.liveCount));
    m.gauge("mta_spool_segments", "Segment files in the spool", (set) => set(this.segments.size));
    m.gauge("mta_spool_batches_total", "Group-commit batches written", (set) =>
      set(this.writer.stats.batches),
    );
  }
}

export type { DamagedRecord };
