/**
 * The disposition step's value types.
 *
 * Owns: `Outcome` (what happened), `Verdict` (what the caller does next), `MessageEvent` (a
 * delivery-log line about a message), and the structural shapes of the spool and message it is given.
 */
import type { AttemptResult } from "../deliverer/index.ts";
import type { DeliveryEventType } from "../observe/index.ts";
import type { SmtpReply } from "../smtp/index.ts";

export type Outcome =
  /** An attempt's per-recipient results. */
  | { kind: "attempt"; result: AttemptResult }
  /** Max age reached: every pending recipient fails with its last reply. */
  | { kind: "expired" }
  /** Every pending recipient fails with `reply` without an attempt: "route" (DNS), "rule:<name>". */
  | { kind: "failed"; reply: SmtpReply; reason: string }
  /** `mta queue bounce`: fails with a DSN. */
  | { kind: "bounced" }
  /** `mta queue delete`: removed, no DSN. */
  | { kind: "deleted" };

export type Verdict = { kind: "done" } | { kind: "retry"; atMs: number };

export interface DispositionSettings {
  /** Reporting-MTA of DSNs. */
  hostname: string;
  maxAgeMs: number;
  /** 0 = no delay warnings. */
  delayWarningMs: number;
  /** DSNs return the whole original up to this size, else its header (bounce/'s default otherwise). */
  dsnMaxOriginalBytes?: number;
}

export interface DisposableMessage {
  id: string;
  sender: string;
  destination: string;
  arrivalMs: number;
  attempts: number;
  sizeBytes: number;
  recipients: {
    address: string;
    notify?: string[];
    orcpt?: string;
    state: "pending" | "delivered" | "failed";
    lastReply?: string;
  }[];
  attributes: Record<string, string>;
}

/** The TLS of a recipient's last attempt: the delivery log's `tls` without its failures. */
export interface RecipientTls {
  policy: string;
  version?: string;
  cipher?: string;
  verified: boolean;
}

/** What disposition needs of the spool (the real `Spool` has it). */
export interface DispositionSpool {
  recordOutcome(
    slot: number,
    u: {
      recipients: {
        index: number;
        state: "pending" | "delivered" | "failed";
        reply?: string;
        /** The attempt's TLS, kept with the reply for `mta queue show` (spool/'s `LastTls`). */
        tls?: RecipientTls;
      }[];
      attempts: number;
      nextAttemptMs?: number;
      reason?: string;
    },
  ): Promise<void>;
}

/** One delivery-log line about a message (and one recipient, except for `dsn`). */
export interface MessageEvent {
  type: DeliveryEventType;
  id: string;
  destination: string;
  sender?: string;
  recipient?: string;
  mx?: string;
  ip?: string;
  /** The TLS of the connection and the policy that applied (deliverer/'s `AttemptResult.tls`). */
  tls?: AttemptResult["tls"];
  code?: number;
  enhanced?: string;
  text?: string;
  attempt?: number;
  queueTimeMs?: number;
  size?: number;
  /** `dsn`: the DSN's own message id and its action (failed, delayed, delivered). */
  dsnId?: string;
  action?: string;
  /** `bounce` without a remote reply: "route" (DNS permanent) or "rule:<name>"; `dsn`: "admin-bounce". */
  reason?: string;
  /** The bounce class of a failed, deferred, expired or bounced recipient (when a classifier is given). */
  class?: string;
  /** `admin-bounce`: the recipient's last reply before the operator bounced it (why it was stuck). */
  lastReply?: string;
}

/**
 * Bounce classes and the suppression list as the disposition step uses them (feedback/ implements
 * it): asked once per recipient whose state an outcome changed, after the spool has the outcome.
 */
export interface Classifying {
  /**
   * The bounce class of one recipient's result, counted under its delivery-log event type: `reply`
   * is the remote's (or the MTA's own) reply, or for an operator's bounce the stored last reply when
   * there is one; an `expiration` is always "message-expired".
   */
  classOf(event: DeliveryEventType, reply: SmtpReply | string): string;
  /** A permanent failure (a `bounce` event) of `recipient` with class `cls`: may suppress; never throws. */
  bounced(recipient: string, sender: string, cls: string): void;
}
