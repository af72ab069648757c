/**
 * Reading entries back from the log file: RAM holds only hashes, so a listing, an export or a share
 * of the whole list reads the addresses from the file.
 *
 * Owns: `forEachEntry` (a live list's entries in file order, a slice at a time, a record listed only
 * when it is the one that set its key's current entry), `readEntries` (a list directory read without
 * its lock: last record per key wins).
 * Does not own: the record format (_log.ts), the tables (_table.ts), filtering and paging (callers).
 * Invariants: nothing here writes; a listing of a live list counts as a reader, so compaction does not
 * renumber under it, and it starts only after a running compaction ended.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { errnoText } from "../lib/index.ts";
import {
  checkFileHeader,
  decodeKey,
  FILE_HEADER_BYTES,
  keyOf,
  keyStart,
  LOG_FILE,
  REASONS,
  type ScannedRecord,
  TYPE_ADD,
  TYPE_REMOVE,
} from "./_log.ts";
import { scanFd, scanFdYielding } from "./_scan.ts";
import type { LogStore } from "./_store.ts";
import { HASH, keyHashBytes } from "./_table.ts";
import { SuppressionError, type SuppressionEntry } from "./types.ts";

/** The entry an add record sets (its key decoded unless the caller already has it). */
function entryOf(r: ScannedRecord, scope?: string, address?: string): SuppressionEntry {
  if (scope === undefined || address === undefined) ({ scope, address } = decodeKey(r));
  return {
    address,
    scope,
    reason: REASONS[r.reason] ?? "manual",
    addedMs: r.addedSec * 1000,
    ...(r.expiresSec !== 0 ? { expiresMs: r.expiresSec * 1000 } : {}),
  };
}

/**
 * Streams live entries to `fn` in file order (oldest first), a slice at a time so that a running
 * daemon keeps serving; `fn` returns false to stop. Compaction waits until no listing runs.
 */
export async function forEachEntry(
  store: LogStore,
  fn: (e: SuppressionEntry) => boolean,
  between?: () => Promise<void>,
): Promise<void> {
  while (store.compacting) await store.compacting.catch(() => {});
  store.readers++;
  try {
    const nowSec = Math.floor(store.now() / 1000);
    let ordinal = 0;
    let going = true;
    await scanFdYielding(
      store.fd,
      FILE_HEADER_BYTES,
      (r) => {
        const o = ordinal++;
        if (!going || r.type !== TYPE_ADD) return;
        if (r.expiresSec !== 0 && r.expiresSec <= nowSec) return;
        keyHashBytes(r.buf, keyStart(r), r.start + r.length, r.scopeBytes);
        const t = r.scopeBytes > 0 ? store.scopedTable : store.table;
        const slot = t.find(HASH[0]!, HASH[1]!);
        if (slot < 0 || t.ordinalAt(slot) !== o) return;
        going = fn(entryOf(r));
      },
      1 << 20,
      between,
    );
  } finally {
    store.readers--;
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
      map.set(k, entryOf(r, scope, address));
    });
    return [...map.values()];
  } finally {
    fs.closeSync(fd);
  }
}
