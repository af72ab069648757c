/**
 * Compaction: reclaiming sealed segments that are mostly dead by re-appending what is still live.
 *
 * Owns: the policy (a sealed segment whose live bytes fall below `compactBelow` of its data), moving a
 * live message (a new MESSAGE record carrying its current state, replies and TLS notes) and copying a
 * live message's last OUTCOME out of the segment, `Spool.compact`'s report, the count of compactions.
 * Does not own: deleting the emptied segment (_segments.ts, once no pins are left), writing (the
 * group commit, through `submit`), the order of operations on one slot (the spool's `withSlot`).
 * Invariants: a move goes through the slot's chain, so it never races an outcome of the same message;
 * the copy left behind pins the segment holding the new record (`addDep`), so the old one can never
 * outlive it and be replayed after it; a failed compaction leaves the segment as it was, to retry.
 */
import type { Logger } from "../observe/index.ts";
import { encodeMessage, FILE_HEADER_BYTES } from "./_format.ts";
import type { SlotIndex } from "./_index.ts";
import { lastOutcomes, readMessageRecord } from "./_read.ts";
import type { Segment, Segments } from "./_segments.ts";
import type { CompactReport } from "./types.ts";

export interface CompactorOptions {
  segments: Segments;
  index: SlotIndex;
  /** Compact a sealed segment whose live bytes are below this share of its data bytes. */
  compactBelow: number;
  log: Logger | undefined;
  /** Appends a record durably; `apply` runs once it is at (segment, offset). */
  submit: <T>(bytes: Uint8Array, apply: (seq: number, off: number) => T) => Promise<T>;
  /** Runs `fn` after every earlier operation on `slot` has settled. */
  withSlot: <T>(slot: number, fn: () => Promise<T>) => Promise<T>;
}

export class Compactor {
  /** Segments compacted since the spool was opened. */
  compactions = 0;
  private readonly segs: Segments;
  private readonly index: SlotIndex;
  private readonly compactBelow: number;
  private readonly log: Logger | undefined;
  private readonly submit: CompactorOptions["submit"];
  private readonly withSlot: CompactorOptions["withSlot"];

  constructor(opts: CompactorOptions) {
    this.segs = opts.segments;
    this.index = opts.index;
    this.compactBelow = opts.compactBelow;
    this.log = opts.log;
    this.submit = opts.submit;
    this.withSlot = opts.withSlot;
  }

  /** Whether `seg` (sealed, live messages left) is dead enough to be worth compacting. */
  worthIt(seg: Segment): boolean {
    const dataBytes = seg.size - FILE_HEADER_BYTES;
    return seg.liveCount > 0 && dataBytes > 0 && seg.liveBytes / dataBytes < this.compactBelow;
  }

  /** A sealed segment's accounting changed: compact it in the background when it is worth it. */
  consider(seg: Segment): void {
    if (!seg.compacting && this.worthIt(seg)) this.schedule(seg);
  }

  /** Queues a compaction of `seg` on the maintenance chain (recovery also uses it for damaged segments). */
  schedule(seg: Segment): void {
    if (seg.compacting) return;
    seg.compacting = true;
    this.segs.enqueue(async () => {
      try {
        await this.compactSegment(seg);
      } catch (err) {
        this.log?.warn(`spool: compaction of ${seg.name} failed; will retry later`, err);
      } finally {
        seg.compacting = false;
      }
    });
  }

  /** Compacts every sealed segment below the live ratio and deletes every empty one, now. */
  async compactAll(): Promise<CompactReport> {
    const segs = this.segs;
    await segs.settle();
    const report: CompactReport = {
      segmentsCompacted: 0,
      messagesMoved: 0,
      segmentsDeleted: 0,
      bytesReclaimed: 0,
    };
    const before = new Map([...segs.bySeq.values()].map((s) => [s.seq, s.size]));
    for (const seg of [...segs.bySeq.values()]) {
      if (!seg.sealed || seg.deleting) continue;
      if (this.worthIt(seg)) {
        seg.compacting = true;
        try {
          const r = await this.compactSegment(seg);
          report.segmentsCompacted++;
          report.messagesMoved += r.moved;
        } finally {
          seg.compacting = false;
        }
      }
      segs.consider(seg);
    }
    await segs.settle();
    for (const [seq, size] of before) {
      if (!segs.bySeq.has(seq)) {
        report.segmentsDeleted++;
        report.bytesReclaimed += size;
      }
    }
    return report;
  }

  /** Re-appends the live messages of `seg` with their current state, then lets it be deleted. */
  private async compactSegment(seg: Segment): Promise<{ moved: number; deleted: boolean }> {
    const segs = this.segs;
    if (segs.stopped || !segs.bySeq.has(seg.seq) || seg.deleting) return { moved: 0, deleted: false };
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
      segs.consider(seg);
    }
    return { moved, deleted };
  }

  private relocate(slot: number, fromSeq: number): Promise<void> {
    const idx = this.index;
    const segs = this.segs;
    if (idx.live[slot] !== 1 || idx.recSeg[slot] !== fromSeq) return Promise.resolve();
    const m = readMessageRecord(segs, idx, slot);
    const last = lastOutcomes(segs, idx, slot, m);
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
      const from = segs.bySeq.get(fromSeq)!;
      from.liveBytes -= idx.recLen[slot]!;
      from.liveCount--;
      const os = idx.outSeg[slot]!;
      if (os !== 0 && os !== fromSeq) segs.unpin(os);
      const to = segs.bySeq.get(seq)!;
      to.liveBytes += bytes.length;
      to.liveCount++;
      idx.recSeg[slot] = seq;
      idx.recOff[slot] = off;
      idx.recLen[slot] = bytes.length;
      idx.outSeg[slot] = 0;
      // The copy left behind in `from` must not outlive this one.
      segs.addDep(fromSeq, seq);
    });
  }

  private copyOutcome(slot: number, fromSeq: number): Promise<void> {
    const idx = this.index;
    if (idx.live[slot] !== 1 || idx.outSeg[slot] !== fromSeq) return Promise.resolve();
    const bytes = this.segs.readRecord(fromSeq, idx.outOff[slot]!, idx.outLen[slot]!).slice();
    return this.submit(bytes, (seq, off) => {
      this.segs.placeOutcome(slot, seq, off, bytes.length);
    });
  }
}
