/**
 * The scheduler's public value types and the shapes of what it is given.
 *
 * Owns: `DestinationPolicy`, `SchedulerOptions`, `SchedulerRoute`, `SchedulerEvent`, `DestinationSummary`,
 * and `SchedulerSpool` / `DeliveryEngine`: the parts of the spool and the deliverer the scheduler uses,
 * written structurally so tests and the app can pass the real `Spool` and `Deliverer`.
 * Does not own: DNS (the app passes `route`, built from static routes and dns/'s `resolveDestination`,
 * whose `RouteResult` fits `SchedulerRoute`; scheduler/ may not import dns/).
 */
import type { Clock } from "../lib/index.ts";
import type { AttemptResult, AttemptTarget, OutboundMessage } from "../deliverer/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import type { Rate } from "./_rate.ts";
import type { BackoffRule } from "./_rules.ts";

export type RecipientState = "pending" | "delivered" | "failed";
export type NotifyKeyword = "SUCCESS" | "FAILURE" | "DELAY" | "NEVER";

export interface SchedulerNewMessage {
  sender: string;
  destination: string;
  recipients: { address: string; notify?: NotifyKeyword[]; orcpt?: string }[];
  attributes?: Record<string, string>;
  body: Uint8Array;
}

export interface SchedulerStoredMessage {
  id: string;
  sender: string;
  destination: string;
  arrivalMs: number;
  attempts: number;
  recipients: {
    address: string;
    notify?: NotifyKeyword[];
    orcpt?: string;
    state: RecipientState;
    lastReply?: string;
  }[];
  attributes: Record<string, string>;
}

/** What the scheduler needs of the spool (the real `Spool` has all of it). */
export interface SchedulerSpool {
  append(msg: SchedulerNewMessage): Promise<{ id: string; slot: number }>;
  recordOutcome(
    slot: number,
    u: {
      recipients: { index: number; state: RecipientState; reply?: string }[];
      attempts: number;
      nextAttemptMs?: number;
      reason?: string;
    },
  ): Promise<void>;
  read(slot: number): Promise<{ message: SchedulerStoredMessage; body: Uint8Array }>;
  isLive(slot: number): boolean;
  idOf(slot: number): string;
  slotOf(id: string): number | undefined;
  destinationOf(slot: number): string;
  nextAttemptOf(slot: number): number;
  attemptsOf(slot: number): number;
  arrivalOf(slot: number): number;
  sizeOf(slot: number): number;
  pendingRecipientsOf(slot: number): number;
  forEachLive(cb: (slot: number) => void): void;
}

/** What the scheduler needs of the deliverer. */
export interface DeliveryEngine {
  deliver(target: AttemptTarget, msg: OutboundMessage): Promise<AttemptResult>;
}

/**
 * Where a destination's mail goes. dns/'s `RouteResult` is one; a static route (or the app) may add
 * AUTH, a TLS override, a source address and an EHLO name.
 */
export type SchedulerRoute =
  | {
      kind: "hosts";
      hosts: { name: string; ip: string; port: number }[];
      auth?: { username: string; password: string };
      tls?: "off" | "opportunistic" | "required";
      tlsVerify?: boolean;
      sourceAddress?: string;
      ehloName?: string;
      /**
       * The site whose queue and limits this destination shares (MX rollup: every domain whose MX
       * matches a rollup's patterns names the rollup). Default: the destination itself.
       */
      site?: string;
    }
  | { kind: "permanent"; enhanced: string; reason: string }
  | { kind: "transient"; reason: string };

export interface DestinationPolicy {
  /** Connection limit for this destination (capped by the global `maxConnections`). */
  maxConnections: number;
  /** Messages one connection worker sends before it ends (the deliverer's pool may still reuse the socket). */
  maxMessagesPerConnection: number;
  messageRate?: Rate;
  connectionRate?: Rate;
  tls: "off" | "opportunistic" | "required";
  tlsVerify: boolean;
  /** Overrides the global retry schedule. */
  retryMs?: number[];
  /** Slow start: the concurrency window's first size (default 2). */
  initialWindow?: number;
  /** Reply-driven backoff rules; default `DEFAULT_BACKOFF_RULES`. */
  rules?: readonly BackoffRule[];
  /** Egress pool (a name in `SchedulerOptions.pools`); default `SchedulerOptions.defaultPool`. */
  pool?: string;
}

/** A local address outbound connections are bound to, and the EHLO name they announce. */
export interface EgressSource {
  name: string;
  address: string;
  /** Default: the route's EHLO name, else `SchedulerOptions.hostname`. */
  ehloName?: string;
}

/** One member of an egress pool: connections are spread over members in proportion to `weight`. */
export interface PoolMember {
  source: EgressSource;
  weight: number;
}

/** Message events: exactly the delivery log's event types, so `onEvent` can feed `DeliveryLog.write`. */
export type SchedulerEventType =
  | "delivery"
  | "transient-failure"
  | "bounce"
  | "expiration"
  | "dsn"
  | "delay-warning";

/** One delivery-log line about a message (and one recipient, except for `dsn`). */
export interface SchedulerEvent {
  type: SchedulerEventType;
  id: string;
  destination: string;
  sender?: string;
  recipient?: string;
  mx?: string;
  ip?: string;
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
  /** `bounce` without a remote reply: "route" (DNS permanent) or "rule:<name>". */
  reason?: string;
}

/** Something that happened to a destination: suspended, resumed, or a backoff rule fired. */
export interface DestinationEvent {
  type: "suspension" | "resumption" | "rule";
  destination: string;
  reason: string;
  /** suspension: "admin" | "site" | "rule". */
  kind?: string;
  untilMs?: number;
  rule?: string;
  action?: "suspend" | "throttle" | "bounce";
}

export interface SchedulerOptions {
  spool: SchedulerSpool;
  deliverer: DeliveryEngine;
  route(destination: string): Promise<SchedulerRoute>;
  /** EHLO name (unless the route gives one) and Reporting-MTA of DSNs. */
  hostname: string;
  /** Retry delays; the last one repeats. */
  retryMs: number[];
  maxAgeMs: number;
  /** 0 = no delay warnings. */
  delayWarningMs: number;
  /** Global cap on concurrent connection workers. */
  maxConnections: number;
  /**
   * The policy of a site: a destination's own name, or a rollup's name (see `SchedulerRoute.site`).
   * `maxConnections` applies per (source x site).
   */
  policyFor(site: string): DestinationPolicy;
  /** Egress pools by name. A message's `pool` attribute, else its site's policy, picks one. */
  pools?: Record<string, readonly PoolMember[]>;
  /** Pool for sites whose policy names none; unset or unknown: no source is bound (the kernel chooses). */
  defaultPool?: string;
  /** Cap on connections bound to one source address (ephemeral ports); default 20,000. */
  maxConnectionsPerSource?: number;
  /**
   * Ready messages one site may hold (default 10,000). Beyond it, due messages stay in the scheduled
   * tier, deferred by about a second per bound's worth of overflow, so a stalled site cannot fill RAM.
   */
  maxReadyPerSite?: number;
  /**
   * Routes may name a site (MX rollup): a destination's due messages wait for its first route lookup
   * before they are queued, so that they join the rollup's queue and limits from the start.
   */
  rollup?: boolean;
  /** Suspension after a whole-site failure: 1st, 2nd, ... in a row; the last repeats. Default 1m, 5m, 15m, 30m. */
  siteBackoffMs?: number[];
  /** Relative jitter on retry delays (default 0.1 = ±10%). */
  jitter?: number;
  random?: () => number;
  /** DSNs return the whole original up to this size, else its header (bounce/'s default otherwise). */
  dsnMaxOriginalBytes?: number;
  onEvent?(e: SchedulerEvent): void;
  onDestinationEvent?(e: DestinationEvent): void;
  clock?: Clock;
  log: Logger;
  metrics?: Metrics;
}

export type DestinationState = "active" | "idle" | "suspended" | "backoff" | "throttled";

export interface DestinationSummary {
  destination: string;
  /** The site (rollup) whose queue and limits the destination shares, when it is not the destination itself. */
  site?: string;
  messages: number;
  /** Pending recipients. */
  recipients: number;
  bytes: number;
  /** Arrival time of the oldest message, or undefined when none is queued. */
  oldestMs: number | undefined;
  /** Earliest next attempt (now for messages in the ready queue). */
  nextAttemptMs: number | undefined;
  ready: number;
  activeConnections: number;
  connectionLimit: number;
  window: number;
  state: DestinationState;
  /** Why it is suspended, in backoff or throttled, and until when (undefined = until resumed). */
  reason?: string;
  untilMs?: number;
  lastError?: string;
}
