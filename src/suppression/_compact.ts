/**
 * Compaction of the suppression list: rewriting the log with one record per live entry.
 *
 * Owns: the policy (dead records, i.e. removed, replaced or expired, outnumber live ones and 10,000),
 * the rewrite (a new file, fdatasync'ed, renamed over the old one, the directory synced), switching
 * the store to the new file, renumbering the tables' ordinals and dropping expired entries.
 * Does not own: the file's format (_log.ts), the group commit (_store.ts), reading entries (_read.ts).
 * Invariants: it starts only when no batch is queued or in flight and no listing runs; while it runs,
 * changes wait (add, remove and applyShared await `store.compacting`) and checks go on between
 * slices; the tables are renumbered only once the new file is in place; a failure leaves the old file
 * in place and the tables as they were.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { errorMessage } from "../lib/index.ts";
import { encodeFileHeader, FILE_HEADER_BYTES, keyStart, LOG_FILE, TYPE_ADD } from "./_log.ts";
import { CHUNK_BYTES, scanFdYielding } from "./_scan.ts";
import { type LogStore, pause } from "./_store.ts";
import { HASH, type HashTable, keyHashBytes } from "./_table.ts";

export class Compactor {
  constructor(private readonly store: LogStore) {}

  /** Dead records (removed, replaced, expired) outnumber live ones by enough: rewrite the file. */
  maybe(): void {
    const s = this.store;
    if (s.compacting || s.closed) return;
    const dead = s.records - s.count;
    if (dead > Math.max(s.count, 10_000)) {
      this.run().catch((err) =>
        s.log?.error("suppression list compaction failed", { error: errorMessage(err) }),
      );
    }
  }

  /**
   * Rewrites the log with one record per live entry: a new file, fdatasync'ed, renamed over the old
   * one, the directory synced. It reads a slice at a time (checks go on between slices); changes wait
   * until it is done; a failure leaves the old file in place.
   */
  run(): Promise<void> {
    const s = this.store;
    if (s.compacting) return s.compacting;
    s.compacting = this.rewrite().finally(() => {
      s.compacting = undefined;
    });
    return s.compacting;
  }

  private async rewrite(): Promise<void> {
    const s = this.store;
    while (s.busy || s.readers > 0) await pause();
    const file = join(s.dir, LOG_FILE);
    const tmp = `${file}.compact`;
    const nowSec = Math.floor(s.now() / 1000);
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
      await scanFdYielding(s.fd, FILE_HEADER_BYTES, (r) => {
        const o = ordinal++;
        if (r.type !== TYPE_ADD) return;
        keyHashBytes(r.buf, keyStart(r), r.start + r.length, r.scopeBytes);
        const scoped = r.scopeBytes > 0;
        const t = scoped ? s.scopedTable : s.table;
        const slot = t.find(HASH[0]!, HASH[1]!);
        if (slot < 0 || t.ordinalAt(slot) !== o) return;
        if (r.expiresSec !== 0 && r.expiresSec <= nowSec) return;
        if (used + r.length > outBuf.length) flush();
        (r.buf as Buffer).copy(outBuf, used, r.start, r.start + r.length);
        used += r.length;
        moves.push(scoped ? -(slot + 1) : slot, newOrdinal++);
      });
      flush();
      if (s.sync) fs.fsyncSync(out);
      fs.closeSync(out);
      fs.renameSync(tmp, file);
      if (s.sync) {
        const d = fs.openSync(s.dir, "r");
        fs.fsyncSync(d);
        fs.closeSync(d);
      }
      // The new file is in place: switch to it, then renumber (slots do not move while changes wait).
      const old = s.fd;
      s.fd = fs.openSync(file, fs.constants.O_RDWR);
      fs.closeSync(old);
      for (let i = 0; i < moves.length; i += 2) {
        const m = moves[i]!;
        if (m >= 0) s.table.setOrdinal(m, moves[i + 1]!);
        else s.scopedTable.setOrdinal(-m - 1, moves[i + 1]!);
      }
      // Expired entries go last: deleting shifts slots.
      dropExpired(s.table, nowSec);
      dropExpired(s.scopedTable, nowSec);
      const before = s.records;
      s.records = newOrdinal;
      s.size = size;
      s.log?.info("suppression list compacted", {
        entries: s.count,
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
  }
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
