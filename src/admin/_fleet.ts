/**
 * The fleet view: every live node's queue summary merged into one (`mta queue summary --cluster`).
 *
 * Owns: `ClusterSummary` and `mergeSummaries` (rows per destination summed over the nodes that
 * answered; the most serious state wins), the list of nodes with those that did not answer marked.
 * Does not own: asking the nodes (app/cluster.ts), one node's summary (_ops.ts, _summary.ts).
 */
import { summaryOf } from "./_summary.ts";
import type { QueueSummary, SortKey, SummaryRow } from "./_shapes.ts";

export interface FleetNode {
  name: string;
  control: string;
  version: string;
  /** Whether it answered; `error` says why not. */
  ok: boolean;
  error?: string;
  totals?: QueueSummary["totals"];
}

export type FleetRow = SummaryRow & {
  /** The nodes with mail or connections for this destination. */
  nodes: string[];
};

export interface ClusterSummary {
  nowMs: number;
  sort: SortKey;
  /** Over the nodes that answered. */
  totals: QueueSummary["totals"];
  omitted: number;
  destinations: FleetRow[];
  nodes: FleetNode[];
  /** Names of live nodes that did not answer: their mail is missing from the totals. */
  unanswered: string[];
  /** Why the list of nodes may be stale (Redis unreachable). */
  note?: string;
}

/** Most serious first: a destination held anywhere is shown held. */
const SEVERITY = ["suspended", "backoff", "throttled", "active", "idle"];

function severity(state: string): number {
  const i = SEVERITY.indexOf(state);
  return i < 0 ? SEVERITY.length : i;
}

function earliest(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.min(a, b);
}

export function mergeSummaries(
  parts: { node: string; summary: QueueSummary }[],
  nodes: FleetNode[],
  sort: SortKey,
  top: number | undefined,
  nowMs: number,
): ClusterSummary {
  const rows = new Map<string, FleetRow>();
  for (const { node, summary } of parts)
    for (const r of summary.destinations) {
      const cur = rows.get(r.destination);
      if (!cur) {
        rows.set(r.destination, { ...r, nodes: [node] });
        continue;
      }
      cur.nodes.push(node);
      cur.messages += r.messages;
      cur.recipients += r.recipients;
      cur.bytes += r.bytes;
      cur.activeConnections += r.activeConnections;
      cur.oldestMs = earliest(cur.oldestMs, r.oldestMs);
      cur.nextAttemptMs = earliest(cur.nextAttemptMs, r.nextAttemptMs);
      if (severity(r.state) < severity(cur.state)) {
        cur.state = r.state;
        cur.reason = r.reason;
        cur.untilMs = r.untilMs;
      }
      cur.lastError ??= r.lastError;
    }
  for (const r of rows.values()) r.nodes.sort();
  const s = summaryOf([...rows.values()], sort, top, nowMs);
  return {
    ...s,
    nodes,
    unanswered: nodes.filter((n) => !n.ok).map((n) => n.name),
  };
}
