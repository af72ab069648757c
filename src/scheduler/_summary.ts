/**
 * The queue's shape per destination (qshape, KumoMTA's queue-summary): the one aggregation of the
 * queue, for the live scheduler and for a stopped spool alike.
 *
 * Owns: `summarize` (rows per recipient domain, each naming the next hop it is queued under when that
 * is another site, plus sites worth showing that carry no row's mail: suspended, throttled, active),
 * `queueTotals` (the totals behind the `mta_queue_*` gauges).
 * Does not own: the per-message state (the scheduler's view passed in), sorting and output (admin).
 * Invariant: one pass over the in-RAM index; no disk reads. `activeConnections` counts the attempts in
 * flight for the row's own messages, so rows add up even when many domains share one site.
 */
import type { Site } from "./_site.ts";
import type { DestinationSummary, SchedulerSpool } from "./_types.ts";

/** What the live scheduler knows beyond the spool; absent for a stopped spool. */
export interface LiveView {
  /** Where the slot's message is: due now (ready, active, routing), or its due time, or undefined (spool's). */
  dueAtOf(slot: number, nowMs: number): number | undefined;
  /** Whether the slot's message is due now (ready, being attempted, waiting for its route). */
  isDue(slot: number): boolean;
  /** The site a domain's mail is queued under now, if the scheduler has it. */
  siteOf(domain: string): Site | undefined;
  /** Sites worth a row of their own even without queued mail. */
  forEachSite(cb: (s: Site) => void): void;
  inFlight(domain: string): number;
  limitOf(site: Site, nowMs: number): number;
}

type Acc = {
  messages: number;
  recipients: number;
  bytes: number;
  oldestMs?: number;
  nextMs?: number;
  ready: number;
};

export function summarize(spool: SchedulerSpool, nowMs: number, view?: LiveView): DestinationSummary[] {
  const acc = new Map<string, Acc>();
  spool.forEachLive((slot) => {
    const name = spool.destinationOf(slot);
    let a = acc.get(name);
    if (!a) acc.set(name, (a = { messages: 0, recipients: 0, bytes: 0, ready: 0 }));
    a.messages++;
    a.recipients += spool.pendingRecipientsOf(slot);
    a.bytes += spool.sizeOf(slot);
    const arrival = spool.arrivalOf(slot);
    if (a.oldestMs === undefined || arrival < a.oldestMs) a.oldestMs = arrival;
    const next = view?.dueAtOf(slot, nowMs) ?? spool.nextAttemptOf(slot);
    if (view?.isDue(slot)) a.ready++;
    if (a.nextMs === undefined || next < a.nextMs) a.nextMs = next;
  });
  const names = new Set<string>(acc.keys());
  view?.forEachSite((s) => {
    if (s.active > 0 || s.suspendedUntilMs > nowMs || s.throttle || s.bounce) names.add(s.name);
  });
  const out: DestinationSummary[] = [];
  for (const name of [...names].sort()) {
    const a = acc.get(name) ?? { messages: 0, recipients: 0, bytes: 0, ready: 0 };
    const d = view?.siteOf(name);
    const s: DestinationSummary = {
      destination: name,
      ...(d && d.name !== name ? { site: d.name } : {}),
      messages: a.messages,
      recipients: a.recipients,
      bytes: a.bytes,
      oldestMs: a.oldestMs,
      nextAttemptMs: a.nextMs,
      ready: a.ready,
      activeConnections: view?.inFlight(name) ?? 0,
      connectionLimit: d && view ? view.limitOf(d, nowMs) : 0,
      window: d?.window.size ?? 0,
      state: "idle",
    };
    if (d) {
      const st = d.state(nowMs);
      s.state = st.state;
      if (st.reason !== undefined) s.reason = st.reason;
      if (st.untilMs !== undefined) s.untilMs = st.untilMs;
      if (d.lastError !== undefined) s.lastError = d.lastError;
    }
    if (s.state === "active" && s.activeConnections === 0 && a.ready === 0 && d && d.name !== name)
      s.state = "idle";
    if (s.state === "idle" && (s.activeConnections > 0 || a.ready > 0)) s.state = "active";
    out.push(s);
  }
  // A next hop (a smarthost route's site) already shows on the rows of the domains it carries, with its
  // state: a row of its own, without mail of its own, would read as a second, empty destination.
  const carried = new Set(out.flatMap((r) => (r.site !== undefined && r.messages > 0 ? [r.site] : [])));
  return out.filter((r) => r.messages > 0 || !carried.has(r.destination));
}

/** Pending recipients, bytes and the oldest arrival over every live message. */
export function queueTotals(spool: SchedulerSpool): { recipients: number; bytes: number; oldestMs: number } {
  let recipients = 0;
  let bytes = 0;
  let oldestMs = Number.POSITIVE_INFINITY;
  spool.forEachLive((slot) => {
    recipients += spool.pendingRecipientsOf(slot);
    bytes += spool.sizeOf(slot);
    const a = spool.arrivalOf(slot);
    if (a < oldestMs) oldestMs = a;
  });
  return { recipients, bytes, oldestMs };
}
