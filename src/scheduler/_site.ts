/**
 * A site: one queue key (a recipient domain, an MX rollup, or a static route's next hop) and
 * everything that governs how fast its mail may go.
 *
 * Owns: the site's policy as applied (limits, rates, rules; `applyPolicy` for a reload), its
 * concurrency window (slow start), rate limiters, suspension (operator, whole-site failure, rule),
 * throttle and bounce rule firings, failures in a row, its last error, its ready queues (one per
 * egress pool, served round-robin) and its worker counts (in all and per source address).
 * Does not own: time (the env's clock), timers (the env's `wakeAt`), which source a connection
 * uses (_egress.ts), starting workers (_workers.ts). No sockets: tests drive it with a fake env.
 * Invariants: an operator's suspension is never shortened by an automatic one; `limit` is at least 1;
 * a site's connections (`connections`: workers and connections still closing) never exceed `limit`; a whole-site failure in flight when the site is already
 * backing off does not lengthen the backoff.
 * Shared limits (a cluster, `SiteEnv.shared`): the rates come from the shared limiter (one bucket
 * for every node, keyed by the site's name), `limit` is also capped by the connection slots this node
 * holds of the cluster-wide limit (it may then be 0: no slot yet), and a rule that fires here is
 * passed on so that every node applies it (`applyRemoteRule` on the others, never passed on again).
 * Without `shared` none of this runs: every limit is the node's own.
 */
import type { Counter, Logger } from "../observe/index.ts";
import {
  type BackoffRule,
  DEFAULT_BACKOFF_RULES,
  type DestinationPolicy,
  matchRule,
} from "../route/index.ts";
import { replyLine, type SmtpReply } from "../smtp/index.ts";
import { SlotFifo } from "./_fifo.ts";
import type { Rate } from "../lib/index.ts";
import { RateLimiter } from "./_rate.ts";
import type { DestinationEvent, DestinationState, RateGate, SharedLimits, SharedSlots } from "./_types.ts";
import { ConcurrencyWindow } from "./_window.ts";

export type SuspendKind = "admin" | "site" | "rule";

/** Attempts to a site this close together count as steady traffic (connections are kept for it). */
const STEADY_MS = 2000;

/** What a site needs of the scheduler around it. */
export interface SiteEnv {
  now(): number;
  random(): number;
  /** Calls the scheduler back at `atMs` for this site (end of a suspension, throttle, rate wait). */
  wakeAt(site: Site, atMs: number): void;
  /** A bounce rule fired: everything scheduled for the site should come due now (and fail). */
  flushSite(site: Site): void;
  onEvent(e: DestinationEvent): void;
  log: Logger;
  counters?: { suspensions: Counter; rules: Counter };
  /** Limits shared with other nodes; absent: this node's own. */
  shared?: SharedLimits;
}

/** The ready queue of one egress pool within a site. */
export class PoolQueue {
  readonly ready = new SlotFifo();
  constructor(readonly pool: number) {}
}

export class Site {
  /** One ready queue per pool that has had mail here; served round-robin. */
  readonly queues: PoolQueue[] = [];
  rr = 0;
  /** Connection workers running. */
  active = 0;
  /** Connections being retired (QUIT sent, not yet closed) after their worker moved on or ended. */
  closing = 0;
  /** Connection workers per source address ("" = no source bound: the kernel's choice). */
  readonly bySource = new Map<string, number>();
  /** Smooth weighted round-robin state per pool index (current weight per member). */
  readonly wrr = new Map<number, number[]>();
  /** Due messages held in the scheduled tier because the ready queues were full. */
  overflowed = 0;
  window: ConcurrencyWindow;
  messageRate: RateGate | undefined;
  connectionRate: RateGate | undefined;
  rules: readonly BackoffRule[];
  /** 0 = not suspended; Infinity = until `resume`. */
  suspendedUntilMs = 0;
  suspendKind: SuspendKind = "admin";
  suspendReason = "";
  throttle: { untilMs: number; maxConnections: number; rate: RateGate | undefined; rule: string } | undefined;
  bounce: { untilMs: number; reply: SmtpReply; rule: string } | undefined;
  failuresInRow = 0;
  lastError: string | undefined;
  /** When a worker last ran here (for retiring idle sites). */
  lastActiveMs: number;
  /** When the last attempt here began, and whether the one before began shortly before it. */
  private lastAttemptMs = Number.NEGATIVE_INFINITY;
  private steady = false;
  /** Shared connection slots by source address ("" = no source bound); only with `env.shared`. */
  private readonly slots = new Map<string, SharedSlots>();

  constructor(
    readonly num: number,
    readonly name: string,
    public policy: DestinationPolicy,
    /** Source addresses its connections are spread over (`maxConnections` applies to each). */
    public sources: number,
    private readonly env: SiteEnv,
  ) {
    this.window = new ConcurrencyWindow(this.maxOwn(), policy.initialWindow ?? 2);
    this.rules = policy.rules ?? DEFAULT_BACKOFF_RULES;
    this.messageRate = this.gate("msg", policy.messageRate);
    this.connectionRate = this.gate("conn", policy.connectionRate);
    this.lastActiveMs = env.now();
  }

  /** A rate of this site: the shared one in a cluster, else this node's own. */
  private gate(what: "msg" | "conn" | "throttle", rate: Rate | undefined): RateGate | undefined {
    if (!rate) return undefined;
    const shared = this.env.shared;
    return shared ? shared.rate(this.name, what, rate, () => this.wake()) : new RateLimiter(rate);
  }

  /** Something shared came free (a slot, rate events): try to start workers now. */
  private wake(): void {
    this.env.wakeAt(this, this.env.now());
  }

  private maxOwn(): number {
    return Math.max(1, this.policy.maxConnections) * Math.max(1, this.sources);
  }

  /**
   * A new policy for a live site (reload): limits, rates, rules, TLS and pool take effect at once.
   * A rate limiter is kept when its rate did not change (its bucket is not refilled by a reload).
   */
  applyPolicy(policy: DestinationPolicy, sources: number): void {
    const sameRate = (a?: { count: number; perMs: number }, b?: { count: number; perMs: number }) =>
      a?.count === b?.count && a?.perMs === b?.perMs;
    if (!sameRate(policy.messageRate, this.policy.messageRate))
      this.messageRate = this.gate("msg", policy.messageRate);
    if (!sameRate(policy.connectionRate, this.policy.connectionRate))
      this.connectionRate = this.gate("conn", policy.connectionRate);
    this.policy = policy;
    this.sources = sources;
    this.rules = policy.rules ?? DEFAULT_BACKOFF_RULES;
    this.window.setLimit(this.maxOwn());
  }

  get readyLength(): number {
    let n = 0;
    for (const q of this.queues) n += q.ready.length;
    return n;
  }

  queueOf(pool: number): PoolQueue {
    for (const q of this.queues) if (q.pool === pool) return q;
    const q = new PoolQueue(pool);
    this.queues.push(q);
    return q;
  }

  /** Connections open or opening: workers running and connections still being retired. */
  get connections(): number {
    return this.active + this.closing;
  }

  /**
   * How many connections it may have now: policy x sources, window, throttle, the global cap; in a
   * cluster also the slots held of the cluster-wide limit (then possibly 0 until a slot is granted).
   */
  limit(nowMs: number, globalCap: number): number {
    let limit = Math.min(this.maxOwn(), this.window.size, globalCap);
    if (this.throttled(nowMs)) limit = Math.min(limit, this.throttle!.maxConnections);
    limit = Math.max(1, limit);
    if (!this.env.shared) return limit;
    const wanted = Math.min(limit, this.connections + this.readyLength);
    const clusterLimit = this.clusterLimit(nowMs);
    if (this.slots.size === 0 || this.slots.has(""))
      return Math.min(limit, this.sharedSlots("").held(wanted, clusterLimit));
    // Sources bound: slots per source x site (each one also counts against the site's limit).
    let held = 0;
    for (const [address, s] of this.slots) held += s.held(this.wantedOn(address, wanted), clusterLimit);
    return Math.min(limit, held);
  }

  private throttled(nowMs: number): boolean {
    return this.throttle !== undefined && this.throttle.untilMs > nowMs;
  }

  /** The limit every node shares: the policy's, or a throttle rule's while it is in force. */
  private clusterLimit(nowMs: number): number {
    return this.throttled(nowMs) ? Math.min(this.maxOwn(), this.throttle!.maxConnections) : this.maxOwn();
  }

  /** Connections wanted on one source: its share of what the site wants, at least what runs there. */
  private wantedOn(address: string, wanted: number): number {
    const per = Math.ceil(wanted / Math.max(1, this.slots.size));
    return Math.min(Math.max(1, this.policy.maxConnections), Math.max(per, this.bySource.get(address) ?? 0));
  }

  /**
   * How many connections source `address` may have to this site (egress): `cap` (the policy's
   * max_connections per source), and in a cluster the slots held of source x site.
   */
  sourceCap(address: string, cap: number): number {
    if (!this.env.shared) return cap;
    const none = this.slots.get("");
    if (none) {
      // The site's first connection bound to a source: its slots become per source x site.
      none.close();
      this.slots.delete("");
    }
    const now = this.env.now();
    const s = this.sharedSlots(address, cap);
    const wanted = Math.max(
      (this.bySource.get(address) ?? 0) + 1,
      this.wantedOn(address, this.connections + this.readyLength),
    );
    return Math.min(cap, s.held(Math.min(cap, wanted), this.clusterLimit(now)));
  }

  private sharedSlots(address: string, perSource = 0): SharedSlots {
    let s = this.slots.get(address);
    if (!s) {
      const source = address ? { address, limit: Math.max(1, perSource) } : undefined;
      s = this.env.shared!.slots(
        this.name,
        source,
        () => this.wake(),
        () => (address ? (this.bySource.get(address) ?? 0) : this.connections),
      );
      this.slots.set(address, s);
    }
    return s;
  }

  /** The site is forgotten (idle): shared slots go back. */
  close(): void {
    for (const s of this.slots.values()) s.close();
    this.slots.clear();
  }

  isSuspended(nowMs: number): boolean {
    return this.suspendedUntilMs > nowMs;
  }

  /** Held by a site backoff (its connections failed), not by an operator's suspension: flush lifts it. */
  get backingOff(): boolean {
    return this.suspendedUntilMs > 0 && this.suspendKind === "site";
  }

  /** Whether nothing here is worth keeping: no queue, no worker, no restriction, window as new. */
  isIdle(nowMs: number): boolean {
    return (
      this.active === 0 &&
      this.overflowed === 0 &&
      this.readyLength === 0 &&
      this.suspendedUntilMs <= nowMs &&
      !this.throttle &&
      !this.bounce
    );
  }

  state(nowMs: number): { state: DestinationState; reason?: string; untilMs?: number } {
    if (this.suspendedUntilMs > nowMs) {
      const untilMs = Number.isFinite(this.suspendedUntilMs) ? this.suspendedUntilMs : undefined;
      const state = this.suspendKind === "site" ? "backoff" : "suspended";
      return untilMs === undefined
        ? { state, reason: this.suspendReason }
        : { state, reason: this.suspendReason, untilMs };
    }
    if (this.throttle && this.throttle.untilMs > nowMs)
      return { state: "throttled", reason: `rule ${this.throttle.rule}`, untilMs: this.throttle.untilMs };
    if (this.bounce && this.bounce.untilMs > nowMs)
      return {
        state: "suspended",
        reason: `bouncing (rule ${this.bounce.rule})`,
        untilMs: this.bounce.untilMs,
      };
    return { state: this.active > 0 ? "active" : "idle" };
  }

  /** Suspends until `untilMs` (Infinity: until `lift`); false when an operator's suspension wins. */
  suspend(untilMs: number, kind: SuspendKind, reason: string): boolean {
    const env = this.env;
    if (this.suspendedUntilMs > env.now() && this.suspendKind === "admin" && kind !== "admin") return false;
    this.suspendedUntilMs = untilMs;
    this.suspendKind = kind;
    this.suspendReason = reason;
    env.counters?.suspensions.inc({ kind });
    env.log.warn("destination suspended", {
      destination: this.name,
      kind,
      reason,
      until: Number.isFinite(untilMs) ? new Date(untilMs).toISOString() : "resume",
    });
    const e: DestinationEvent = { type: "suspension", destination: this.name, reason, kind };
    if (Number.isFinite(untilMs)) {
      e.untilMs = untilMs;
      env.wakeAt(this, untilMs);
    }
    env.onEvent(e);
    return true;
  }

  lift(reason: string): void {
    this.suspendedUntilMs = 0;
    // After a dead site, start small again (slow start); an operator's or a rule's pause keeps the window.
    if (this.suspendKind === "site") this.window.reset();
    this.env.log.info("destination resumed", { destination: this.name, reason });
    this.env.onEvent({ type: "resumption", destination: this.name, reason });
  }

  /** An operator's `resume`: lifts any suspension and ends throttle and bounce rules. */
  resume(): void {
    if (this.suspendedUntilMs > 0) this.lift("resumed by operator");
    this.throttle = undefined;
    this.bounce = undefined;
  }

  /** Ends suspensions, throttles and bounce rules whose time has come. */
  expireRestrictions(nowMs: number): void {
    if (this.suspendedUntilMs > 0 && this.suspendedUntilMs <= nowMs) this.lift("suspension ended");
    if (this.throttle && this.throttle.untilMs <= nowMs) this.throttle = undefined;
    if (this.bounce && this.bounce.untilMs <= nowMs) this.bounce = undefined;
    const next = Math.min(this.throttle?.untilMs ?? Infinity, this.bounce?.untilMs ?? Infinity);
    if (Number.isFinite(next)) this.env.wakeAt(this, next);
  }

  /** An attempt begins: a site whose attempts follow each other closely has steady traffic. */
  noteAttempt(nowMs: number): void {
    this.steady = nowMs - this.lastAttemptMs < STEADY_MS;
    this.lastAttemptMs = nowMs;
  }

  /**
   * Whether a connection to this site is worth keeping once its message is sent: more mail is ready,
   * or mail keeps coming. A destination that gets one message now and then is sent QUIT at once
   * rather than held idle (the long tail of destinations would otherwise hold thousands of sockets).
   */
  wantsConnection(): boolean {
    // In a cluster an idle connection holds one of the site's shared slots: a worker beyond the
    // slots held now (one was lost, or a throttle began) QUITs rather than keep one the fleet gave up.
    if (this.env.shared && this.connections > this.limit(this.env.now(), Number.POSITIVE_INFINITY))
      return false;
    return this.readyLength > 0 || this.steady || this.active > 1;
  }

  /** A delivery got through: the window opens, failures in a row are forgotten. */
  onSuccess(): void {
    this.failuresInRow = 0;
    this.window.onSuccess();
  }

  /**
   * No host could be reached (refused, 421 greeting, DNS trouble): back off by the n-th entry of
   * `backoffMs` (jittered), unless already backing off; a matching rule fires too.
   */
  onSiteFailure(r: SmtpReply, backoffMs: readonly number[], jitter: number): void {
    const now = this.env.now();
    this.lastError = replyLine(r);
    // Workers that were in flight when the site failed do not make the backoff longer.
    if (this.suspendedUntilMs > now) return;
    this.window.onConnectionFailure();
    this.failuresInRow++;
    const base = backoffMs[Math.min(this.failuresInRow, backoffMs.length) - 1]!;
    const ms = Math.max(0, Math.round(base * (1 + jitter * (2 * this.env.random() - 1))));
    this.suspend(now + ms, "site", `site failure: ${this.lastError}`);
    const rule = matchRule(this.rules, r);
    if (rule) this.fireRule(rule, r);
  }

  /** Replies that were not a delivery: remembered, and the first one matching a rule fires it. */
  onReplies(replies: readonly SmtpReply[]): void {
    let fired = false;
    for (const r of replies) {
      this.lastError = replyLine(r);
      if (fired) continue;
      const rule = matchRule(this.rules, r);
      if (rule) {
        this.fireRule(rule, r);
        fired = true;
      }
    }
  }

  /**
   * A rule fired on reply `r`: here (and passed on to every node in a cluster), or on another node
   * (`from`: its name, `forMs`: what is left of the rule's time; applied here, not passed on again).
   */
  fireRule(rule: BackoffRule, r: SmtpReply, from?: { node: string; forMs: number }): void {
    const env = this.env;
    const forMs = from ? from.forMs : rule.forMs;
    const until = env.now() + forMs;
    const text = replyLine(r);
    env.counters?.rules.inc({ rule: rule.name, action: rule.action });
    env.log.warn("backoff rule fired", {
      destination: this.name,
      rule: rule.name,
      action: rule.action,
      forMs,
      reply: text,
      ...(from ? { node: from.node } : {}),
    });
    if (!from) env.shared?.ruleFired(this.name, rule, r, forMs);
    env.onEvent({
      type: "rule",
      destination: this.name,
      rule: rule.name,
      action: rule.action,
      reason: text,
      untilMs: until,
    });
    switch (rule.action) {
      case "suspend":
        this.suspend(Math.max(until, this.suspendedUntilMs), "rule", `rule ${rule.name}: ${text}`);
        break;
      case "throttle": {
        // Keep the current bucket when the same rule fires again, so a storm of replies does not refill it.
        const keep = this.throttle && this.throttle.rule === rule.name ? this.throttle.rate : undefined;
        this.throttle = {
          untilMs: until,
          maxConnections: Math.max(1, rule.maxConnections ?? 1),
          rate: keep ?? this.gate("throttle", rule.messageRate),
          rule: rule.name,
        };
        env.wakeAt(this, until);
        break;
      }
      case "bounce":
        this.bounce = {
          untilMs: until,
          reply: { ...r, code: r.code >= 500 ? r.code : 550 },
          rule: rule.name,
        };
        env.wakeAt(this, until);
        env.flushSite(this);
        break;
    }
  }

  /** The bounce rule's reply while it is in force. */
  bouncing(nowMs: number): SmtpReply | undefined {
    return this.bounce && this.bounce.untilMs > nowMs ? this.bounce.reply : undefined;
  }

  /** Ms until one more message may go (message rate and throttle); 0 = now. Takes nothing. */
  messageWait(nowMs: number): number {
    let w = this.messageRate?.waitMs(nowMs) ?? 0;
    if (this.throttle?.rate && this.throttle.untilMs > nowMs)
      w = Math.max(w, this.throttle.rate.waitMs(nowMs));
    return w;
  }

  /** Takes a message token when one is free (0), else returns the wait. */
  takeMessageToken(nowMs: number): number {
    const w = this.messageWait(nowMs);
    if (w > 0) return w;
    this.messageRate?.take(nowMs);
    if (this.throttle?.rate && this.throttle.untilMs > nowMs) this.throttle.rate.take(nowMs);
    return 0;
  }

  /** Takes a connection token when one is free (0), else returns the wait. */
  takeConnection(nowMs: number): number {
    return this.connectionRate?.take(nowMs) ?? 0;
  }

  connectionWait(nowMs: number): number {
    return this.connectionRate?.waitMs(nowMs) ?? 0;
  }
}
