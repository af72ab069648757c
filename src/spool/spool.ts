/**
 * The spool (AsyncFS): accepted mail on disk until it is delivered, and the in-RAM index that is the
 * queue. `Spool` composes the parts and is the one object other modules hold.
 *
 * Owns: opening and closing (LOCK, recovery, the order of shutdown), appending a message and
 * recording an outcome (the record, then the index change once it is durable), the order of
 * operations on one slot, reading a message back, the per-slot accessors, stats and metrics.
 * Does not own: the segment files and their pins (_segments.ts), writing batches (_batches.ts,
 * _writer.ts), recovery (_recover.ts), compaction (_compact.ts), reads (_read.ts), the index columns
 * (_index.ts), the byte layout (_format.ts), scheduling.
 * Invariants:
 * - an append or outcome resolves only after its record is durable; the index changes only then;
 * - records are only appended; a message's state is its last MESSAGE record followed by its last
 *   OUTCOME record (a full snapshot of every recipient);
 * - operations on one slot (outcomes, compaction moves) run one after another (`withSlot`).
 */
import { join } from "node:path";
import { type Clock, joinMessageId, newMessageId, splitMessageId, systemClock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { BatchWriter } from "./_batches.ts";
import { BodyCache } from "./_cache.ts";
import { Compactor } from "./_compact.ts";
import { decodeMessage, encodeMessage, encodeOutcome, type MessageRecord, STATE_PENDING } from "./_format.ts";
import { type FileLayer, nodeFileLayer } from "./_files.ts";
import { SlotIndex } from "./_index.ts";
import { type SpoolLock, takeLock } from "./_lock.ts";
import {
  envelopeOf,
  type LastOutcome,
  lastOutcomes,
  readMessageRecord,
  STATE_CODES,
  STATE_NAMES,
} from "./_read.ts";
import { recover } from "./_recover.ts";
import { type Segment, Segments } from "./_segments.ts";
import { GroupCommit } from "./_writer.ts";
import { SpoolClosedError } from "./errors.ts";
import type {
  CompactReport,
  NewMessage,
  OutcomeUpdate,
  RecipientState,
  RecoveryReport,
  SpoolOptions,
  SpoolStats,
  StoredMessage,
} from "./types.ts";

const DEFAULT_SEGMENT_BYTES = 64 << 20;
const DEFAULT_BODY_CACHE_BYTES = 64 << 20;

export class Spool {
  readonly dir: string;
  readonly recovery: RecoveryReport;

  private readonly files: FileLayer;
  private readonly clock: Clock;
  private readonly log: Logger | undefined;
  private readonly index = new SlotIndex(1024);
  private readonly segs: Segments;
  /** `segs.bySeq`, held here too so that the append path reaches a segment in one lookup. */
  private readonly segments: Map<number, Segment>;
  private readonly batches: BatchWriter;
  private readonly compactor: Compactor;
  private readonly writer: GroupCommit;
  private readonly cache: BodyCache;
  private readonly slotChains = new Map<number, Promise<unknown>>();
  private closed = false;
  private lock: SpoolLock | undefined;
  private readonly metrics: {
    appends?: { inc(l?: Record<string, string>, by?: number): void };
  } = {};

  private constructor(
    opts: SpoolOptions,
    private readonly readOnly: boolean,
  ) {
    this.dir = opts.dir;
    this.files = opts.fileLayer ?? nodeFileLayer;
    this.clock = opts.clock ?? systemClock;
    this.log = opts.log;
    const sync = opts.sync ?? true;
    this.segs = new Segments({
      dir: join(opts.dir, "segments"),
      files: this.files,
      index: this.index,
      readOnly,
      sync,
      log: opts.log,
    });
    this.segments = this.segs.bySeq;
    this.batches = new BatchWriter({
      segments: this.segs,
      files: this.files,
      sync,
      segmentSizeBytes: opts.segmentSizeBytes ?? DEFAULT_SEGMENT_BYTES,
      log: opts.log,
    });
    this.compactor = new Compactor({
      segments: this.segs,
      index: this.index,
      compactBelow: opts.compactBelowLiveRatio ?? 0.3,
      log: opts.log,
      submit: (bytes, apply) => this.submit(bytes, apply),
      withSlot: (slot, fn) => this.withSlot(slot, fn),
    });
    this.segs.onLiveSealed = (seg) => this.compactor.consider(seg);
    this.cache = new BodyCache(opts.bodyCacheBytes ?? DEFAULT_BODY_CACHE_BYTES);
    this.writer = new GroupCommit((batch) => this.batches.flush(batch));
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
    spool.files.mkdirp(join(opts.dir, "segments"));
    spool.lock = takeLock(opts.dir);
    try {
      await spool.recover();
    } catch (err) {
      spool.segs.closeFds();
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

  private recover(): Promise<void> {
    return recover({
      dir: this.dir,
      files: this.files,
      index: this.index,
      segments: this.segs,
      readOnly: this.readOnly,
      log: this.log,
      compact: (seg) => this.compactor.schedule(seg),
      report: this.recovery,
    });
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

  // ---------------------------------------------------------------- writing

  private submit<T>(bytes: Uint8Array, apply: (seq: number, off: number) => T): Promise<T> {
    if (this.closed || this.readOnly) return Promise.reject(new SpoolClosedError());
    return this.writer.submit(bytes, apply);
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
    const parts = splitMessageId(id)!;
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
      this.cache.set(slot, bytes);
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
      const prev = lastOutcomes(this.segs, idx, slot, readMessageRecord(this.segs, idx, slot));
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
      this.segs.placeOutcome(slot, seq, off, bytes.length);
      // The cached record served the first attempt; from now on the last replies live in OUTCOME
      // records and compaction may rewrite the MESSAGE record: later reads go to the disk.
      this.cache.delete(slot);
      if (idx.pending[slot] === 0) this.finish(slot);
    });
  }

  /** The message is done: out of the cache and the index; its record now pins the outcome's segment. */
  private finish(slot: number): void {
    this.cache.delete(slot);
    this.segs.retire(slot);
  }

  // ---------------------------------------------------------------- reading

  private assertLive(slot: number): void {
    if (this.index.live[slot] !== 1) throw new RangeError(`slot ${slot} holds no live message`);
  }

  /** The envelope, read back from the segment with positioned reads (throws SpoolCorruptError). */
  readEnvelope(slot: number): StoredMessage {
    this.assertLive(slot);
    return envelopeOf(this.segs, this.index, slot, readMessageRecord(this.segs, this.index, slot));
  }

  /** Envelope and body; the body comes from the cache of recently written bodies when it is there. */
  async read(slot: number): Promise<{ message: StoredMessage; body: Uint8Array }> {
    this.assertLive(slot);
    // A message appended a moment ago is decoded from the record it was appended as: no read back.
    const cached = this.cache.get(slot);
    const m = cached
      ? decodeMessage(cached, 0, cached.length)
      : readMessageRecord(this.segs, this.index, slot);
    return { message: envelopeOf(this.segs, this.index, slot, m), body: m.body };
  }

  slotOf(id: string): number | undefined {
    const p = splitMessageId(id);
    if (!p) return undefined;
    const s = this.index.find(p.ms, p.counter);
    return s < 0 ? undefined : s;
  }

  isLive(slot: number): boolean {
    return this.index.live[slot] === 1;
  }
  idOf(slot: number): string {
    return joinMessageId(this.index.idMs[slot]!, this.index.idCounter[slot]!);
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
    return this.index.countsByDestination();
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
      activeSegment: this.segs.active?.name ?? "",
      fileBytes,
      liveBytes,
      deadBytes: fileBytes - liveBytes,
      messages: this.index.liveCount,
      recipients: this.index.countRecipients(),
      destinations: this.index.countDestinations(),
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
      compactions: this.compactor.compactions,
    };
  }

  /** Compacts every sealed segment below the live ratio and deletes every empty one, now. */
  async compact(): Promise<CompactReport> {
    if (this.closed || this.readOnly) throw new SpoolClosedError();
    return this.compactor.compactAll();
  }

  /** Waits for in-flight batches and maintenance, closes the files and releases LOCK. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.writer.drained();
    await Promise.allSettled([...this.slotChains.values()]);
    this.closed = true;
    this.segs.stopped = true;
    await this.segs.settle();
    this.segs.closeFds();
    this.lock?.release();
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
    this.batches.writeErrors = m.counter(
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
