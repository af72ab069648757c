/**
 * The list's side of cluster sharing: what this node has changed and not yet seen the cluster carry,
 * where it is in the cluster's stream, and applying what other nodes changed.
 *
 * Owns: the outbox while the list is open (_outbox.ts, cluster mode only) and which own changes are
 * queued but not yet in it, `shared.pos` (the stream position, saved durably before the outbox is
 * trimmed), applying changes from the stream (`applyShared`), a full resynchronisation from the
 * cluster's copy, the whole list as pages of add records.
 * Does not own: publishing and reading the stream (app/_suppressShare.ts, cluster/), the group commit
 * (_store.ts, which hands own changes to the outbox through `OwnChanges`), the record format (_log.ts).
 * Invariants: an own change of a key, queued or in the outbox, wins over a change of that key read
 * from the stream up to it (it comes later in the stream, so it is the one every node ends with);
 * a change the list already shows is not written again; the position is saved before own changes
 * leave the outbox, so a crash in between leaves them there, dropped at the next open.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { errnoOf, errnoText, errorMessage, writeFileDurable } from "../lib/index.ts";
import { keyOf, type LogRecord, reasonIndex, recordSec, TYPE_ADD, TYPE_REMOVE } from "./_log.ts";
import { Outbox } from "./_outbox.ts";
import { forEachEntry } from "./_read.ts";
import { type LogStore, type OwnChanges, pause } from "./_store.ts";
import { HASH, HashTable, keyHash, lastOfEachKey } from "./_table.ts";
import { type SharedPosition, SuppressionError } from "./types.ts";

const POSITION_FILE = "shared.pos";

export class SharedState implements OwnChanges {
  /** Cluster mode: own changes not yet carried by the cluster's stream (durable). */
  private outbox: Outbox | undefined;
  /** Own changes queued, not yet in the outbox: keys count as pending from the moment of the call. */
  private readonly queuedOwn = new Map<string, number>();
  private pos: SharedPosition = { epoch: "", id: "", read: 0, confirmed: 0 };

  constructor(private readonly store: LogStore) {}

  /**
   * Cluster mode: the stream position and the outbox. Changes in the outbox the list does not show
   * (a crash between the outbox's write and the list's) are written to the list now.
   */
  async open(): Promise<void> {
    const store = this.store;
    const dir = store.dir;
    this.pos = readPosition(join(dir, POSITION_FILE));
    try {
      this.outbox = Outbox.open(dir, store.sync, this.pos.confirmed);
    } catch (err) {
      // No errno: the file is not an outbox (damaged); moving it away loses only unshared changes.
      if (errnoOf(err))
        throw new SuppressionError("io", `cannot open the outbox in ${dir}: ${errnoText(err)}`, err);
      throw new SuppressionError(
        "corrupt",
        `${errorMessage(err)} (move it away to start: its changes, not yet shared, are then kept on this node only)`,
        err,
      );
    }
    store.own = this;
    const mine = this.outbox.slice(this.outbox.firstSeq, this.outbox.count);
    const nowSec = Math.floor(store.now() / 1000);
    const todo = lastOfEachKey(mine)
      .map((i) => mine[i]!)
      .filter((r) => !this.reflects(r, nowSec));
    if (todo.length > 0) await store.commit(todo, false);
  }

  // OwnChanges: called by the store's group commit.
  queued(records: readonly LogRecord[]): void {
    for (const r of records) countKey(this.queuedOwn, keyOf(r.scope, r.address), 1);
  }
  append(records: LogRecord[], bytes: Uint8Array): Promise<number> {
    return this.outbox!.append(records, bytes);
  }
  rollback(token: number, count: number): void {
    this.outbox!.rollback(token, count);
  }
  settled(records: readonly LogRecord[]): void {
    for (const r of records) countKey(this.queuedOwn, keyOf(r.scope, r.address), -1);
  }

  /** Whether the table already shows what `r` would make of its key. */
  private reflects(r: LogRecord, nowSec: number): boolean {
    keyHash(r.scope, r.address);
    const t = this.store.tableFor(r.scope);
    const slot = t.find(HASH[0]!, HASH[1]!);
    if (r.type === TYPE_REMOVE) return slot < 0;
    if (r.expiresSec !== 0 && r.expiresSec <= nowSec) return true; // nothing to add
    return slot >= 0 && t.expiryAt(slot) === r.expiresSec && t.reasonAt(slot) === r.reason;
  }

  /**
   * An own change of this key is queued, or in the outbox with a sequence number after `after` (the
   * own changes seen so far in the stream being read): it comes later in the stream, so it wins.
   */
  private ownPending(r: LogRecord, after: number): boolean {
    return (
      (this.queuedOwn.size > 0 && this.queuedOwn.has(keyOf(r.scope, r.address))) ||
      (this.outbox?.has(r.scope, r.address, after) ?? false)
    );
  }

  /** Where this list is in the cluster's stream (empty strings: nowhere yet). */
  get position(): Readonly<SharedPosition> {
    return this.pos;
  }

  /** Own changes not yet confirmed from sequence number `from` on (at most `max`), and the first's number. */
  ownChanges(from: number, max: number): { firstSeq: number; changes: LogRecord[] } {
    const box = this.outbox;
    if (!box) return { firstSeq: 0, changes: [] };
    const start = Math.max(from, box.firstSeq);
    return { firstSeq: start, changes: box.slice(start, max) };
  }

  /** The sequence number the next own change will get (every earlier one is published or pending). */
  get ownSeqEnd(): number {
    return this.outbox ? this.outbox.firstSeq + this.outbox.count : 0;
  }

  /** Own changes not yet confirmed. */
  get ownPendingCount(): number {
    return this.outbox?.count ?? 0;
  }

  /** Changes from another node: see `SuppressionList.applyShared`. */
  async apply(records: readonly LogRecord[], ownSeen = 0): Promise<number> {
    const store = this.store;
    await store.compacting;
    const nowSec = Math.floor(store.now() / 1000);
    const todo: LogRecord[] = [];
    for (const i of lastOfEachKey(records)) {
      const r = records[i]!;
      if (this.ownPending(r, ownSeen) || this.reflects(r, nowSec)) continue;
      todo.push(r);
    }
    if (todo.length > 0) await store.commit(todo, false);
    return todo.length;
  }

  /** A full resynchronisation: see `SuppressionList.resyncShared`. */
  async resync(
    pages: AsyncIterable<LogRecord[]>,
    removeMissing: boolean,
  ): Promise<{ applied: number; removed: number }> {
    const seen = [new HashTable(1024), new HashTable(1024)];
    let applied = 0;
    for await (const page of pages) {
      for (const r of page) {
        keyHash(r.scope, r.address);
        seen[r.scope === "" ? 0 : 1]!.set(HASH[0]!, HASH[1]!, 0, 0, 0);
      }
      applied += await this.apply(page);
    }
    if (!removeMissing) return { applied, removed: 0 };
    const gone: LogRecord[] = [];
    const nowSec = Math.floor(this.store.now() / 1000);
    await forEachEntry(this.store, (e) => {
      keyHash(e.scope, e.address);
      if (seen[e.scope === "" ? 0 : 1]!.find(HASH[0]!, HASH[1]!) < 0)
        gone.push({
          type: TYPE_REMOVE,
          reason: 0,
          addedSec: nowSec,
          expiresSec: 0,
          scope: e.scope,
          address: e.address,
        });
      return true;
    });
    let removed = 0;
    for (let i = 0; i < gone.length; i += 1000) removed += await this.apply(gone.slice(i, i + 1000));
    return { applied, removed };
  }

  /** Every live entry as an add record, a page at a time: see `SuppressionList.forEachChangePage`. */
  async forEachChangePage(pageSize: number, fn: (page: LogRecord[]) => Promise<void>): Promise<void> {
    let page: LogRecord[] = [];
    const drain = async (all: boolean) => {
      while (page.length >= pageSize || (all && page.length > 0)) await fn(page.splice(0, pageSize));
    };
    await forEachEntry(
      this.store,
      (e) => {
        page.push({
          type: TYPE_ADD,
          reason: reasonIndex(e.reason) ?? 0,
          addedSec: recordSec(e.addedMs),
          expiresSec: recordSec(e.expiresMs),
          scope: e.scope,
          address: e.address,
        });
        return true;
      },
      () => drain(false),
    );
    await drain(true);
    page = [];
  }

  /** Saves the stream position durably, then lets confirmed own changes leave the outbox. */
  async advance(pos: { epoch: string; id: string; read: number }, confirmedThrough = 0): Promise<void> {
    const confirmed = Math.max(this.pos.confirmed, confirmedThrough);
    const next: SharedPosition = { epoch: pos.epoch, id: pos.id, read: pos.read, confirmed };
    writeFileDurable(join(this.store.dir, POSITION_FILE), `${JSON.stringify(next)}\n`, this.store.sync);
    this.pos = next;
    if (this.outbox && confirmed > 0) {
      // The outbox file is replaced when it empties: not while a batch is being appended to it.
      while (this.store.writingBatch) await pause();
      this.outbox.confirm(confirmed);
    }
  }

  close(): void {
    this.outbox?.close();
  }
}

function readPosition(file: string): SharedPosition {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if (errnoOf(err) === "ENOENT") return { epoch: "", id: "", read: 0, confirmed: 0 };
    throw new SuppressionError("io", `cannot read ${file}: ${errnoText(err)}`, err);
  }
  try {
    const p = JSON.parse(text) as Partial<SharedPosition>;
    if (
      typeof p.epoch === "string" &&
      typeof p.id === "string" &&
      Number.isSafeInteger(p.read) &&
      Number.isSafeInteger(p.confirmed)
    )
      return { epoch: p.epoch, id: p.id, read: p.read!, confirmed: p.confirmed! };
  } catch {}
  throw new SuppressionError(
    "corrupt",
    `${file}: not a stream position (remove it: the node resynchronises)`,
  );
}

function countKey(m: Map<string, number>, k: string, by: number): void {
  const n = (m.get(k) ?? 0) + by;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}
