/**
 * The durable local store of the suppression list: its log file, its lock, its tables in RAM and the
 * group commit that keeps file and tables in step.
 *
 * Owns: opening the directory (LOCK, `suppressions.log`, its header, loading the tables, cutting off a
 * damaged or torn tail and keeping more than a torn batch of it for a human), the file descriptor and
 * size, the record count (the ordinal of the next record), the queue of changes and the one batch in
 * flight (one write and one fdatasync per batch), applying records to the tables, closing the files.
 * Does not own: which changes to make (list.ts, _shared.ts), rewriting the file (_compact.ts), the
 * outbox (_shared.ts, through `own`), the format (_log.ts), the tables' layout (_table.ts).
 * Invariants: a change resolves only after its record is on stable storage, and only then is it in the
 * tables; records reach the file in the order changes were queued; a failed write leaves the file as
 * it was before the batch (truncated back) and the tables untouched; an own change reaches the outbox
 * before the file, so the file never holds an own change the outbox lacks.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { errnoText, fdatasyncAsync, tryLockExclusive, writeAllAt } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import {
  checkFileHeader,
  encodeFileHeader,
  encodeRecords,
  FILE_HEADER_BYTES,
  LOG_FILE,
  type LogRecord,
  TYPE_REMOVE,
} from "./_log.ts";
import { loadTables } from "./_load.ts";
import { scanFd } from "./_scan.ts";
import { HASH, type HashTable, keyHash } from "./_table.ts";
import { type RecoveryReport, SuppressionError, type SuppressionOptions } from "./types.ts";

const LOCK_FILE = "LOCK";

interface Pending {
  records: LogRecord[];
  bytes: Uint8Array;
  /** An own change (cluster mode: goes to the outbox too), not one received from another node. */
  own: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Cluster mode: where own changes go before the list's file (the outbox, _shared.ts). */
export interface OwnChanges {
  /** Own records were queued: their keys count as pending from now on. */
  queued(records: readonly LogRecord[]): void;
  /** Appends own records durably; returns what `rollback` needs to take them out again. */
  append(records: LogRecord[], bytes: Uint8Array): Promise<number>;
  rollback(token: number, count: number): void;
  /** Own records were written or failed: no longer queued. */
  settled(records: readonly LogRecord[]): void;
}

/** One millisecond, for the loops that wait for a batch or a listing to end. */
export function pause(): Promise<void> {
  return new Promise((r) => setTimeout(r, 1));
}

export class LogStore {
  readonly dir: string;
  readonly sync: boolean;
  readonly log: Logger | undefined;
  readonly now: () => number;
  /** Global entries (scope ""), checked for every recipient. */
  readonly table: HashTable;
  /**
   * Entries scoped to a sender domain, in a table of their own: a check looks there only when it has
   * entries, and then in a table usually far smaller (cache-friendlier) than the global one.
   */
  readonly scopedTable: HashTable;
  /** The log file; replaced by compaction. */
  fd: number;
  size: number;
  /** Records in the file (ordinal of the next one). */
  records: number;
  closed = false;
  /** A compaction in progress (_compact.ts): changes wait for it, checks go on. */
  compacting: Promise<void> | undefined;
  /** Listings in progress (compaction renumbers only when there are none). */
  readers = 0;
  /** Cluster mode: the outbox side of own changes. */
  own: OwnChanges | undefined;
  /** Called after a batch with own changes is durable (they are to be published). */
  onOwnChange: (() => void) | undefined;
  /** Called when the queue has drained (compaction policy). */
  afterBatches: () => void = () => {};

  private queue: Pending[] = [];
  private writing = false;

  private constructor(
    opts: SuppressionOptions,
    fd: number,
    private readonly lockFd: number,
    loaded: { table: HashTable; scopedTable: HashTable; records: number },
    size: number,
    readonly recovery: RecoveryReport,
  ) {
    this.dir = opts.dir;
    this.sync = opts.sync !== false;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.fd = fd;
    this.table = loaded.table;
    this.scopedTable = loaded.scopedTable;
    this.records = loaded.records;
    this.size = size;
  }

  /** Opens (creating) the list's files in `opts.dir`: takes the lock, loads every record, cuts a torn tail. */
  static open(opts: SuppressionOptions): LogStore {
    const t0 = performance.now();
    let lockFd: number;
    try {
      fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
      lockFd = fs.openSync(join(opts.dir, LOCK_FILE), "a+", 0o600);
    } catch (err) {
      throw new SuppressionError(
        "io",
        `cannot open the suppression list in ${opts.dir}: ${errnoText(err)}`,
        err,
      );
    }
    let locked: boolean;
    try {
      locked = tryLockExclusive(lockFd);
    } catch (err) {
      fs.closeSync(lockFd);
      throw err;
    }
    if (!locked) {
      fs.closeSync(lockFd);
      throw new SuppressionError(
        "locked",
        `another process holds the suppression list in ${opts.dir} (a running mta serve?)`,
      );
    }
    const file = join(opts.dir, LOG_FILE);
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    } catch (err) {
      fs.closeSync(lockFd);
      throw new SuppressionError("io", `cannot open ${file}: ${errnoText(err)}`, err);
    }
    try {
      let size = fs.fstatSync(fd).size;
      if (size === 0) {
        fs.writeSync(fd, encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
        if (opts.sync !== false) fs.fsyncSync(fd);
        size = FILE_HEADER_BYTES;
      } else {
        const head = new Uint8Array(FILE_HEADER_BYTES);
        fs.readSync(fd, head, 0, FILE_HEADER_BYTES, 0);
        const problem = checkFileHeader(head.subarray(0, Math.min(size, FILE_HEADER_BYTES)));
        if (problem) throw new SuppressionError("corrupt", `${file}: ${problem}`);
      }
      const nowSec = Math.floor((opts.now ?? Date.now)() / 1000);
      let scan: ReturnType<typeof scanFd> = { end: FILE_HEADER_BYTES };
      const loaded = loadTables(
        (fn) => {
          scan = scanFd(fd, FILE_HEADER_BYTES, fn);
        },
        nowSec,
        Math.ceil(size / 40),
      );
      let truncatedBytes = 0;
      if (scan.damage) {
        truncatedBytes = size - scan.end;
        opts.log?.warn("suppression list: cutting off a damaged or torn tail", {
          file,
          offset: scan.end,
          bytes: truncatedBytes,
          problem: scan.damage,
        });
        if (truncatedBytes > 64 * 1024) {
          // More than a torn batch: keep the bytes for a human to look at.
          const copy = `${file}.damaged-${scan.end}`;
          const rest = new Uint8Array(truncatedBytes);
          fs.readSync(fd, rest, 0, truncatedBytes, scan.end);
          fs.writeFileSync(copy, rest, { mode: 0o600 });
        }
        fs.ftruncateSync(fd, scan.end);
        if (opts.sync !== false) fs.fsyncSync(fd);
        size = scan.end;
      }
      const report: RecoveryReport = {
        entries: loaded.table.count + loaded.scopedTable.count,
        records: loaded.records,
        truncatedBytes,
        ms: performance.now() - t0,
        ...(scan.damage ? { damage: scan.damage } : {}),
      };
      return new LogStore(opts, fd, lockFd, loaded, size, report);
    } catch (err) {
      fs.closeSync(fd);
      fs.closeSync(lockFd);
      throw err;
    }
  }

  /** Live entries (expired ones included until the next compaction or restart drops them). */
  get count(): number {
    return this.table.count + this.scopedTable.count;
  }

  tableFor(scope: string): HashTable {
    return scope === "" ? this.table : this.scopedTable;
  }

  /** A batch is being written or changes wait for one. */
  get busy(): boolean {
    return this.writing || this.queue.length > 0;
  }

  /** A batch is being written. */
  get writingBatch(): boolean {
    return this.writing;
  }

  /** Queues records for the next batch; resolves once they are durable and applied to the tables. */
  commit(records: LogRecord[], own: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new SuppressionError("closed", "the suppression list is closed"));
    if (own) this.own?.queued(records);
    return new Promise((resolve, reject) => {
      this.queue.push({ records, bytes: encodeRecords(records), own, resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.writing = true;
    await Promise.resolve(); // let this turn's changes join the batch
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const buf = batch.length === 1 ? batch[0]!.bytes : Buffer.concat(batch.map((p) => p.bytes));
      const total = buf.length;
      const before = this.size;
      // Own changes reach the outbox first: a change the list has is never missing from it.
      const journal = this.own;
      const own = journal ? batch.filter((p) => p.own) : [];
      const ownRecords = own.flatMap((p) => p.records);
      let outboxBefore = -1;
      try {
        if (journal && own.length > 0)
          outboxBefore = await journal.append(
            ownRecords,
            own.length === 1 ? own[0]!.bytes : Buffer.concat(own.map((p) => p.bytes)),
          );
        await writeAllAt(this.fd, buf, before);
        if (this.sync) await fdatasyncAsync(this.fd);
      } catch (err) {
        // Leave the files as they were: a later batch must not follow a half-written one.
        try {
          fs.ftruncateSync(this.fd, before);
        } catch {}
        if (outboxBefore >= 0) journal!.rollback(outboxBefore, ownRecords.length);
        journal?.settled(ownRecords);
        const e = new SuppressionError("io", `cannot write the suppression list: ${errnoText(err)}`, err);
        for (const p of batch) p.reject(e);
        continue;
      }
      journal?.settled(ownRecords);
      this.size = before + total;
      if (ownRecords.length > 0) this.onOwnChange?.();
      for (const p of batch) {
        for (const r of p.records) this.apply(r, this.records++);
        p.resolve();
      }
    }
    this.writing = false;
    this.afterBatches();
  }

  private apply(r: LogRecord, ordinal: number): void {
    keyHash(r.scope, r.address);
    const t = this.tableFor(r.scope);
    if (r.type === TYPE_REMOVE) {
      const slot = t.find(HASH[0]!, HASH[1]!);
      if (slot >= 0) t.deleteSlot(slot);
      return;
    }
    t.set(HASH[0]!, HASH[1]!, r.expiresSec, ordinal, r.reason);
  }

  /** Closes the log and releases the lock (the caller has drained the queue). */
  closeFiles(): void {
    fs.closeSync(this.fd);
    fs.closeSync(this.lockFd);
  }
}
