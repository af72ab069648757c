/**
 * The suppression list: addresses mail must not go to, kept durable in the spool directory and
 * checked in RAM on every recipient.
 *
 * Owns: `SuppressionList` (open with the directory's lock, recover, check, add, remove, read back,
 * compact, close), its group commit (one write and one fdatasync per batch of changes).
 * Does not own: what to do with a hit (app/: refuse at RCPT or record `suppressed`), the CSV format
 * (csv.ts), the file format (_log.ts), the table (_table.ts).
 * Invariants: a change resolves only after its record is on stable storage, and only then is it
 * visible to `check`; records reach the file in the order changes were made; a failed write leaves
 * the file as it was before the batch (truncated back) and the table untouched; while a compaction
 * runs, changes wait and checks go on.
 * Cluster note: every record is a self-contained, idempotent change (add with its fields / remove of a
 * key), so the same records can be shipped between nodes and applied in any node's list
 * (docs/suppression.md).
 */
import * as fs from "node:fs";
import { join } from "node:path";
import {
  errnoOf,
  errnoText,
  errorMessage,
  fdatasyncAsync,
  MtaError,
  tryLockExclusive,
  writeAllAt,
  writeFileDurable,
} from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import {
  checkFileHeader,
  decodeKey,
  encodeFileHeader,
  encodeRecords,
  FILE_HEADER_BYTES,
  keyOf,
  keyStart,
  type LogRecord,
  normalizeAddress,
  normalizeScope,
  REASONS,
  reasonIndex,
  type ScannedRecord,
  type SuppressionReason,
  scanChunk,
  TYPE_ADD,
  TYPE_REMOVE,
} from "./_log.ts";
import { loadTables } from "./_load.ts";
import { Outbox } from "./_outbox.ts";
import { HASH, HashTable, keyHash, keyHashBytes } from "./_table.ts";

export const LOG_FILE = "suppressions.log";
const LOCK_FILE = "LOCK";
const CHUNK_BYTES = 8 * 1024 * 1024;

/** What went wrong: `kind` for callers that decide on it, `code` for the exit status (lib's codes). */
export type SuppressionErrorKind = "locked" | "input" | "io" | "corrupt" | "closed";

export class SuppressionError extends MtaError {
  override name = "SuppressionError";
  constructor(
    readonly kind: SuppressionErrorKind,
    message: string,
    cause?: unknown,
  ) {
    super(codeOf(kind, cause), message, cause === undefined ? undefined : { cause });
  }
}

function codeOf(kind: SuppressionErrorKind, cause: unknown): string {
  if (kind === "locked") return "unavailable";
  if (kind === "input" || kind === "corrupt") return "data";
  if (kind === "closed") return "software";
  const errno = errnoOf(cause);
  return errno === "EACCES" || errno === "EPERM" ? "noperm" : "io";
}

export interface SuppressionEntry {
  address: string;
  /** "" for a global entry, else the sender domain it applies to. */
  scope: string;
  reason: SuppressionReason;
  addedMs: number;
  /** undefined: never expires. */
  expiresMs?: number;
}

export interface NewSuppression {
  address: string;
  scope?: string;
  reason?: SuppressionReason;
  /** Absolute expiry; undefined: never. */
  expiresMs?: number;
}

export interface SuppressionHit {
  scope: string;
  reason: SuppressionReason;
  expiresMs?: number;
}

export interface AddResult {
  added: number;
  updated: number;
  unchanged: number;
}

export interface RecoveryReport {
  entries: number;
  records: number;
  truncatedBytes: number;
  damage?: string;
  ms: number;
}

export interface SuppressionOptions {
  /** The directory, normally `<spool.dir>/suppression`. */
  dir: string;
  /** fdatasync each batch (default true; false only for tests and benchmarks). */
  sync?: boolean;
  /**
   * Cluster mode: keep this node's own changes in the outbox until the cluster's stream carries them,
   * and the position in that stream (`shared.pos`). Off: neither file is touched.
   */
  shared?: boolean;
  log?: Logger;
  now?: () => number;
}

interface Pending {
  records: LogRecord[];
  bytes: Uint8Array;
  /** An own change (cluster mode: goes to the outbox too), not one received from another node. */
  own: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

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

/** Indexes of `records` that are the last change of their key, in order (a typed-array set, no strings). */
function lastOfEachKey(records: readonly LogRecord[]): number[] {
  if (records.length === 1) return [0];
  const seen = new HashTable(records.length);
  const last: number[] = new Array(records.length);
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    keyHash(r.scope, r.address);
    const slot = seen.find(HASH[0]!, HASH[1]!);
    if (slot >= 0) last[seen.ordinalAt(slot)] = -1;
    seen.set(HASH[0]!, HASH[1]!, 0, i, 0);
    last[i] = i;
  }
  return last.filter((i) => i >= 0);
}

function sec(ms: number | undefined): number {
  return ms === undefined ? 0 : Math.max(1, Math.ceil(ms / 1000));
}

/** Reads `fd` from `from` to its end (as it is when reached), handing every good record to `fn`. */
function scanFd(
  fd: number,
  from: number,
  fn: (r: ScannedRecord) => void,
): { end: number; damage?: string; damageAt?: number } {
  const buf = Buffer.allocUnsafe(CHUNK_BYTES);
  let carry = 0;
  let pos = from;
  for (;;) {
    const n = fs.readSync(fd, buf, carry, buf.length - carry, pos + carry);
    if (n === 0) {
      return carry === 0
        ? { end: pos }
        : { end: pos, damage: `incomplete record of ${carry} bytes`, damageAt: pos };
    }
    const len = carry + n;
    const r = scanChunk(buf.subarray(0, len), pos, fn);
    if (r.bad) return { end: pos + r.used, damage: r.bad, damageAt: pos + r.used };
    buf.copyWithin(0, r.used, len);
    carry = len - r.used;
    pos += r.used;
  }
}

/** scanFd in slices of `sliceBytes`, giving the event loop a turn between slices (for a running daemon). */
async function scanFdYielding(
  fd: number,
  from: number,
  fn: (r: ScannedRecord) => void,
  sliceBytes = 1 << 20,
  between: () => Promise<void> = () => new Promise<void>((resolve) => setImmediate(resolve)),
): Promise<void> {
  const buf = Buffer.allocUnsafe(sliceBytes);
  let carry = 0;
  let pos = from;
  for (;;) {
    const n = fs.readSync(fd, buf, carry, buf.length - carry, pos + carry);
    if (n === 0) return;
    const len = carry + n;
    const r = scanChunk(buf.subarray(0, len), pos, fn);
    if (r.bad) return;
    buf.copyWithin(0, r.used, len);
    carry = len - r.used;
    pos += r.used;
    await between();
  }
}

export class SuppressionList {
  /** Global entries (scope ""), checked for every recipient. */
  private readonly table: HashTable;
  /**
   * Entries scoped to a sender domain, in a table of their own: a check looks there only when it has
   * entries, and then in a table usually far smaller (cache-friendlier) than the global one.
   */
  private readonly scopedTable: HashTable;
  /** Records in the file (ordinal of the next one). */
  private records = 0;
  private size: number;
  private queue: Pending[] = [];
  private writing = false;
  private compacting: Promise<void> | undefined;
  /** Listings in progress (compaction renumbers only when there are none). */
  private readers = 0;
  private closed = false;
  private readonly now: () => number;
  /** Cluster mode: own changes not yet carried by the cluster's stream (durable). */
  private outbox: Outbox | undefined;
  /** Own changes queued, not yet in the outbox: keys count as pending from the moment of the call. */
  private readonly queuedOwn = new Map<string, number>();
  private position: SharedPosition = { epoch: "", id: "", read: 0, confirmed: 0 };
  /** Cluster mode: called after a batch with own changes is durable (they are to be published). */
  onOwnChange: (() => void) | undefined;

  private constructor(
    private readonly opts: SuppressionOptions,
    private fd: number,
    private readonly lockFd: number,
    table: HashTable,
    scopedTable: HashTable,
    size: number,
    readonly recovery: RecoveryReport,
  ) {
    this.table = table;
    this.scopedTable = scopedTable;
    this.size = size;
    this.now = opts.now ?? Date.now;
  }

  /** Opens (creating) the list in `opts.dir`: takes its lock, loads every record, cuts a torn tail. */
  static async open(opts: SuppressionOptions): Promise<SuppressionList> {
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
      const { table, scopedTable, records } = loadTables(
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
        entries: table.count + scopedTable.count,
        records,
        truncatedBytes,
        ms: performance.now() - t0,
        ...(scan.damage ? { damage: scan.damage } : {}),
      };
      const list = new SuppressionList(opts, fd, lockFd, table, scopedTable, size, report);
      list.records = records;
      if (opts.shared) await list.openShared();
      list.maybeCompact();
      return list;
    } catch (err) {
      fs.closeSync(fd);
      fs.closeSync(lockFd);
      throw err;
    }
  }

  /**
   * Cluster mode: the stream position and the outbox. Changes in the outbox the list does not show
   * (a crash between the outbox's write and the list's) are written to the list now.
   */
  private async openShared(): Promise<void> {
    const dir = this.opts.dir;
    this.position = readPosition(join(dir, POSITION_FILE));
    try {
      this.outbox = Outbox.open(dir, this.opts.sync !== false, this.position.confirmed);
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
    const mine = this.outbox.slice(this.outbox.firstSeq, this.outbox.count);
    const nowSec = Math.floor(this.now() / 1000);
    const todo = lastOfEachKey(mine)
      .map((i) => mine[i]!)
      .filter((r) => !this.reflects(r, nowSec));
    if (todo.length > 0) await this.commit(todo, false);
  }

  /** Whether the table already shows what `r` would make of its key. */
  private reflects(r: LogRecord, nowSec: number): boolean {
    keyHash(r.scope, r.address);
    const t = this.tableFor(r.scope);
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

  /** Cluster mode: where this list is in the cluster's stream (empty strings: nowhere yet). */
  get sharedPosition(): Readonly<SharedPosition> {
    return this.position;
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

  /**
   * Changes received from another node (or read back from the stream): written durably and applied,
   * in order, except for keys with an own change pending (that change is later in the stream, so it
   * is the one every node ends with) and changes the list already shows. `ownSeen`: the last own
   * change (sequence number) the stream has shown up to these records. Returns how many were written.
   */
  async applyShared(records: readonly LogRecord[], ownSeen = 0): Promise<number> {
    await this.compacting;
    const nowSec = Math.floor(this.now() / 1000);
    const todo: LogRecord[] = [];
    for (const i of lastOfEachKey(records)) {
      const r = records[i]!;
      if (this.ownPending(r, ownSeen) || this.reflects(r, nowSec)) continue;
      todo.push(r);
    }
    if (todo.length > 0) await this.commit(todo, false);
    return todo.length;
  }

  /**
   * A full resynchronisation from the cluster's copy (`pages`: every entry it holds). Each entry is
   * applied as by `applyShared`; with `removeMissing` (the stream was trimmed past this node), local
   * entries the cluster does not hold are removed too, except keys with an own change pending.
   * Without it (the cluster lost its copy, or this node is new to it), the result is the union.
   */
  async resyncShared(
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
      applied += await this.applyShared(page);
    }
    if (!removeMissing) return { applied, removed: 0 };
    const gone: LogRecord[] = [];
    const nowSec = Math.floor(this.now() / 1000);
    await this.forEachEntry((e) => {
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
    for (let i = 0; i < gone.length; i += 1000) removed += await this.applyShared(gone.slice(i, i + 1000));
    return { applied, removed };
  }

  /**
   * Every live entry as an add record (to share a whole list, e.g. with a cluster that lost its copy),
   * handed to `fn` a page of up to `pageSize` at a time; the file is read a slice at a time and each
   * page handled before more is read, so RAM stays bounded whatever the list's size.
   */
  async forEachChangePage(pageSize: number, fn: (page: LogRecord[]) => Promise<void>): Promise<void> {
    let page: LogRecord[] = [];
    const drain = async (all: boolean) => {
      while (page.length >= pageSize || (all && page.length > 0)) await fn(page.splice(0, pageSize));
    };
    await this.forEachEntry(
      (e) => {
        page.push({
          type: TYPE_ADD,
          reason: reasonIndex(e.reason) ?? 0,
          addedSec: sec(e.addedMs),
          expiresSec: sec(e.expiresMs),
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

  /**
   * Saves the stream position durably; own changes up to `confirmedThrough` (seen back in the stream)
   * then leave the outbox. The position is saved first: a crash between leaves them in the outbox,
   * dropped at the next open.
   */
  async advanceShared(pos: { epoch: string; id: string; read: number }, confirmedThrough = 0): Promise<void> {
    const confirmed = Math.max(this.position.confirmed, confirmedThrough);
    const next: SharedPosition = { epoch: pos.epoch, id: pos.id, read: pos.read, confirmed };
    writeFileDurable(
      join(this.opts.dir, POSITION_FILE),
      `${JSON.stringify(next)}\n`,
      this.opts.sync !== false,
    );
    this.position = next;
    if (this.outbox && confirmed > 0) {
      // The outbox file is replaced when it empties: not while a batch is being appended to it.
      while (this.writing) await new Promise((r) => setTimeout(r, 1));
      this.outbox.confirm(confirmed);
    }
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
    return this.size;
  }

  get recordCount(): number {
    return this.records;
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
    await this.compacting;
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
    if (todo.length > 0) await this.commit(todo, true);
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
      records.push({ type: TYPE_REMOVE, reason: 0, addedSec: sec(nowMs), expiresSec: 0, scope, address });
    }
    await this.compacting;
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
    if (todo.length > 0) await this.commit(todo, true);
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
    return { type: TYPE_ADD, reason, addedSec: sec(nowMs), expiresSec: sec(item.expiresMs), scope, address };
  }

  /** Queues records for the next batch; resolves once they are durable and applied to the table. */
  private commit(records: LogRecord[], own: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new SuppressionError("closed", "the suppression list is closed"));
    if (own && this.outbox) for (const r of records) countKey(this.queuedOwn, keyOf(r.scope, r.address), 1);
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
      const own = this.outbox ? batch.filter((p) => p.own) : [];
      const ownRecords = own.flatMap((p) => p.records);
      let outboxBefore = -1;
      try {
        if (this.outbox && own.length > 0)
          outboxBefore = await this.outbox.append(
            ownRecords,
            own.length === 1 ? own[0]!.bytes : Buffer.concat(own.map((p) => p.bytes)),
          );
        await writeAllAt(this.fd, buf, before);
        if (this.opts.sync !== false) await fdatasyncAsync(this.fd);
      } catch (err) {
        // Leave the files as they were: a later batch must not follow a half-written one.
        try {
          fs.ftruncateSync(this.fd, before);
        } catch {}
        if (outboxBefore >= 0) this.outbox!.rollback(outboxBefore, ownRecords.length);
        for (const r of ownRecords) countKey(this.queuedOwn, keyOf(r.scope, r.address), -1);
        const e = new SuppressionError("io", `cannot write the suppression list: ${errnoText(err)}`, err);
        for (const p of batch) p.reject(e);
        continue;
      }
      for (const r of ownRecords) countKey(this.queuedOwn, keyOf(r.scope, r.address), -1);
      this.size = before + total;
      if (ownRecords.length > 0) this.onOwnChange?.();
      for (const p of batch) {
        for (const r of p.records) this.apply(r, this.records++);
        p.resolve();
      }
    }
    this.writing = false;
    this.maybeCompact();
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
  async forEachEntry(fn: (e: SuppressionEntry) => boolean, between?: () => Promise<void>): Promise<void> {
    while (this.compacting) await this.compacting.catch(() => {});
    this.readers++;
    try {
      const nowSec = Math.floor(this.now() / 1000);
      let ordinal = 0;
      let going = true;
      await scanFdYielding(
        this.fd,
        FILE_HEADER_BYTES,
        (r) => {
          const o = ordinal++;
          if (!going || r.type !== TYPE_ADD) return;
          if (r.expiresSec !== 0 && r.expiresSec <= nowSec) return;
          keyHashBytes(r.buf, keyStart(r), r.start + r.length, r.scopeBytes);
          const t = r.scopeBytes > 0 ? this.scopedTable : this.table;
          const slot = t.find(HASH[0]!, HASH[1]!);
          if (slot < 0 || t.ordinalAt(slot) !== o) return;
          const { scope, address } = decodeKey(r);
          going = fn({
            address,
            scope,
            reason: REASONS[r.reason] ?? "manual",
            addedMs: r.addedSec * 1000,
            ...(r.expiresSec !== 0 ? { expiresMs: r.expiresSec * 1000 } : {}),
          });
        },
        1 << 20,
        between,
      );
    } finally {
      this.readers--;
    }
  }

  /** Dead records (removed, replaced, expired) outnumber live ones by enough: rewrite the file. */
  private maybeCompact(): void {
    if (this.compacting || this.closed) return;
    const dead = this.records - this.count;
    if (dead > Math.max(this.count, 10_000)) {
      this.compact().catch((err) =>
        this.opts.log?.error("suppression list compaction failed", { error: errorMessage(err) }),
      );
    }
  }

  /**
   * Rewrites the log with one record per live entry: a new file, fdatasync'ed, renamed over the old
   * one, the directory synced. It reads a slice at a time (checks go on between slices); changes wait
   * until it is done; a failure leaves the old file in place.
   */
  compact(): Promise<void> {
    if (this.compacting) return this.compacting;
    const run = async () => {
      while (this.writing || this.queue.length > 0 || this.readers > 0)
        await new Promise((r) => setTimeout(r, 1));
      const file = join(this.opts.dir, LOG_FILE);
      const tmp = `${file}.compact`;
      const nowSec = Math.floor(this.now() / 1000);
      const out = fs.openSync(tmp, "w", 0o600);
      // (slot, new ordinal) pairs; a scoped table's slot is stored as -(slot + 1).
      const moves: number[] = [];
      let newOrdinal = 0;
      let size = FILE_HEADER_BYTES;
      try {
        fs.writeSync(out, encodeFileHeader(), 0, FILE_HEADER_BYTES, 0);
        const outBuf = Buffer.allocUnsafe(CHUNK_BYTES);
        let used = 0;
        const flush = () => {
          if (used === 0) return;
          fs.writeSync(out, outBuf, 0, used, size);
          size += used;
          used = 0;
        };
        let ordinal = 0;
        await scanFdYielding(this.fd, FILE_HEADER_BYTES, (r) => {
          const o = ordinal++;
          if (r.type !== TYPE_ADD) return;
          keyHashBytes(r.buf, keyStart(r), r.start + r.length, r.scopeBytes);
          const scoped = r.scopeBytes > 0;
          const t = scoped ? this.scopedTable : this.table;
          const slot = t.find(HASH[0]!, HASH[1]!);
          if (slot < 0 || t.ordinalAt(slot) !== o) return;
          if (r.expiresSec !== 0 && r.expiresSec <= nowSec) return;
          if (used + r.length > outBuf.length) flush();
          (r.buf as Buffer).copy(outBuf, used, r.start, r.start + r.length);
          used += r.length;
          moves.push(scoped ? -(slot + 1) : slot, newOrdinal++);
        });
        flush();
        if (this.opts.sync !== false) fs.fsyncSync(out);
        fs.closeSync(out);
        fs.renameSync(tmp, file);
        if (this.opts.sync !== false) {
          const d = fs.openSync(this.opts.dir, "r");
          fs.fsyncSync(d);
          fs.closeSync(d);
        }
        // The new file is in place: switch to it, then renumber (slots do not move while changes wait).
        const old = this.fd;
        this.fd = fs.openSync(file, fs.constants.O_RDWR);
        fs.closeSync(old);
        for (let i = 0; i < moves.length; i += 2) {
          const m = moves[i]!;
          if (m >= 0) this.table.setOrdinal(m, moves[i + 1]!);
          else this.scopedTable.setOrdinal(-m - 1, moves[i + 1]!);
        }
        // Expired entries go last: deleting shifts slots.
        dropExpired(this.table, nowSec);
        dropExpired(this.scopedTable, nowSec);
        const before = this.records;
        this.records = newOrdinal;
        this.size = size;
        this.opts.log?.info("suppression list compacted", {
          entries: this.count,
          recordsBefore: before,
          bytes: size,
        });
      } catch (err) {
        try {
          fs.closeSync(out);
        } catch {}
        try {
          fs.unlinkSync(tmp);
        } catch {}
        throw err;
      }
    };
    this.compacting = run().finally(() => {
      this.compacting = undefined;
    });
    return this.compacting;
  }

  /** Waits for queued changes, then releases the file and the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.compacting?.catch(() => {});
    while (this.writing || this.queue.length > 0) await new Promise((r) => setTimeout(r, 1));
    this.closed = true;
    this.outbox?.close();
    fs.closeSync(this.fd);
    fs.closeSync(this.lockFd);
  }
}

/**
 * Where a list is in the cluster's stream: the stream's epoch, the last entry id read, how many
 * entries of the stream that makes (from its start), and the last own change seen in it.
 */
export interface SharedPosition {
  epoch: string;
  id: string;
  read: number;
  confirmed: number;
}

const POSITION_FILE = "shared.pos";

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

/** Deletes every expired entry from `table` (compaction did not copy their records). */
function dropExpired(table: HashTable, nowSec: number): void {
  // A deletion may shift a later entry into the hole (so the slot is looked at again) or, across the
  // end of the array, into a slot already passed: hence passes until one finds nothing.
  for (let found = true; found; ) {
    found = false;
    for (let s = 0; s < table.capacity; ) {
      const e = table.occupied(s) ? table.expiryAt(s) : 0;
      if (e !== 0 && e <= nowSec) {
        table.deleteSlot(s);
        found = true;
      } else s++;
    }
  }
}

/** Reads every live entry of a list directory without taking its lock (for a stopped or busy daemon). */
export function readEntries(dir: string, now = Date.now()): SuppressionEntry[] {
  const file = join(dir, LOG_FILE);
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new SuppressionError("io", `cannot read ${file}: ${errnoText(err)}`, err);
  }
  try {
    const head = new Uint8Array(FILE_HEADER_BYTES);
    const n = fs.readSync(fd, head, 0, FILE_HEADER_BYTES, 0);
    if (n === 0) return [];
    const problem = checkFileHeader(head.subarray(0, n));
    if (problem) throw new SuppressionError("corrupt", `${file}: ${problem}`);
    // Last record per key wins; removals and expiry drop it.
    const map = new Map<string, SuppressionEntry>();
    const nowSec = Math.floor(now / 1000);
    scanFd(fd, FILE_HEADER_BYTES, (r) => {
      const { scope, address } = decodeKey(r);
      const k = keyOf(scope, address);
      if (r.type === TYPE_REMOVE || (r.expiresSec !== 0 && r.expiresSec <= nowSec)) {
        map.delete(k);
        return;
      }
      map.delete(k); // re-insert: order by last change
      map.set(k, {
        address,
        scope,
        reason: REASONS[r.reason] ?? "manual",
        addedMs: r.addedSec * 1000,
        ...(r.expiresSec !== 0 ? { expiresMs: r.expiresSec * 1000 } : {}),
      });
    });
    return [...map.values()];
  } finally {
    fs.closeSync(fd);
  }
}
