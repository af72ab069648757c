/**
 * Recovery: rebuilding the index from the segments when the spool is opened (after a clean stop or a
 * crash, the same way).
 *
 * Owns: replaying every record into the index (a MESSAGE record creates or, as a compaction copy,
 * moves a message; an OUTCOME record sets its state), telling a torn tail from damage, cutting the
 * torn tail off the active segment, copying damaged ranges to the quarantine, accounting live bytes
 * and pins per segment, and reclaiming at once what the replay shows to be dead, stale or damaged.
 * Does not own: finding records and sorting bad bytes into damage and tail (_scan.ts), the quarantine
 * files (_quarantine.ts), deleting and compacting (_segments.ts, _compact.ts), the byte layout.
 * Invariants:
 * - a message's state is its last MESSAGE record (new or compaction copy, which carries the current
 *   state) followed by its last OUTCOME record (a full snapshot): records replay in log order;
 * - only the last segment can have a torn tail (a batch cut before its fdatasync returned, so never
 *   acknowledged): it is cut off; a short end of a sealed segment, or bad bytes inside a complete
 *   batch, are damage to acknowledged data: quarantined, never cut away unseen;
 * - appends never go to a segment with damage or of an older format version (it is sealed first);
 * - a read-only recovery (verify, stats) changes no byte.
 */
import type { Logger } from "../observe/index.ts";
import {
  DecodeError,
  encodeFileHeader,
  FILE_HEADER_BYTES,
  FILE_VERSION,
  newRecordHead,
  peekRecord,
  TYPE_MESSAGE,
} from "./_format.ts";
import type { FileLayer } from "./_files.ts";
import type { SlotIndex } from "./_index.ts";
import { quarantineRange } from "./_quarantine.ts";
import { scanSegment } from "./_scan.ts";
import type { Segment, Segments } from "./_segments.ts";
import type { DamagedRecord, RecoveryReport } from "./types.ts";

export interface RecoverInput {
  /** The spool directory (for the quarantine). */
  dir: string;
  files: FileLayer;
  index: SlotIndex;
  segments: Segments;
  readOnly: boolean;
  log: Logger | undefined;
  /** Queues a compaction of a segment with live messages (stale copies or damage in it). */
  compact: (seg: Segment) => void;
  /** Filled in as recovery goes. */
  report: RecoveryReport;
}

export async function recover(input: RecoverInput): Promise<void> {
  const { dir, files, index: idx, segments: segs, readOnly, log, report: rep } = input;
  const t0 = performance.now();
  const names = segs.names();
  const head = newRecordHead();
  /** Segments holding records superseded by a compaction copy (an interrupted compaction). */
  const staleSources = new Set<number>();
  /** Segments holding damage: compacted right after the scan, once their bad bytes are quarantined. */
  const damagedSegments = new Set<number>();
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    const last = i === names.length - 1;
    const seg = segs.openExisting(name, !last);
    const { seq, fd } = seg;
    const damage: DamagedRecord[] = [];
    const result = scanSegment(files, fd, (buf, off, total, fileOffset) => {
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
            segs.addDep(from, seq);
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
        if (!readOnly) {
          if (result.tailFrom < FILE_HEADER_BYTES) {
            files.truncate(fd, 0);
            await files.write(fd, encodeFileHeader(seq), 0);
            seg.size = FILE_HEADER_BYTES;
          } else {
            files.truncate(fd, result.tailFrom);
            seg.size = result.tailFrom;
          }
          await files.fdatasync(fd);
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
        if (!readOnly) d.quarantine = quarantineRange(files, fd, dir, name, d.offset, d.bytes);
        rep.damaged.push(d);
      }
    }
    // Appends go to a segment of the current version, and never after damage.
    if (last && !readOnly && (result.version < FILE_VERSION || damage.length > 0)) segs.mustRotate = true;
  }
  rep.segments = names.length;

  // Final states: free the dead, account the living.
  for (let slot = 0; slot < idx.highWater; slot++) {
    if (idx.live[slot] !== 1) continue;
    const rs = idx.recSeg[slot]!;
    const os = idx.outSeg[slot]!;
    if (idx.pending[slot] === 0) {
      rep.deadMessages++;
      if (os !== 0 && os !== rs) segs.addDep(rs, os);
      idx.release(slot);
      continue;
    }
    const seg = segs.bySeq.get(rs)!;
    seg.liveBytes += idx.recLen[slot]!;
    seg.liveCount++;
    if (os !== 0 && os !== rs) segs.bySeq.get(os)!.pins++;
  }
  rep.recipients = idx.countRecipients();
  rep.messages = idx.liveCount;

  if (!readOnly) {
    if (names.length === 0) await segs.create();
    else segs.active = segs.bySeq.get(segs.lastSeq)!;
    if (segs.mustRotate) {
      // Seal the old or damaged active segment now, so that the loop below can reclaim it.
      await segs.create();
      segs.mustRotate = false;
    }
    for (const seg of [...segs.bySeq.values()]) {
      if (!seg.sealed) continue;
      if (seg.liveCount === 0 && seg.pins === 0) {
        segs.scheduleDelete(seg);
        rep.segmentsReclaimed++;
      } else if ((staleSources.has(seg.seq) || damagedSegments.has(seg.seq)) && seg.liveCount > 0) {
        input.compact(seg);
        rep.segmentsReclaimed++;
      }
    }
    await segs.settle();
  }
  rep.ms = performance.now() - t0;
  if (rep.damaged.length > 0)
    log?.warn(
      `spool ${dir}: ${rep.damaged.length} damaged range(s) skipped${readOnly ? "" : " and copied to the quarantine"}`,
    );
  log?.info(
    `spool ${dir}: ${rep.messages} messages in ${rep.segments} segments recovered in ${rep.ms.toFixed(0)} ms`,
  );
}
