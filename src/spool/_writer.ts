/**
 * Group commit: gathers the records submitted while a batch is being made durable into the next batch.
 *
 * Owns: the submission queue, the single in-flight batch, batch statistics.
 * Does not own: where the bytes go or how (the `flush` callback, _batches.ts, does one write and one
 * fdatasync per segment touched), record encoding (_format.ts).
 * Invariant: an entry's promise settles only after `flush` has settled it; batches never overlap, so
 * records reach the file in submission order.
 */

export interface BatchEntry {
  bytes: Uint8Array;
  /** Runs after the entry's bytes are durable at (segment, offset); its result resolves the promise. */
  apply: (segment: number, offset: number) => unknown;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

export interface GroupCommitStats {
  batches: number;
  records: number;
  bytes: number;
  largestBatchRecords: number;
  syncMsTotal: number;
}

export class GroupCommit {
  private queue: BatchEntry[] = [];
  private running = false;
  private idle: (() => void)[] = [];
  readonly stats: GroupCommitStats = {
    batches: 0,
    records: 0,
    bytes: 0,
    largestBatchRecords: 0,
    syncMsTotal: 0,
  };

  constructor(private readonly flush: (batch: BatchEntry[]) => Promise<void>) {}

  submit<T>(bytes: Uint8Array, apply: (segment: number, offset: number) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ bytes, apply, resolve: resolve as (v: unknown) => void, reject });
      if (!this.running) void this.run();
    });
  }

  get queued(): number {
    return this.queue.length;
  }

  /** Resolves when nothing is queued or in flight. */
  drained(): Promise<void> {
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  private async run(): Promise<void> {
    this.running = true;
    // Let the appends of the current event-loop turn join the first batch.
    await Promise.resolve();
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const t0 = performance.now();
      try {
        await this.flush(batch);
      } catch (err) {
        // flush settles what it can; anything left unsettled fails here (settling twice is a no-op).
        for (const e of batch) e.reject(err);
      }
      let bytes = 0;
      for (const e of batch) bytes += e.bytes.length;
      this.stats.batches++;
      this.stats.records += batch.length;
      this.stats.bytes += bytes;
      this.stats.syncMsTotal += performance.now() - t0;
      if (batch.length > this.stats.largestBatchRecords) this.stats.largestBatchRecords = batch.length;
    }
    this.running = false;
    const idle = this.idle;
    this.idle = [];
    for (const r of idle) r();
  }
}
