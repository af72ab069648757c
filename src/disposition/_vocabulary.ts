/**
 * One vocabulary for what happened to a recipient, and the one table that says what each word is
 * called on disk, in the delivery log, in a DSN and in metrics.
 *
 * Owns: `ResultKind` and `RESULT`. The outside names are stable interfaces (spool states are on disk,
 * delivery-log event types are read by scripts), so they are kept as they are and mapped here, once.
 * Does not own: classifying a reply (smtp/'s `classifyReply`), the DSN text (bounce/).
 */
import type { DeliveryEventType } from "../observe/index.ts";

/**
 * `delivered`, `transient`, `permanent`: the deliverer's per-recipient results. `expired`: max age
 * reached. `bounced`/`deleted`: an operator's `mta queue bounce`/`delete`.
 */
export type ResultKind = "delivered" | "transient" | "permanent" | "expired" | "bounced" | "deleted";

export interface ResultNames {
  /** The recipient's state in the spool afterwards. */
  state: "delivered" | "pending" | "failed";
  /** The delivery-log event type. */
  event: DeliveryEventType;
  /** The DSN action (RFC 3464 §2.3.3) when the sender asked for one (NOTIFY); undefined: none. */
  dsn: "delivered" | "failed" | undefined;
  /** The `result` label of `mta_scheduler_recipients_total`. */
  metric: string;
}

export const RESULT: Readonly<Record<ResultKind, ResultNames>> = Object.freeze({
  delivered: { state: "delivered", event: "delivery", dsn: "delivered", metric: "delivered" },
  // A delay warning ("delayed" DSN) is decided by time, not by the result: see the disposer.
  transient: { state: "pending", event: "transient-failure", dsn: undefined, metric: "transient" },
  permanent: { state: "failed", event: "bounce", dsn: "failed", metric: "permanent" },
  expired: { state: "failed", event: "expiration", dsn: "failed", metric: "expired" },
  bounced: { state: "failed", event: "admin-bounce", dsn: "failed", metric: "admin-bounce" },
  deleted: { state: "failed", event: "admin-delete", dsn: undefined, metric: "admin-delete" },
});
