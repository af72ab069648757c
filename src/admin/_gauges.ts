/**
 * The queue's Prometheus series: `mta_queue_messages`, `_recipients`, `_bytes`,
 * `_oldest_message_age_seconds` and `mta_queue_admin_messages_total`.
 *
 * Owns: registering them over a spool's in-RAM index.
 * Does not own: the index (spool/), the totals' arithmetic (scheduler/'s `queueTotals`), counting
 * admin actions (_ops.ts increments the counter returned here).
 * Invariant: one pass over the index per scrape at most once a second (about 10 ms per million
 * messages); no label per destination, whose number is unbounded.
 */
import type { Clock } from "../lib/index.ts";
import type { Counter, Metrics } from "../observe/index.ts";
import { queueTotals } from "../scheduler/index.ts";
import type { Spool } from "../spool/index.ts";

/** Registers the queue gauges and returns the counter of messages bounced or deleted by the operator. */
export function registerQueueMetrics(m: Metrics, spool: Spool, clock: Clock): Counter {
  const adminCounter = m.counter(
    "mta_queue_admin_messages_total",
    "Messages bounced or deleted by the operator, by action",
  );
  let cache: { atMs: number; recipients: number; bytes: number; oldestMs: number } | undefined;
  const scan = () => {
    const now = clock.now();
    if (cache && now - cache.atMs < 1000) return cache;
    cache = { atMs: now, ...queueTotals(spool) };
    return cache;
  };
  m.gauge("mta_queue_messages", "Messages in the queue (live in the spool)", (set) =>
    set(spool.messageCount),
  );
  m.gauge("mta_queue_recipients", "Pending recipients in the queue", (set) => set(scan().recipients));
  m.gauge("mta_queue_bytes", "Body bytes of the messages in the queue", (set) => set(scan().bytes));
  m.gauge(
    "mta_queue_oldest_message_age_seconds",
    "Age of the oldest message in the queue (0 when empty)",
    (set) => {
      const s = scan();
      set(Number.isFinite(s.oldestMs) ? Math.max(0, (clock.now() - s.oldestMs) / 1000) : 0);
    },
  );
  return adminCounter;
}
