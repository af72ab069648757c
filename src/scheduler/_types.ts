/**
 * The scheduler's public value types and the shapes of what it is given.
 *
 * Owns: `SchedulerOptions`, `SchedulerSettings` (what a reload may change), `SchedulerRouter`,
 * `DestinationEvent`, `DestinationSummary`, `CommandResult`, and `SchedulerSpool` / `DeliveryEngine`:
 * the parts of the spool and the deliverer the scheduler uses, written structurally so tests and the
 * app can pass the real `Spool` and `Deliverer`.
 * Does not own: routing and policy (route/), outcomes and DSNs (disposition/).
 */
import type { AttemptResult, AttemptTarget, OutboundMessage } from "../deliverer/index.ts";
import type {
  Classifying,
  DisposableMessage,
  DsnInjector,
  MessageEvent,
  RecipientTls,
} from "../disposition/index.ts";
import type { Clock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import type { BackoffRule, DestinationPolicy, RouteDecision, RouteOptions } from "../route/index.ts";
import type { SmtpReply } from "../smtp/index.ts";
import type { Rate } from "../lib/index.ts";

export type RecipientState = "pending" | "delivered" | "failed";

/** What the scheduler needs of the spool (the real `Spool` has all of it). */
export interface SchedulerSpool {
  recordOutcome(
    slot: number,
    u: {
      recipients: { index: number; state: RecipientState; reply?: string; tls?: RecipientTls }[];
      attempts: number;
      nextAttemptMs?: number;
      reason?: string;
    },
  ): Promise<void>;
  read(slot: number): Promise<{ message: DisposableMessage; body: Uint8Array }>;
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

/** What the scheduler needs of the routing step (route/'s `Router` has it). */
export interface SchedulerRouter {
  /** The queue key of a domain when known without I/O; undefined: `route` must be asked first. */
  siteOf(domain: string): string | undefined;
  /** With `tls`, the hosts come planned for this message's TLS (tlspolicy/). */
  route(domain: string, opts?: RouteOptions): Promise<RouteDecision>;
  policyOf(site: string): DestinationPolicy;
  /** Changes whenever the routes change (a reload): queued mail is re-keyed then. */
  readonly version: number;
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

/** Message events: the delivery log's lines about messages (see disposition/). */
export type SchedulerEvent = MessageEvent;

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

/** What a configuration reload may change while the scheduler runs. */
export interface SchedulerSettings {
  /** Retry delays; the last one repeats. */
  retryMs: number[];
  maxAgeMs: number;
  /** 0 = no delay warnings. */
  delayWarningMs: number;
  /** Global cap on concurrent connection workers. */
  maxConnections: number;
  /** Suspension after a whole-site failure: 1st, 2nd, ... in a row; the last repeats. Default 1m, 5m, 15m, 30m. */
  siteBackoffMs?: number[];
  /** Cap on connections bound to one source address (ephemeral ports); default 20,000. */
  maxConnectionsPerSource?: number;
  /**
   * Ready messages one site may hold (default 10,000). Beyond it, due messages stay in the scheduled
   * tier, deferred by about a second per bound's worth of overflow, so a stalled site cannot fill RAM.
   */
  maxReadyPerSite?: number;
  /** DSNs return the whole original up to this size, else its header (bounce/'s default otherwise). */
  dsnMaxOriginalBytes?: number;
}

/** A rate a site asks before an event (a message, a connection): scheduler's RateLimiter, or a shared one. */
export interface RateGate {
  /** Ms until one more event may happen (0 = now); takes nothing. */
  waitMs(nowMs: number): number;
  /** Takes one event when allowed (0), else returns the wait (nothing taken). */
  take(nowMs: number): number;
}

/** A site's connection slots on this node, drawn from a limit shared by several nodes. */
export interface SharedSlots {
  /**
   * Slots this node holds now; asks (in the background) for as many as `wanted` of a cluster-wide
   * `limit`, and gives back what it holds beyond `wanted`. The site is woken when the count grew.
   */
  held(wanted: number, limit: number): number;
  /** Gives every slot back (the site is retired). */
  close(): void;
}

/**
 * Limits and site state shared by several nodes (a cluster through Redis, app/cluster.ts). Absent:
 * every limit is this node's own and nothing here is on the path. A site asks it for its rates and
 * its connection slots, keyed by the site's name so that every node agrees on keys; the scheduler's
 * process-wide caps (delivery.max_connections, per source) stay local.
 */
export interface SharedLimits {
  /** A rate of `site` that every node draws from; `wake` when events may be free after a wait. */
  rate(site: string, what: "msg" | "conn" | "throttle", rate: Rate, wake: () => void): RateGate;
  /**
   * The connection slots of `site` (of source `address` x site, when given), woken by `wake`.
   * `inUse`: the site's connections open or closing there; a slot they need is never given back (it
   * is free for another node only once the connection under it has closed).
   */
  slots(
    site: string,
    source: { address: string; limit: number } | undefined,
    wake: () => void,
    inUse: () => number,
  ): SharedSlots;
  /** A backoff rule fired on this node (not one applied from another node): tell every node. */
  ruleFired(site: string, rule: BackoffRule, reply: SmtpReply, forMs: number): void;
}

export interface SchedulerOptions extends SchedulerSettings {
  spool: SchedulerSpool;
  deliverer: DeliveryEngine;
  router: SchedulerRouter;
  /** How DSNs are queued (the app: through the accept pipeline). Without one, DSNs are logged as lost. */
  dsn?: DsnInjector;
  /** Bounce classes on result events and suppression of permanent bounces (feedback/). */
  classifying?: Classifying;
  /**
   * The MAIL FROM of a message with one pending recipient, when it differs from the stored sender
   * (VERP: feedback/'s return path). DSNs still go to the stored sender.
   */
  returnPath?(id: string, sender: string, recipient: string): string | undefined;
  /** EHLO name (unless the route gives one) and Reporting-MTA of DSNs. */
  hostname: string;
  /** Egress pools by name. A message's `pool` attribute, else its site's policy, picks one. */
  pools?: Record<string, readonly PoolMember[]>;
  /** Pool for sites whose policy names none; unset or unknown: no source is bound (the kernel chooses). */
  defaultPool?: string;
  /** Relative jitter on retry delays (default 0.1 = ±10%). */
  jitter?: number;
  random?: () => number;
  onEvent?(e: SchedulerEvent): void;
  onDestinationEvent?(e: DestinationEvent): void;
  clock?: Clock;
  /** Limits shared with other nodes (cluster:); absent = this node's own limits only. */
  shared?: SharedLimits;
  log: Logger;
  metrics?: Metrics;
}

export type DestinationState = "active" | "idle" | "suspended" | "backoff" | "throttled";

export interface DestinationSummary {
  destination: string;
  /** The site (rollup, route's next hop) whose queue and limits the destination shares, when not itself. */
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
  /** Attempts in flight for this destination's messages. */
  activeConnections: number;
  /** The site's limit and window now (0 when the scheduler has no site for it yet). */
  connectionLimit: number;
  window: number;
  state: DestinationState;
  /** Why it is suspended, in backoff or throttled, and until when (undefined = until resumed). */
  reason?: string;
  untilMs?: number;
  lastError?: string;
}

/** The answer to an operator's bounce or delete once every selected message was handled. */
export interface CommandResult {
  /** Messages bounced or deleted. */
  affected: number;
  /** Recipients those messages had pending. */
  recipients: number;
  dsns: number;
  failed: { id: string; error: string }[];
}
