/**
 * The suppression list: addresses mail must not go to, kept durable in the spool directory and
 * checked in RAM on every recipient.
 *
 * Owns: `SuppressionList`, the one object other modules hold: opening (the store, then in cluster
 * mode the shared side, then a compaction if one is due) and closing in order, `check` and `has` (the
 * lookups on every recipient), `add` and `remove` (validating input, comparing against the tables so
 * that only real changes are written), and the methods of the parts below, delegated.
 * Does not own: the file, its lock and the group commit (_store.ts), rewriting the file (_compact.ts),
 * reading entries back (_read.ts), cluster sharing (_shared.ts), what to do with a hit (feedback/:
 * refuse at RCPT or record `suppressed`), the CSV format (csv.ts), the file format (_log.ts), the
 * table (_table.ts).
 * Invariants: a change resolves only after its record is on stable storage, and only then is it
 * visible to `check`; within one call the last change of a key wins; while a compaction runs, changes
 * wait and checks go on.
 * Cluster note: every record is a self-contained, idempotent change (add with its fields / remove of a
 * key), so the same records can be shipped between nodes and applied in any node's list
 * (docs/suppression.md).
 */
import { Compactor } from "./_compact.ts";
import {
  type LogRecord,
  normalizeAddress,
  normalizeScope,
  REASONS,
  reasonIndex,
  recordSec,
  type SuppressionReason,
  TYPE_ADD,
  TYPE_REMOVE,
} from "./_log.ts";
import { forEachEntry } from "./_read.ts";
import { SharedState } from "./_shared.ts";
import { LogStore, pause } from "./_store.ts";
import { HASH, type HashTable, keyHash, lastOfEachKey } from "./_table.ts";
import {
  type AddResult,
  type NewSuppression,
  type RecoveryReport,
  type SharedPosition,
  type SuppressionEntry,
  SuppressionError,
  type SuppressionHit,
  type SuppressionOptions,
} from "./types.ts";

/** The normalized address and scope of a change; SuppressionError("input") naming a bad one. */
function keyFields(item: { address: string; scope?: string }): { address: string; scope: string } {
  const address = normalizeAddress(item.address);
  if (address === undefined)
    throw new SuppressionError("input", `not an address: ${JSON.stringify(item.address)}`);
  const scope = normalizeScope(item.scope ?? "");
  if (scope === undefined)
    throw new SuppressionError("input", `not a sender domain: ${JSON.stringify(item.scope)}`);
  return { address, scope };
}

export class SuppressionList {
  readonly recovery: RecoveryReport;
  private readonly store: LogStore;
  private readonly shared: SharedState;
  private readonly compactor: Compactor;
  /** The store's tables, held here too: `check` and `has` run on every recipient. */
  private readonly table: HashTable;
  private readonly scopedTable: HashTable;
  private readonly now: () => number;

  private constructor(store: LogStore) {
    this.store = store;
    this.recovery = store.recovery;
    this.table = store.table;
    this.scopedTable = store.scopedTable;
    this.now = store.now;
    this.shared = new SharedState(store);
    this.compactor = new Compactor(store);
    store.afterBatches = () => this.compactor.maybe();
  }

  /** Opens (creating) the list in `opts.dir`: takes its lock, loads every record, cuts a torn tail. */
  static async open(opts: SuppressionOptions): Promise<SuppressionList> {
    const store = LogStore.open(opts);
    try {
      const list = new SuppressionList(store);
      if (opts.shared) await list.shared.open();
      list.compactor.maybe();
      return list;
    } catch (err) {
      store.closeFiles();
      throw err;
    }
  }

  /** Cluster mode: called after a batch with own changes is durable (they are to be published). */
  get onOwnChange(): (() => void) | undefined {
    return this.store.onOwnChange;
  }
  set onOwnChange(fn: (() => void) | undefined) {
    this.store.onOwnChange = fn;
  }

  /** Cluster mode: where this list is in the cluster's stream (empty strings: nowhere yet). */
  get sharedPosition(): Readonly<SharedPosition> {
    return this.shared.position;
  }

  /** Own changes not yet confirmed from sequence number `from` on (at most `max`), and the first's number. */
  ownChanges(from: number, max: number): { firstSeq: number; changes: LogRecord[] } {
    return this.shared.ownChanges(from, max);
  }

  /** The sequence number the next own change will get (every earlier one is published or pending). */
  get ownSeqEnd(): number {
    return this.shared.ownSeqEnd;
  }

  /** Own changes not yet confirmed. */
  get ownPendingCount(): number {
    return this.shared.ownPendingCount;
  }

  /**
   * Changes received from another node (or read back from the stream): written durably and applied,
   * in order, except for keys with an own change pending (that change is later in the stream, so it
   * is the one every node ends with) and changes the list already shows. `ownSeen`: the last own
   * change (sequence number) the stream has shown up to these records. Returns how many were written.
   */
  applyShared(records: readonly LogRecord[], ownSeen = 0): Promise<number> {
    return this.shared.apply(records, ownSeen);
  }

  /**
   * A full resynchronisation from the cluster's copy (`pages`: every entry it holds). Each entry is
   * applied as by `applyShared`; with `removeMissing` (the stream was trimmed past this node), local
   * entries the cluster does not hold are removed too, except keys with an own change pending.
   * Without it (the cluster lost its copy, or this node is new to it), the result is the union.
   */
  resyncShared(
    pages: AsyncIterable<LogRecord[]>,
    removeMissing: boolean,
  ): Promise<{ applied: number; removed: number }> {
    return this.shared.resync(pages, removeMissing);
  }

  /**
   * Every live entry as an add record (to share a whole list, e.g. with a cluster that lost its copy),
   * handed to `fn` a page of up to `pageSize` at a time; the file is read a slice at a time and each
   * page handled before more is read, so RAM stays bounded whatever the list's size.
   */
  forEachChangePage(pageSize: number, fn: (page: LogRecord[]) => Promise<void>): Promise<void> {
    return this.shared.forEachChangePage(pageSize, fn);
  }

  /**
   * Saves the stream position durably; own changes up to `confirmedThrough` (seen back in the stream)
   * then leave the outbox. The position is saved first: a crash between leaves them in the outbox,
   * dropped at the next open.
   */
  advanceShared(pos: { epoch: string; id: string; read: number }, confirmedThrough = 0): Promise<void> {
    return this.shared.advance(pos, confirmedThrough);
  }

  /** Live entries (expired ones included until the next compaction or restart drops them). */
  get count(): number {
    return this.table.count + this.scopedTable.count;
  }

  /** RAM held by the tables, in bytes. */
  get tableBytes(): number {
    return this.table.bytes + this.scopedTable.bytes;
  }

  private tableFor(scope: string): HashTable {
    return scope === "" ? this.table : this.scopedTable;
  }

  get fileBytes(): number {
    return this.store.size;
  }

  get recordCount(): number {
    return this.store.records;
  }

  /**
   * Whether mail from `senderDomain` to `address` is suppressed: a global entry or one for that sender
   * domain, not expired. `address` may be in any case; `senderDomain` must be lower case.
   */
  check(address: string, senderDomain = ""): SuppressionHit | undefined {
    let scope = "";
    let slot = this.lookup("", address);
    if (slot < 0 && this.scopedTable.count > 0 && senderDomain !== "") {
      slot = this.lookup(senderDomain, address);
      scope = senderDomain;
    }
    if (slot < 0) return undefined;
    const t = this.tableFor(scope);
    const exp = t.expiryAt(slot);
    return {
      scope,
      reason: REASONS[t.reasonAt(slot)] ?? "manual",
      ...(exp !== 0 ? { expiresMs: exp * 1000 } : {}),
    };
  }

  /** Fast path: true when suppressed. */
  has(address: string, senderDomain = ""): boolean {
    if (this.lookup("", address) >= 0) return true;
    return this.scopedTable.count > 0 && senderDomain !== "" && this.lookup(senderDomain, address) >= 0;
  }

  /** The live slot of (scope, address), the address in any case, or -1. */
  private lookup(scope: string, address: string): number {
    keyHash(scope, address);
    const t = scope === "" ? this.table : this.scopedTable;
    const slot = t.find(HASH[0]!, HASH[1]!);
    if (slot < 0) return -1;
    const exp = t.expiryAt(slot);
    if (exp !== 0 && exp * 1000 <= this.now()) return -1;
    return slot;
  }

  /**
   * Adds or updates entries, durably. `keepLonger`: an entry already present that would outlive the
   * new one is left as it is (automatic additions never shorten a suppression set by hand).
   * Throws SuppressionError("input") naming the first bad address or scope; nothing is
   * written then.
   */
  async add(items: readonly NewSuppression[], opts: { keepLonger?: boolean } = {}): Promise<AddResult> {
    const nowMs = this.now();
    const records: LogRecord[] = [];
    for (const item of items) records.push(this.toRecord(item, nowMs));
    await this.store.compacting;
    const result: AddResult = { added: 0, updated: 0, unchanged: 0 };
    const todo: LogRecord[] = [];
    // Within one call the last change of a key wins; compare it against the table.
    for (const i of lastOfEachKey(records)) {
      const r = records[i]!;
      keyHash(r.scope, r.address);
      const t = this.tableFor(r.scope);
      const slot = t.find(HASH[0]!, HASH[1]!);
      if (slot >= 0) {
        const exp = t.expiryAt(slot);
        const live = exp === 0 || exp * 1000 > nowMs;
        if (live && exp === r.expiresSec && t.reasonAt(slot) === r.reason) {
          result.unchanged++;
          continue;
        }
        if (live && opts.keepLonger && (exp === 0 || (r.expiresSec !== 0 && exp >= r.expiresSec))) {
          result.unchanged++;
          continue;
        }
        if (live) result.updated++;
        else result.added++;
      } else result.added++;
      todo.push(r);
    }
    if (todo.length > 0) await this.store.commit(todo, true);
    return result;
  }

  /** Removes entries, durably; returns how many were present. */
  async remove(
    items: readonly { address: string; scope?: string }[],
  ): Promise<{ removed: number; absent: number }> {
    const nowMs = this.now();
    const records: LogRecord[] = [];
    for (const item of items) {
      const { address, scope } = keyFields(item);
      records.push({
        type: TYPE_REMOVE,
        reason: 0,
        addedSec: recordSec(nowMs),
        expiresSec: 0,
        scope,
        address,
      });
    }
    await this.store.compacting;
    let removed = 0;
    let absent = 0;
    const todo: LogRecord[] = [];
    for (const i of lastOfEachKey(records)) {
      const r = records[i]!;
      keyHash(r.scope, r.address);
      if (this.tableFor(r.scope).find(HASH[0]!, HASH[1]!) < 0) {
        absent++;
        continue;
      }
      removed++;
      todo.push(r);
    }
    if (todo.length > 0) await this.store.commit(todo, true);
    return { removed, absent };
  }

  private toRecord(item: NewSuppression, nowMs: number): LogRecord {
    const { address, scope } = keyFields(item);
    const reason = reasonIndex(item.reason ?? "manual");
    if (reason === undefined)
      throw new SuppressionError(
        "input",
        `unknown reason ${JSON.stringify(item.reason)} (expected ${REASONS.join(", ")})`,
      );
    if (
      item.expiresMs !== undefined &&
      (!Number.isFinite(item.expiresMs) || item.expiresMs / 1000 >= 2 ** 32)
    )
      throw new SuppressionError("input", `expiry out of range for ${address}`);
    return {
      type: TYPE_ADD,
      reason,
      addedSec: recordSec(nowMs),
      expiresSec: recordSec(item.expiresMs),
      scope,
      address,
    };
  }

  /**
   * Every live entry, read back from the file (RAM holds only hashes): a record is listed when it is
   * the one that set its key's current entry. Changes made while listing may or may not be seen.
   */
  async entries(
    filter: { scope?: string; reason?: SuppressionReason; limit?: number } = {},
  ): Promise<SuppressionEntry[]> {
    const out: SuppressionEntry[] = [];
    await this.forEachEntry((e) => {
      if (filter.scope !== undefined && e.scope !== filter.scope) return true;
      if (filter.reason !== undefined && e.reason !== filter.reason) return true;
      out.push(e);
      return filter.limit === undefined || out.length < filter.limit;
    });
    return out;
  }

  /**
   * Streams live entries to `fn` in file order (oldest first), a slice at a time so that a running
   * daemon keeps serving; `fn` returns false to stop. Compaction waits until no listing runs.
   */
  forEachEntry(fn: (e: SuppressionEntry) => boolean, between?: () => Promise<void>): Promise<void> {
    return forEachEntry(this.store, fn, between);
  }

  /**
   * Rewrites the log with one record per live entry: a new file, fdatasync'ed, renamed over the old
   * one, the directory synced. It reads a slice at a time (checks go on between slices); changes wait
   * until it is done; a failure leaves the old file in place.
   */
  compact(): Promise<void> {
    return this.compactor.run();
  }

  /** Waits for queued changes, then releases the file and the lock. */
  async close(): Promise<void> {
    const store = this.store;
    if (store.closed) return;
    await store.compacting?.catch(() => {});
    while (store.busy) await pause();
    store.closed = true;
    this.shared.close();
    store.closeFiles();
  }
}
