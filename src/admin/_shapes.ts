/**
 * The answers of `mta queue` commands: their JSON shapes (identical live and offline, plain JSON: no
 * undefined, no Infinity), the sort keys and message states, and `QueueError` with the HTTP status
 * the control API answers it with.
 *
 * Owns: the shapes only. Does not own: computing them (_ops.ts), transport (_client.ts).
 */
import { MtaError } from "../lib/index.ts";
import type { SpoolStats } from "../spool/index.ts";

/** An error of a queue command, with the HTTP status the control API answers it with. */
export class QueueError extends MtaError {
  override name = "QueueError";
  constructor(
    code: "usage" | "data" | "unavailable" | "noperm" | "runtime",
    message: string,
    readonly status: number,
  ) {
    super(code, message);
  }
}

export const SORT_KEYS = ["messages", "recipients", "bytes", "oldest", "next", "destination"] as const;
export type SortKey = (typeof SORT_KEYS)[number];

export const MESSAGE_STATES = ["active", "deferred", "held"] as const;
/** active: due now (ready or being attempted); deferred: waiting for its next attempt; held: its destination is suspended. */
export type MessageState = (typeof MESSAGE_STATES)[number];

export interface SummaryRow {
  destination: string;
  /** The next hop (site) the destination's mail is queued under when it is another one, e.g. a smarthost route's. */
  site: string | null;
  messages: number;
  /** Pending recipients. */
  recipients: number;
  bytes: number;
  oldestMs: number | null;
  nextAttemptMs: number | null;
  activeConnections: number;
  /** active | idle | suspended | backoff | throttled. */
  state: string;
  reason: string | null;
  untilMs: number | null;
  lastError: string | null;
}

export interface QueueSummary {
  nowMs: number;
  sort: SortKey;
  totals: {
    destinations: number;
    messages: number;
    recipients: number;
    bytes: number;
    oldestMs: number | null;
    activeConnections: number;
  };
  /** Rows left out by `top`. */
  omitted: number;
  destinations: SummaryRow[];
}

export interface Selector {
  id?: string;
  destination?: string;
  sender?: string;
  state?: MessageState;
  /** Arrived at least this long ago. */
  olderThanMs?: number;
}

export interface MessageRow {
  id: string;
  destination: string;
  sender: string;
  recipients: number;
  pendingRecipients: number;
  bytes: number;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  state: MessageState;
}

export interface MessageList {
  nowMs: number;
  /** All matches, even those past `limit`. */
  matched: number;
  messages: MessageRow[];
}

export interface MessageDetail {
  id: string;
  destination: string;
  sender: string;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  state: MessageState;
  bytes: number;
  recipients: {
    address: string;
    state: string;
    lastReply: string | null;
    /** The TLS of the recipient's last attempt (policy, version, cipher, verified); null: none kept. */
    tls: { policy: string; version?: string; cipher?: string; verified: boolean } | null;
    /** The bounce class of the last reply of a recipient not delivered (null when there is none). */
    class: string | null;
    notify: string[] | null;
    orcpt: string | null;
  }[];
  attributes: Record<string, string>;
  headers: { name: string; value: string }[];
  /** The message as text (bytes as Latin-1) when asked for. */
  body?: string;
}

export interface ActionResult {
  action: "bounce" | "delete";
  /** Messages the selector matches now. */
  matched: number;
  /** Whether it acted (`yes`) or only counted. */
  done: boolean;
  /** Messages bounced or deleted. */
  affected: number;
  recipients: number;
  dsns: number;
  /** Up to 20 matching ids, for a look before `--yes`. */
  sample: string[];
  /** Messages that could not be changed (an error each), e.g. a spool write error. */
  failed: { id: string; error: string }[];
}

export interface FlushResult {
  /** Messages made due now: those waiting for a retry, plus (live) those of a destination whose backoff was lifted. */
  flushed: number;
  /** Destinations whose site backoff was lifted (live only): their waiting messages are tried now. */
  backoffLifted: string[];
  /** true: the running scheduler retries now; false: recorded in the spool for the next start. */
  live: boolean;
}

export type StatsResult = SpoolStats & { dir: string };

/** The answer to `suspend`/`resume` without a daemon. */
export function daemonNeeded(what: string): QueueError {
  return new QueueError(
    "unavailable",
    `${what} needs a running daemon: suspensions live in the daemon's memory, not in the spool (start mta serve, then run this again)`,
    503,
  );
}

/** The plain-JSON rule of every answer: undefined and a non-finite number become null. */
export function nullable<T>(v: T | undefined): T | null {
  return v === undefined || (typeof v === "number" && !Number.isFinite(v)) ? null : v;
}
