/**
 * `mta queue verify` and `mta queue stats` as library functions: read-only, no lock needed.
 *
 * Owns: `verifySpool`, `spoolStats`, and their plain-text renderers.
 * Does not own: printing or exit codes (cli/); a damaged spool makes `ok` false and the CLI exits 65.
 * Invariant: nothing here writes to the spool directory, so it is safe next to a running daemon
 * (whose in-flight batch then shows as a torn tail, not as damage). Damage to acknowledged bytes, and
 * quarantine files an earlier start left, both make `ok` false.
 */
import { formatBytes } from "../lib/index.ts";
import { listQuarantine } from "./_quarantine.ts";
import { Spool } from "./spool.ts";
import type { SpoolStats, VerifyReport } from "./types.ts";

/** Scans every record of every segment, checks every checksum and replays the index. */
export async function verifySpool(dir: string): Promise<VerifyReport> {
  const spool = await Spool.openReadOnly({ dir, bodyCacheBytes: 0 });
  try {
    const rec = spool.recovery;
    const segs = spool.segmentRecords();
    const st = spool.stats();
    const report: VerifyReport = {
      dir,
      segments: segs.map((s) => ({
        name: s.name,
        bytes: s.bytes,
        records: s.messageRecords + s.outcomeRecords,
        messageRecords: s.messageRecords,
        outcomeRecords: s.outcomeRecords,
      })),
      records: rec.records,
      messages: rec.messages,
      recipients: rec.recipients,
      liveBytes: st.liveBytes,
      fileBytes: st.fileBytes,
      damaged: rec.damaged,
      quarantined: listQuarantine(dir),
      ok: false,
    };
    report.ok = report.damaged.length === 0 && report.quarantined.length === 0;
    if (rec.tornTail) report.tornTail = { ...rec.tornTail };
    return report;
  } finally {
    await spool.close();
  }
}

/** Segments, live/dead bytes, messages and recipients by state, of a spool no daemon holds. */
export async function spoolStats(dir: string): Promise<SpoolStats> {
  const spool = await Spool.openReadOnly({ dir, bodyCacheBytes: 0 });
  try {
    return spool.stats();
  } finally {
    await spool.close();
  }
}

export function formatVerifyReport(r: VerifyReport): string {
  const lines = [
    `spool ${r.dir}: ${r.segments.length} segment(s), ${r.records} record(s), ${formatBytes(r.fileBytes)}`,
    `live: ${r.messages} message(s), ${r.recipients.pending} pending recipient(s), ${formatBytes(r.liveBytes)}`,
  ];
  for (const d of r.damaged)
    lines.push(`DAMAGED ${d.segment} offset ${d.offset} (${d.bytes} bytes): ${d.reason}`);
  for (const q of r.quarantined)
    lines.push(
      `QUARANTINED ${q.path} (${q.bytes} bytes moved aside at an earlier start; remove it once looked at)`,
    );
  if (r.tornTail)
    lines.push(
      `torn tail: ${r.tornTail.segment} from offset ${r.tornTail.offset} (${r.tornTail.bytes} bytes, ${r.tornTail.reason}: never acknowledged; cut on next start)`,
    );
  const problems = [
    ...(r.damaged.length > 0 ? [`${r.damaged.length} damaged range(s)`] : []),
    ...(r.quarantined.length > 0 ? [`${r.quarantined.length} quarantined file(s)`] : []),
  ];
  lines.push(r.ok ? "ok" : problems.join(", "));
  return `${lines.join("\n")}\n`;
}
