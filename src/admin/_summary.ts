/**
 * The answer of `mta queue summary`: one row per destination, totals, order and `top`; the same for one
 * node and for the fleet's merged rows (_fleet.ts).
 *
 * Owns: turning the scheduler's queue shape into plain-JSON rows, adding them up, sorting them.
 * Does not own: the aggregation over the queue (scheduler/'s `summarize`, the one place), merging
 * nodes (_fleet.ts), the shapes (_shapes.ts).
 * Invariant: the order is total (ties broken by destination), so the same queue gives the same answer.
 */
import type { DestinationSummary } from "../scheduler/index.ts";
import { nullable, type SortKey, type SummaryRow } from "./_shapes.ts";

/** The scheduler's (or the offline spool's) shape as answer rows. */
export function summaryRows(shape: DestinationSummary[]): SummaryRow[] {
  return shape.map((s) => ({
    destination: s.destination,
    site: nullable(s.site),
    messages: s.messages,
    recipients: s.recipients,
    bytes: s.bytes,
    oldestMs: nullable(s.oldestMs),
    nextAttemptMs: nullable(s.nextAttemptMs),
    activeConnections: s.activeConnections,
    state: s.state,
    reason: nullable(s.reason),
    untilMs: nullable(s.untilMs),
    lastError: nullable(s.lastError),
  }));
}

/** Totals, order and `top` of summary rows (one node's, or a fleet's merged rows). */
export function summaryOf<R extends SummaryRow>(
  rows: R[],
  sort: SortKey,
  top: number | undefined,
  nowMs: number,
) {
  const totals = {
    destinations: 0,
    messages: 0,
    recipients: 0,
    bytes: 0,
    oldestMs: null as number | null,
    activeConnections: 0,
  };
  for (const r of rows) {
    if (r.messages > 0) totals.destinations++;
    totals.messages += r.messages;
    totals.recipients += r.recipients;
    totals.bytes += r.bytes;
    totals.activeConnections += r.activeConnections;
    if (r.oldestMs !== null && (totals.oldestMs === null || r.oldestMs < totals.oldestMs))
      totals.oldestMs = r.oldestMs;
  }
  const byTime = (a: number | null, b: number | null) => (a ?? Infinity) - (b ?? Infinity);
  const cmp: Record<SortKey, (a: SummaryRow, b: SummaryRow) => number> = {
    messages: (a, b) => b.messages - a.messages,
    recipients: (a, b) => b.recipients - a.recipients,
    bytes: (a, b) => b.bytes - a.bytes,
    oldest: (a, b) => byTime(a.oldestMs, b.oldestMs),
    next: (a, b) => byTime(a.nextAttemptMs, b.nextAttemptMs),
    destination: () => 0,
  };
  rows.sort(
    (a, b) => cmp[sort](a, b) || (a.destination < b.destination ? -1 : a.destination > b.destination ? 1 : 0),
  );
  const n = top ?? rows.length;
  return {
    nowMs,
    sort,
    totals,
    omitted: Math.max(0, rows.length - n),
    destinations: rows.slice(0, n),
  };
}
