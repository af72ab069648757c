/**
 * The scheduler: from live spool slots to delivery attempts, and from attempt results to outcomes.
 *
 * Owns: the two queue tiers (KumoMTA): one scheduled queue (a heap of (next attempt, slot)) and
 * ready queues per egress path (pool x site: FIFOs of slots, arrival order); per-site state
 * (connection workers per source, slow-start window, rate limiters, suspension, throttle and bounce
 * rules); the choice of source address per connection (smooth weighted round-robin over the pool);
 * retries with jitter, expiry, DSNs, delay warnings, the delivery-log events and `mta_scheduler_*`
 * metrics.
 * Does not own: bytes on disk (spool/), SMTP (deliverer/), DSN text (bounce/), DNS and MX rollup
 * matching (the app's `route`, which may name a `site`).
 *
 * Sites. The spool's destination is the recipient domain; the queue key is its *site*: the domain
 * itself, or the rollup its route names (every domain whose MX is `*.google.com` shares one site,
 * hence one set of limits and queues). The scheduler learns a domain's site from its route and keeps
 * it in `siteOf`; with `rollup` on, a domain's first due messages wait for that lookup (ROUTING).
 * A site's `maxConnections` applies per source address; its window, rates and suspension are shared.
 *
 * How it runs. A message is in exactly one place: scheduled (heap), ready (its destination's FIFO),
 * active (a worker is attempting it), or nowhere (done, or held in RAM after a spool error). A
 * destination starts connection workers while it has ready messages, is not suspended, and is under
 * min(policy limit, window, throttle, global cap) and its connection rate; each worker takes ready
 * messages one after another (up to maxMessagesPerConnection, under the message rate) and calls
 * `deliver`, which reuses the pooled connection. A second heap holds destination wake-ups (end of a
 * suspension, throttle, or rate wait); one timer covers both heaps. Nothing scans the queue, except
 * the administrative calls `flush` (by destination or id) and `summary`.
 *
 * Invariants:
 * - the outcome of an attempt is recorded in the spool before it is acted on (log line, DSN, retry);
 * - a whole-site failure (no host reachable, 421 greeting, DNS transient) never burns an attempt:
 *   the message goes back to the front of the ready queue and the destination backs off;
 * - a site never has more workers than its limit, nor more than `maxConnections` on one source
 *   address, nor all sites more than `maxConnections`, nor one source more than `maxConnectionsPerSource`;
 * - a site's ready queues hold at most `maxReadyPerSite` entries (plus messages its workers put back);
 * - a null sender never gets a DSN; NOTIFY is honoured (bounce/'s `wantsDsn`).
 * Known gap: the delay-warning flag lives in RAM, so a restart may send one more delay warning.
 */
import {
  buildDsn,
  diagnosticFromReply,
  isNullSender,
  type DsnRecipient,
  statusFromReply,
  wantsDsn,
} from "../bounce/index.ts";
import type { AttemptResult, AttemptTarget, OutboundMessage, SmtpReply } from "../deliverer/index.ts";
import { type Clock, errorMessage, systemClock } from "../lib/index.ts";
import type { Counter } from "../observe/index.ts";
import { SlotFifo } from "./_fifo.ts";
import { TimerHeap } from "./_heap.ts";
import { RateLimiter } from "./_rate.ts";
import { type BackoffRule, DEFAULT_BACKOFF_RULES, matchRule, replyLine } from "./_rules.ts";
import type {
  EgressSource,
  PoolMember,
  DestinationEvent,
  DestinationPolicy,
  DestinationState,
  DestinationSummary,
  SchedulerEvent,
  SchedulerOptions,
  SchedulerStoredMessage,
} from "./_types.ts";
import { ConcurrencyWindow } from "./_window.ts";

const DEFAULT_SITE_BACKOFF_MS = [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000];
/** A spool error while recording an outcome: try the message again after this long (nothing was recorded). */
const SPOOL_ERROR_RETRY_MS = 60_000;
const MAX_TIMER_MS = 2 ** 31 - 1;

const NONE = 0;
const SCHEDULED = 1;
const READY = 2;
const ACTIVE = 3;
/** Waiting for the first route lookup of its domain (rollup on). */
const ROUTING = 4;
const DEFAULT_MAX_PER_SOURCE = 20_000;
const DEFAULT_MAX_READY_PER_SITE = 10_000;
/** An over-full site's due message is deferred by this much per bound's worth of overflow. */
const OVERFLOW_DEFER_MS = 1000;

type SuspendKind = "admin" | "site" | "rule";

/** The ready queue of one egress pool within a site. */
class PoolQueue {
  readonly ready = new SlotFifo();
  constructor(readonly pool: number) {}
}

/** A site: the queue key after MX rollup (a destination domain, or a rollup shared by many). */
class Destination {
  /** One ready queue per pool that has had mail here; served round-robin. */
  readonly queues: PoolQueue[] = [];
  rr = 0;
  active = 0;
  /** Connection workers per source address ("" = no source bound: the kernel's choice). */
  readonly bySource = new Map<string, number>();
  /** Smooth weighted round-robin state per pool index (current weight per member). */
  readonly wrr = new Map<number, number[]>();
  /** Due messages held in the scheduled tier because the ready queues were full. */
  overflowed = 0;
  readonly window: ConcurrencyWindow;
  messageRate: RateLimiter | undefined;
  connectionRate: RateLimiter | undefined;
  rules: readonly BackoffRule[];
  /** 0 = not suspended; Infinity = until `resume`. */
  suspendedUntilMs = 0;
  suspendKind: SuspendKind = "admin";
  suspendReason = "";
  throttle:
    | { untilMs: number; maxConnections: number; rate: RateLimiter | undefined; rule: string }
    | undefined;
  bounce: { untilMs: number; reply: SmtpReply; rule: string } | undefined;
  siteFailuresInRow = 0;
  lastError: string | undefined;

  constructor(
    readonly num: number,
    readonly name: string,
    public policy: DestinationPolicy,
    sources: number,
  ) {
    this.window = new ConcurrencyWindow(
      Math.max(1, policy.maxConnections) * Math.max(1, sources),
      policy.initialWindow ?? 2,
    );
    this.rules = policy.rules ?? DEFAULT_BACKOFF_RULES;
    this.messageRate = policy.messageRate ? new RateLimiter(policy.messageRate) : undefined;
    this.connectionRate = policy.connectionRate ? new RateLimiter(policy.connectionRate) : undefined;
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
}

/** Per-slot bookkeeping in typed arrays, grown by doubling. */
class SlotTable {
  where = new Uint8Array(1024);
  /** The destination number whose ready queue holds the slot (valid while where = READY). */
  readyDest = new Int32Array(1024);
  /** The pool index + 1 of the ready queue holding the slot (valid while where = READY). */
  readyPool = new Uint16Array(1024);
  /** The message's pool index + 1 (0 = not known yet: its site's pool). */
  pool = new Uint16Array(1024);
  /** Deferred because its site's ready queues were full (readyDest names the site). */
  overflow = new Uint8Array(1024);
  /** A delay warning was sent for the message in this slot. */
  warned = new Uint8Array(1024);

  ensure(slot: number): void {
    if (slot < this.where.length) return;
    let n = this.where.length;
    while (n <= slot) n *= 2;
    const w = new Uint8Array(n);
    w.set(this.where);
    this.where = w;
    const r = new Int32Array(n);
    r.set(this.readyDest);
    this.readyDest = r;
    const d = new Uint8Array(n);
    d.set(this.warned);
    this.warned = d;
    const rp = new Uint16Array(n);
    rp.set(this.readyPool);
    this.readyPool = rp;
    const p = new Uint16Array(n);
    p.set(this.pool);
    this.pool = p;
    const o = new Uint8Array(n);
    o.set(this.overflow);
    this.overflow = o;
  }
}

type AttemptEnd = "done" | "site-failure" | "requeued";

/** A connection worker: the site's pool queue it serves and the source it is bound to (null: none). */
interface WorkerCtx {
  q: PoolQueue;
  source: EgressSource | null;
}

function reply(code: number, enhanced: string, text: string): SmtpReply {
  return { code, enhanced, lines: [text] };
}

/** Parses a stored `lastReply` ("450 4.2.0 text") back into a reply. */
function parseStoredReply(text: string | undefined): SmtpReply | undefined {
  if (!text) return undefined;
  const m = /^(\d{3})(?:\s+([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)$/s.exec(text);
  if (!m) return undefined;
  return m[2]
    ? { code: Number(m[1]), enhanced: m[2], lines: [m[3] ?? ""] }
    : { code: Number(m[1]), lines: [m[3] ?? ""] };
}

function domainOf(address: string): string {
  const at = address.lastIndexOf("@");
  return (at >= 0 ? address.slice(at + 1) : address).toLowerCase();
}

function hasNonAscii(text: string): boolean {
  return /[^\x00-\x7f]/.test(text);
}

function headerHasEightBit(body: Uint8Array): boolean {
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b > 0x7f) return true;
    if (b === 10 && (body[i + 1] === 10 || (body[i + 1] === 13 && body[i + 2] === 10))) return false;
  }
  return false;
}

function eightBit(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! > 0x7f) return true;
  return false;
}

export class Scheduler {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly scheduled = new TimerHeap();
  private readonly wakeups = new TimerHeap();
  private readonly slots = new SlotTable();
  private readonly destinations = new Map<string, Destination>();
  private readonly byNum: Destination[] = [];
  /** Domain -> site, learned from routes (only where it was ever asked for or differs). */
  private readonly siteOf = new Map<string, string>();
  /** Domains waiting for their first route lookup (rollup on), with their due slots. */
  private readonly staged = new Map<string, number[]>();
  /** Pool 0 is "no source" (the kernel's choice); then the configured pools in order. */
  private readonly poolList: { name: string; members: readonly PoolMember[] }[] = [{ name: "", members: [] }];
  private readonly poolIndex = new Map<string, number>();
  /** Connection workers per source address, all sites together. */
  private readonly sourceActive = new Map<string, number>();
  private readonly maxPerSource: number;
  private readonly maxReady: number;
  /** Destinations with ready messages held back only by the global connection cap, oldest first. */
  private readonly waitingGlobal = new Set<Destination>();
  private activeWorkers = 0;
  private inFlight = 0;
  /** Spool writes and DSN appends not tied to a worker. */
  private pendingOps = 0;
  private readonly workers = new Set<Promise<void>>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAtMs = Number.POSITIVE_INFINITY;
  private started = false;
  private stopping = false;
  private idleWaiters: (() => void)[] = [];
  private readonly siteBackoffMs: number[];
  private readonly jitter: number;
  private readonly m:
    | {
        attempts: Counter;
        recipients: Counter;
        dsns: Counter;
        rules: Counter;
        suspensions: Counter;
        expired: Counter;
      }
    | undefined;

  constructor(private readonly opts: SchedulerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.siteBackoffMs = opts.siteBackoffMs?.length ? opts.siteBackoffMs : DEFAULT_SITE_BACKOFF_MS;
    this.jitter = opts.jitter ?? 0.1;
    this.maxPerSource = opts.maxConnectionsPerSource ?? DEFAULT_MAX_PER_SOURCE;
    this.maxReady = Math.max(1, opts.maxReadyPerSite ?? DEFAULT_MAX_READY_PER_SITE);
    if (opts.retryMs.length === 0) throw new RangeError("retryMs needs at least one delay");
    for (const [name, members] of Object.entries(opts.pools ?? {})) {
      for (const m of members)
        if (!(m.weight > 0)) throw new RangeError(`pool ${name}: weight of ${m.source.name} must be > 0`);
      if (this.poolList.length >= 0xfffe) throw new RangeError("too many pools");
      this.poolIndex.set(name, this.poolList.length);
      this.poolList.push({ name, members });
    }
    const mt = opts.metrics;
    if (mt) {
      this.m = {
        attempts: mt.counter("mta_scheduler_attempts_total", "Delivery attempts, by result"),
        recipients: mt.counter("mta_scheduler_recipients_total", "Recipient results, by result"),
        dsns: mt.counter("mta_scheduler_dsns_total", "DSNs queued, by action"),
        rules: mt.counter(
          "mta_scheduler_rule_firings_total",
          "Reply-driven backoff rules fired, by rule and action",
        ),
        suspensions: mt.counter("mta_scheduler_suspensions_total", "Destination suspensions, by kind"),
        expired: mt.counter("mta_scheduler_expired_messages_total", "Messages expired after max age"),
      };
      mt.gauge("mta_scheduler_queued_messages", "Messages in the scheduler, by tier", (set) => {
        let ready = 0;
        for (const d of this.byNum) ready += d.readyLength;
        set(this.scheduled.size, { tier: "scheduled" });
        set(ready, { tier: "ready" });
        set(this.inFlight, { tier: "active" });
      });
      mt.gauge("mta_scheduler_attempts_in_flight", "Delivery attempts in flight", (set) =>
        set(this.inFlight),
      );
      mt.gauge("mta_scheduler_connections_active", "Connection workers running", (set) =>
        set(this.activeWorkers),
      );
      mt.gauge("mta_scheduler_source_connections_active", "Connection workers by source address", (set) => {
        for (const [source, n] of this.sourceActive) set(n, { source });
      });
      mt.gauge(
        "mta_scheduler_overflow_messages",
        "Due messages held in the scheduled tier because their site's ready queues were full",
        (set) => {
          let n = 0;
          for (const d of this.byNum) n += d.overflowed;
          set(n);
        },
      );
      mt.gauge("mta_scheduler_destinations_suspended", "Destinations suspended or backing off", (set) => {
        const now = this.clock.now();
        let n = 0;
        for (const d of this.byNum) if (d.suspendedUntilMs > now) n++;
        set(n);
      });
    }
  }

  // ------------------------------------------------------------------ public API

  /** Loads every live spool slot into the queues (due now into ready queues, in arrival order). */
  start(): void {
    if (this.started) return;
    this.started = true;
    const now = this.clock.now();
    const due: number[] = [];
    const sp = this.opts.spool;
    sp.forEachLive((slot) => {
      if (sp.pendingRecipientsOf(slot) === 0) return;
      if (sp.nextAttemptOf(slot) > now) this.schedule(slot, sp.nextAttemptOf(slot));
      else due.push(slot);
    });
    due.sort((a, b) => sp.arrivalOf(a) - sp.arrivalOf(b));
    const touched = new Set<Destination>();
    for (const slot of due) this.readyInto(touched, slot);
    for (const d of touched) this.tryStart(d);
    this.armTimer();
    this.checkIdle();
  }

  /**
   * Queues a newly appended message (due now or at its next attempt time). `hint.pool` is the
   * message's `pool` attribute when the caller knows it (else it is learned at the first attempt).
   */
  enqueue(slot: number, hint?: { pool?: string }): void {
    if (this.stopping) return;
    const sp = this.opts.spool;
    if (!sp.isLive(slot)) return;
    this.slots.ensure(slot);
    if (this.slots.where[slot] === ACTIVE) return; // the worker's end re-queues a reused slot
    this.slots.warned[slot] = 0;
    this.slots.pool[slot] = hint?.pool ? (this.poolIndex.get(hint.pool) ?? -1) + 1 : 0;
    if (!this.started) return; // start() will load it from the spool
    const at = sp.nextAttemptOf(slot);
    if (at > this.clock.now()) {
      this.schedule(slot, at);
      this.armTimer();
    } else {
      const d = this.makeReady(slot);
      if (d) this.tryStart(d);
    }
  }

  /**
   * Processes everything due at `clock.now()`: scheduled messages become ready, suspensions and
   * throttles end, rate waits are over. The internal timer calls it; tests with a ManualClock call
   * it after advancing the clock.
   */
  tick(): void {
    if (this.stopping) return;
    const now = this.clock.now();
    const touched = new Set<Destination>();
    for (let slot = this.scheduled.popDue(now); slot !== undefined; slot = this.scheduled.popDue(now)) {
      this.slots.where[slot] = NONE;
      this.clearOverflow(slot);
      if (this.opts.spool.isLive(slot)) this.readyInto(touched, slot);
    }
    for (let n = this.wakeups.popDue(now); n !== undefined; n = this.wakeups.popDue(now)) {
      const d = this.byNum[n]!;
      this.expireRestrictions(d, now);
      touched.add(d);
    }
    for (const d of touched) this.tryStart(d);
    this.armTimer();
    this.checkIdle();
  }

  /**
   * Makes scheduled messages due now: all of them, one destination's, or one message (by id).
   * Lifts a destination's site backoff (not an admin suspension). Returns how many became due.
   */
  flush(target: { destination?: string; id?: string } = {}): number {
    if (this.stopping) return 0;
    const sp = this.opts.spool;
    let picked: number[] = [];
    if (target.id !== undefined) {
      const slot = sp.slotOf(target.id);
      if (slot !== undefined && this.scheduled.has(slot)) picked = [slot];
    } else {
      const all: { slot: number; at: number }[] = [];
      this.scheduled.forEach((slot, at) => {
        const dest = sp.destinationOf(slot);
        if (
          target.destination === undefined ||
          dest === target.destination ||
          this.siteOf.get(dest) === target.destination
        )
          all.push({ slot, at });
      });
      all.sort((a, b) => a.at - b.at);
      picked = all.map((e) => e.slot);
    }
    const touched = new Set<Destination>();
    for (const slot of picked) {
      this.scheduled.remove(slot);
      this.slots.where[slot] = NONE;
      this.clearOverflow(slot);
      this.readyInto(touched, slot);
    }
    if (target.destination !== undefined) {
      const d = this.destinations.get(this.siteName(target.destination));
      if (d) touched.add(d);
    }
    for (const d of touched) {
      if (d.suspendedUntilMs > 0 && d.suspendKind === "site") this.lift(d, "flushed");
      this.tryStart(d);
    }
    this.armTimer();
    this.checkIdle();
    return picked.length;
  }

  /** No new attempts to `destination` (a domain: its site; or a site) for `forMs` (undefined = until `resume`). */
  suspend(destination: string, forMs?: number, reason = "suspended by operator"): void {
    const d = this.destination(this.siteName(destination));
    const until = forMs === undefined ? Number.POSITIVE_INFINITY : this.clock.now() + forMs;
    this.suspendUntil(d, until, "admin", reason);
  }

  resume(destination: string): void {
    const d = this.destinations.get(this.siteName(destination));
    if (!d) return;
    if (d.suspendedUntilMs > 0) this.lift(d, "resumed by operator");
    d.throttle = undefined;
    d.bounce = undefined;
    this.tryStart(d);
    this.checkIdle();
  }

  /** Re-reads every known destination's policy (after a configuration reload). */
  refreshPolicies(): void {
    for (const d of this.byNum) {
      const p = this.opts.policyFor(d.name);
      d.policy = p;
      d.window.setLimit(Math.max(1, p.maxConnections) * this.sourcesOf(d));
      d.rules = p.rules ?? DEFAULT_BACKOFF_RULES;
      d.messageRate = p.messageRate ? new RateLimiter(p.messageRate) : undefined;
      d.connectionRate = p.connectionRate ? new RateLimiter(p.connectionRate) : undefined;
      this.tryStart(d);
    }
  }

  /** Per destination with queued mail or a state worth showing. O(queued messages): for the API, not for hot paths. */
  summary(): DestinationSummary[] {
    const sp = this.opts.spool;
    const now = this.clock.now();
    type Acc = {
      messages: number;
      recipients: number;
      bytes: number;
      oldestMs?: number;
      nextMs?: number;
      ready: number;
    };
    const acc = new Map<string, Acc>();
    sp.forEachLive((slot) => {
      const name = sp.destinationOf(slot);
      let a = acc.get(name);
      if (!a) acc.set(name, (a = { messages: 0, recipients: 0, bytes: 0, ready: 0 }));
      a.messages++;
      a.recipients += sp.pendingRecipientsOf(slot);
      a.bytes += sp.sizeOf(slot);
      const arrival = sp.arrivalOf(slot);
      if (a.oldestMs === undefined || arrival < a.oldestMs) a.oldestMs = arrival;
      const where = slot < this.slots.where.length ? this.slots.where[slot] : NONE;
      const next =
        where === SCHEDULED
          ? (this.scheduled.timeOf(slot) ?? now)
          : where === NONE
            ? sp.nextAttemptOf(slot)
            : now;
      if (where === READY || where === ACTIVE || where === ROUTING) a.ready++;
      if (a.nextMs === undefined || next < a.nextMs) a.nextMs = next;
    });
    const names = new Set<string>(acc.keys());
    for (const d of this.byNum)
      if (d.active > 0 || d.suspendedUntilMs > now || d.throttle || d.bounce) names.add(d.name);
    const out: DestinationSummary[] = [];
    for (const name of [...names].sort()) {
      const a = acc.get(name) ?? { messages: 0, recipients: 0, bytes: 0, ready: 0 };
      const d = this.destinations.get(this.siteName(name));
      const s: DestinationSummary = {
        destination: name,
        ...(d && d.name !== name ? { site: d.name } : {}),
        messages: a.messages,
        recipients: a.recipients,
        bytes: a.bytes,
        oldestMs: a.oldestMs,
        nextAttemptMs: a.nextMs,
        ready: a.ready,
        activeConnections: d?.active ?? 0,
        connectionLimit: d ? this.limitOf(d, now) : 0,
        window: d?.window.size ?? 0,
        state: "idle",
      };
      if (d) {
        const st = this.stateOf(d, now);
        s.state = st.state;
        if (st.reason !== undefined) s.reason = st.reason;
        if (st.untilMs !== undefined) s.untilMs = st.untilMs;
        if (d.lastError !== undefined) s.lastError = d.lastError;
      }
      if (s.state === "idle" && (s.activeConnections > 0 || a.ready > 0)) s.state = "active";
      out.push(s);
    }
    return out;
  }

  activeConnections(): number {
    return this.activeWorkers;
  }

  /** Stops starting attempts and waits (at most `graceMs`) for the ones in flight. */
  async stop(graceMs = 30_000): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const all = Promise.all([...this.workers]);
    let t: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([all, new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
    if (t) clearTimeout(t);
    this.checkIdle();
  }

  /**
   * Resolves when nothing is in flight and nothing can start without the clock moving on
   * (scheduled retries, suspensions and rate waits are in the future, or the scheduler stopped).
   */
  idle(): Promise<void> {
    return new Promise((resolve) => {
      this.idleWaiters.push(resolve);
      this.checkIdle();
    });
  }

  // ------------------------------------------------------------------ queues

  private destination(name: string): Destination {
    let d = this.destinations.get(name);
    if (!d) {
      const policy = this.opts.policyFor(name);
      d = new Destination(this.byNum.length, name, policy, this.sourcesOf({ policy }));
      this.destinations.set(name, d);
      this.byNum.push(d);
    }
    return d;
  }

  /** A domain's site as far as known, or the name itself (a site, or a domain not seen yet). */
  private siteName(name: string): string {
    return this.siteOf.get(name) ?? name;
  }

  /** Records a domain's site from its route; kept only when it differs or was asked for before. */
  private learnSite(domain: string, site: string | undefined): void {
    const s = site ?? domain;
    if (s !== domain || this.siteOf.has(domain) || this.opts.rollup) this.siteOf.set(domain, s);
  }

  /** The pool index of a site's policy (or the default pool); 0 = no source. */
  private sitePool(d: { policy: DestinationPolicy }): number {
    const name = d.policy.pool ?? this.opts.defaultPool;
    return name === undefined ? 0 : (this.poolIndex.get(name) ?? 0);
  }

  /** Sources a site's connections are spread over (its `maxConnections` applies to each). */
  private sourcesOf(d: { policy: DestinationPolicy }): number {
    return Math.max(1, this.poolList[this.sitePool(d)]!.members.length);
  }

  /** The pool of the message in `slot` as far as known: its own, else its site's. */
  private poolOfSlot(d: Destination, slot: number): number {
    const p = this.slots.pool[slot]!;
    return p > 0 ? p - 1 : this.sitePool(d);
  }

  /**
   * A source for one more connection from `pool` to site `d`, by smooth weighted round-robin over
   * the members under both caps; null = bind none (the kernel's choice); undefined = all at a cap.
   */
  private pickSource(d: Destination, pool: number): EgressSource | null | undefined {
    const members = this.poolList[pool]!.members;
    const cap = Math.max(1, d.policy.maxConnections);
    if (members.length === 0) return (d.bySource.get("") ?? 0) < cap ? null : undefined;
    let cur = d.wrr.get(pool);
    if (!cur || cur.length !== members.length) d.wrr.set(pool, (cur = new Array(members.length).fill(0)));
    let best = -1;
    let total = 0;
    for (let i = 0; i < members.length; i++) {
      const m = members[i]!;
      const a = m.source.address;
      if ((d.bySource.get(a) ?? 0) >= cap || (this.sourceActive.get(a) ?? 0) >= this.maxPerSource) continue;
      cur[i]! += m.weight;
      total += m.weight;
      if (best < 0 || cur[i]! > cur[best]!) best = i;
    }
    if (best < 0) return undefined;
    cur[best]! -= total;
    return members[best]!.source;
  }

  private schedule(slot: number, atMs: number): void {
    this.slots.ensure(slot);
    this.slots.where[slot] = SCHEDULED;
    this.scheduled.push(slot, atMs);
  }

  private readyInto(touched: Set<Destination>, slot: number): void {
    const d = this.makeReady(slot);
    if (d) touched.add(d);
  }

  /**
   * Puts a due message into its site's ready queue for its pool. Returns the site, or undefined when
   * the message waits elsewhere: for its domain's first route lookup, or (site full) in the
   * scheduled tier.
   */
  private makeReady(slot: number): Destination | undefined {
    const domain = this.opts.spool.destinationOf(slot);
    this.slots.ensure(slot);
    const t = this.slots;
    if (t.where[slot] === SCHEDULED) {
      this.scheduled.remove(slot);
      this.clearOverflow(slot);
    }
    let site = this.siteOf.get(domain);
    if (site === undefined) {
      if (this.opts.rollup) {
        this.stage(domain, slot);
        return undefined;
      }
      site = domain;
    }
    const d = this.destination(site);
    const pool = this.poolOfSlot(d, slot);
    // A stale entry for this slot in the same FIFO serves the new message too.
    if (t.where[slot] === READY && t.readyDest[slot] === d.num && t.readyPool[slot] === pool + 1) return d;
    if (d.readyLength >= this.maxReady) {
      // Full: stay in the scheduled tier, spread over a second per bound's worth of overflow.
      d.overflowed++;
      t.overflow[slot] = 1;
      t.readyDest[slot] = d.num;
      const delay = OVERFLOW_DEFER_MS * (1 + Math.floor(d.overflowed / this.maxReady));
      this.schedule(slot, this.clock.now() + delay + Math.floor(this.random() * OVERFLOW_DEFER_MS));
      this.armTimer();
      return undefined;
    }
    d.queueOf(pool).ready.push(slot);
    t.where[slot] = READY;
    t.readyDest[slot] = d.num;
    t.readyPool[slot] = pool + 1;
    return d;
  }

  private clearOverflow(slot: number): void {
    if (slot >= this.slots.overflow.length || this.slots.overflow[slot] === 0) return;
    this.slots.overflow[slot] = 0;
    const d = this.byNum[this.slots.readyDest[slot]!];
    if (d) d.overflowed--;
  }

  /** Holds a due slot until its domain's first route names its site (rollup on). */
  private stage(domain: string, slot: number): void {
    this.slots.where[slot] = ROUTING;
    const list = this.staged.get(domain);
    if (list) {
      list.push(slot);
      return;
    }
    this.staged.set(domain, [slot]);
    this.pendingOps++;
    const done = (site: string | undefined) => {
      this.pendingOps--;
      if (site !== undefined) this.siteOf.set(domain, site);
      const slots = this.staged.get(domain) ?? [];
      this.staged.delete(domain);
      const touched = new Set<Destination>();
      const sp = this.opts.spool;
      for (const s of slots) {
        if (this.slots.where[s] !== ROUTING) continue;
        this.slots.where[s] = NONE;
        if (this.stopping || !sp.isLive(s)) continue;
        if (site === undefined) {
          // No route now (DNS trouble): queue under the domain itself; its attempt backs off.
          const d = this.destination(domain);
          this.siteOf.delete(domain);
          d.queueOf(this.poolOfSlot(d, s)).ready.push(s);
          this.slots.where[s] = READY;
          this.slots.readyDest[s] = d.num;
          this.slots.readyPool[s] = this.poolOfSlot(d, s) + 1;
          touched.add(d);
        } else this.readyInto(touched, s);
      }
      for (const d of touched) this.tryStart(d);
      this.armTimer();
      this.checkIdle();
    };
    this.opts.route(domain).then(
      (r) => done(r.kind === "hosts" ? (r.site ?? domain) : undefined),
      () => done(undefined),
    );
  }

  /** The next live ready slot of `q`, marked active; stale FIFO entries are dropped. */
  private takeReady(d: Destination, q: PoolQueue): number | undefined {
    const t = this.slots;
    for (let slot = q.ready.shift(); slot !== undefined; slot = q.ready.shift()) {
      if (t.where[slot] !== READY || t.readyDest[slot] !== d.num || t.readyPool[slot] !== q.pool + 1)
        continue;
      if (!this.opts.spool.isLive(slot)) {
        t.where[slot] = NONE;
        continue;
      }
      t.where[slot] = ACTIVE;
      return slot;
    }
    return undefined;
  }

  /** Puts an unattempted message back at the front of its (pool's) ready queue. */
  private putBack(d: Destination, slot: number): void {
    const pool = this.poolOfSlot(d, slot);
    this.slots.where[slot] = READY;
    this.slots.readyDest[slot] = d.num;
    this.slots.readyPool[slot] = pool + 1;
    d.queueOf(pool).ready.unshift(slot);
  }

  private armTimer(): void {
    if (this.stopping) return;
    const a = this.scheduled.peekTime();
    const b = this.wakeups.peekTime();
    const at = a === undefined ? b : b === undefined ? a : Math.min(a, b);
    if (at === undefined) return;
    if (this.timer && this.timerAtMs <= at) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, at - this.clock.now()));
    this.timerAtMs = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAtMs = Number.POSITIVE_INFINITY;
      this.tick();
    }, delay);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private wakeAt(d: Destination, atMs: number): void {
    const cur = this.wakeups.timeOf(d.num);
    if (cur === undefined || atMs < cur) this.wakeups.push(d.num, atMs);
    this.armTimer();
  }

  // ------------------------------------------------------------------ destinations

  private limitOf(d: Destination, now: number): number {
    let limit = Math.min(
      d.policy.maxConnections * this.sourcesOf(d),
      d.window.size,
      this.opts.maxConnections,
    );
    if (d.throttle && d.throttle.untilMs > now) limit = Math.min(limit, d.throttle.maxConnections);
    return Math.max(1, limit);
  }

  private stateOf(
    d: Destination,
    now: number,
  ): { state: DestinationState; reason?: string; untilMs?: number } {
    if (d.suspendedUntilMs > now) {
      const untilMs = Number.isFinite(d.suspendedUntilMs) ? d.suspendedUntilMs : undefined;
      const state = d.suspendKind === "site" ? "backoff" : "suspended";
      return untilMs === undefined
        ? { state, reason: d.suspendReason }
        : { state, reason: d.suspendReason, untilMs };
    }
    if (d.throttle && d.throttle.untilMs > now)
      return { state: "throttled", reason: `rule ${d.throttle.rule}`, untilMs: d.throttle.untilMs };
    if (d.bounce && d.bounce.untilMs > now)
      return { state: "suspended", reason: `bouncing (rule ${d.bounce.rule})`, untilMs: d.bounce.untilMs };
    return { state: d.active > 0 ? "active" : "idle" };
  }

  /** Ends suspensions, throttles and bounce rules whose time has come. */
  private expireRestrictions(d: Destination, now: number): void {
    if (d.suspendedUntilMs > 0 && d.suspendedUntilMs <= now) this.lift(d, "suspension ended");
    if (d.throttle && d.throttle.untilMs <= now) d.throttle = undefined;
    if (d.bounce && d.bounce.untilMs <= now) d.bounce = undefined;
    const next = Math.min(d.throttle?.untilMs ?? Infinity, d.bounce?.untilMs ?? Infinity);
    if (Number.isFinite(next)) this.wakeAt(d, next);
  }

  private suspendUntil(d: Destination, untilMs: number, kind: SuspendKind, reason: string): void {
    // An operator's suspension is never shortened by an automatic one.
    if (d.suspendedUntilMs > this.clock.now() && d.suspendKind === "admin" && kind !== "admin") return;
    d.suspendedUntilMs = untilMs;
    d.suspendKind = kind;
    d.suspendReason = reason;
    this.waitingGlobal.delete(d);
    this.m?.suspensions.inc({ kind });
    this.opts.log.warn("destination suspended", {
      destination: d.name,
      kind,
      reason,
      until: Number.isFinite(untilMs) ? new Date(untilMs).toISOString() : "resume",
    });
    const e: DestinationEvent = { type: "suspension", destination: d.name, reason, kind };
    if (Number.isFinite(untilMs)) {
      e.untilMs = untilMs;
      this.wakeAt(d, untilMs);
    }
    this.emitDestination(e);
  }

  private lift(d: Destination, reason: string): void {
    d.suspendedUntilMs = 0;
    // After a dead site, start small again (slow start); an operator's or a rule's pause keeps the window.
    if (d.suspendKind === "site") d.window.reset();
    this.opts.log.info("destination resumed", { destination: d.name, reason });
    this.emitDestination({ type: "resumption", destination: d.name, reason });
  }

  /**
   * Starts connection workers for `d` while it has ready mail and every limit allows one more. Each
   * worker serves one pool's queue (round-robin over the site's queues) bound to one source.
   */
  private tryStart(d: Destination): void {
    if (this.stopping || d.readyLength === 0) return;
    const now = this.clock.now();
    if (d.suspendedUntilMs > now) return;
    if (d.suspendedUntilMs > 0) this.lift(d, "suspension ended");
    while (d.readyLength > 0 && d.active < this.limitOf(d, now)) {
      if (this.activeWorkers >= this.opts.maxConnections) {
        this.waitingGlobal.add(d);
        return;
      }
      const rateWait = this.messageWait(d, now);
      if (rateWait > 0) {
        this.wakeAt(d, now + rateWait);
        return;
      }
      let ctx: WorkerCtx | undefined;
      const n = d.queues.length;
      for (let k = 0; k < n && !ctx; k++) {
        const q = d.queues[(d.rr + k) % n]!;
        if (q.ready.length === 0) continue;
        const source = this.pickSource(d, q.pool);
        if (source === undefined) continue;
        d.rr = (d.rr + k + 1) % n;
        ctx = { q, source };
      }
      if (!ctx) {
        // Every source is at a cap. The site's own workers retry when they end; with none running,
        // the cap is another site's use of the source: wait for any worker to end.
        if (d.active === 0) this.waitingGlobal.add(d);
        return;
      }
      const slot = this.takeReady(d, ctx.q);
      if (slot === undefined) continue;
      const connWait = d.connectionRate?.take(now) ?? 0;
      if (connWait > 0) {
        this.putBack(d, slot);
        this.wakeAt(d, now + connWait);
        return;
      }
      const p = this.worker(d, ctx, slot);
      this.workers.add(p);
      void p.finally(() => this.workers.delete(p));
    }
  }

  private messageWait(d: Destination, now: number): number {
    let w = d.messageRate?.waitMs(now) ?? 0;
    if (d.throttle?.rate && d.throttle.untilMs > now) w = Math.max(w, d.throttle.rate.waitMs(now));
    return w;
  }

  private takeMessageToken(d: Destination, now: number): number {
    const w = this.messageWait(d, now);
    if (w > 0) return w;
    d.messageRate?.take(now);
    if (d.throttle?.rate && d.throttle.untilMs > now) d.throttle.rate.take(now);
    return 0;
  }

  /** One connection worker: ready messages one after another, up to maxMessagesPerConnection. */
  private async worker(d: Destination, w: WorkerCtx, first: number): Promise<void> {
    this.activeWorkers++;
    d.active++;
    const key = w.source?.address ?? "";
    d.bySource.set(key, (d.bySource.get(key) ?? 0) + 1);
    if (w.source) this.sourceActive.set(key, (this.sourceActive.get(key) ?? 0) + 1);
    let slot: number | undefined = first;
    let sent = 0;
    try {
      while (slot !== undefined) {
        const now = this.clock.now();
        const wait = this.takeMessageToken(d, now);
        if (wait > 0) {
          this.putBack(d, slot);
          this.wakeAt(d, now + wait);
          break;
        }
        const end = await this.attemptSafely(d, w, slot);
        if (end === "requeued")
          this.tryStart(d); // it belongs to another pool's queue
        else sent++;
        if (end === "site-failure" || this.stopping) break;
        const after = this.clock.now();
        if (d.suspendedUntilMs > after || sent >= Math.max(1, d.policy.maxMessagesPerConnection)) break;
        if (d.active > this.limitOf(d, after)) break; // the window shrank or a throttle began
        slot = this.takeReady(d, w.q);
      }
    } finally {
      this.activeWorkers--;
      d.active--;
      const left = (d.bySource.get(key) ?? 1) - 1;
      if (left > 0) d.bySource.set(key, left);
      else d.bySource.delete(key);
      if (w.source) {
        const all = (this.sourceActive.get(key) ?? 1) - 1;
        if (all > 0) this.sourceActive.set(key, all);
        else this.sourceActive.delete(key);
      }
      this.pumpWaiting();
      this.tryStart(d);
      this.checkIdle();
    }
  }

  /** Lets destinations held back by the global cap start, oldest waiter first. */
  private pumpWaiting(): void {
    for (const d of this.waitingGlobal) {
      if (this.activeWorkers >= this.opts.maxConnections) return;
      this.waitingGlobal.delete(d);
      this.tryStart(d);
    }
  }

  // ------------------------------------------------------------------ attempts

  private async attemptSafely(d: Destination, w: WorkerCtx, slot: number): Promise<AttemptEnd> {
    const sp = this.opts.spool;
    const id = sp.idOf(slot);
    this.inFlight++;
    try {
      return await this.attempt(d, w, slot, id);
    } catch (err) {
      // Nothing was recorded (or the record failed): hold the message in RAM and try again later.
      this.opts.log.error("delivery attempt failed inside the MTA; will retry", {
        id,
        destination: d.name,
        error: errorMessage(err),
      });
      if (sp.isLive(slot) && sp.idOf(slot) === id)
        this.schedule(slot, this.clock.now() + SPOOL_ERROR_RETRY_MS);
      else this.slots.where[slot] = NONE;
      this.armTimer();
      return "done";
    } finally {
      this.inFlight--;
      const reused = sp.isLive(slot) && sp.idOf(slot) !== id;
      // ACTIVE under another message id belongs to the worker of the message that reused the slot.
      if (this.slots.where[slot] === ACTIVE && !reused) this.slots.where[slot] = NONE;
      // The slot was freed and reused by a new message while we worked, and its enqueue was ignored.
      if (this.slots.where[slot] === NONE && reused) this.enqueue(slot);
    }
  }

  private async attempt(d: Destination, w: WorkerCtx, slot: number, id: string): Promise<AttemptEnd> {
    const sp = this.opts.spool;
    const now = this.clock.now();
    const domain = sp.destinationOf(slot);
    if (now >= sp.arrivalOf(slot) + this.opts.maxAgeMs) {
      await this.expire(d, slot, id, now);
      return "done";
    }
    if (d.bounce && d.bounce.untilMs > now) {
      await this.failAll(d, slot, id, d.bounce.reply, `rule:${d.bounce.rule}`);
      return "done";
    }
    const route = await this.opts.route(domain);
    if (route.kind === "transient") {
      this.siteFailure(d, slot, reply(451, "4.4.3", `DNS: ${route.reason}`));
      return "site-failure";
    }
    if (route.kind === "permanent") {
      this.m?.attempts.inc({ result: "route-permanent" });
      await this.failAll(d, slot, id, reply(550, route.enhanced, route.reason), "route");
      return "done";
    }
    this.learnSite(domain, route.site);
    const { message, body } = await sp.read(slot);
    const pending = message.recipients.flatMap((r, index) => (r.state === "pending" ? [{ r, index }] : []));
    if (pending.length === 0) {
      this.slots.where[slot] = NONE;
      return "done";
    }
    const a = message.attributes;
    const pool = a.pool ? (this.poolIndex.get(a.pool) ?? this.sitePool(d)) : this.sitePool(d);
    this.slots.pool[slot] = pool + 1;
    if (pool !== w.q.pool) {
      // Its pool was not known when it was queued (e.g. after a restart): over to the right queue.
      this.putBack(d, slot);
      return "requeued";
    }
    const smtputf8 = a.smtputf8 === "1" || a.smtputf8 === "true";
    const out: OutboundMessage = {
      id,
      sender: message.sender,
      recipients: pending.map(({ r, index }) => {
        const rc: OutboundMessage["recipients"][number] = { index, address: r.address };
        if (r.notify) rc.notify = r.notify;
        if (r.orcpt) rc.orcpt = r.orcpt;
        return rc;
      }),
      body,
      // SMTPUTF8 is needed only when the envelope or the header really holds UTF-8 (RFC 6531 §3.2).
      needsSmtputf8:
        smtputf8 &&
        (hasNonAscii(message.sender) ||
          pending.some(({ r }) => hasNonAscii(r.address)) ||
          headerHasEightBit(body)),
      eightBit: (a.body ?? "").toUpperCase() === "8BITMIME",
      binary: (a.body ?? "").toUpperCase() === "BINARYMIME",
    };
    if (a.envid) out.envId = a.envid;
    if (a.ret === "FULL" || a.ret === "HDRS") out.ret = a.ret;
    const p = d.policy;
    const target: AttemptTarget = {
      hosts: route.hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port })),
      // A source's EHLO name goes with its address (it should match the address's PTR).
      ehloName:
        (route.sourceAddress ? undefined : w.source?.ehloName) ?? route.ehloName ?? this.opts.hostname,
      tls: route.tls ?? p.tls,
      tlsVerify: route.tlsVerify ?? p.tlsVerify,
    };
    const source = route.sourceAddress ?? w.source?.address;
    if (source) target.sourceAddress = source;
    if (route.auth) target.auth = route.auth;

    const result = await this.opts.deliverer.deliver(target, out);
    if (result.connectionFailed) {
      const r = result.recipients[0]?.reply ?? reply(421, "4.4.1", "no host could be reached");
      this.siteFailure(d, slot, r);
      return "site-failure";
    }
    d.siteFailuresInRow = 0;
    d.window.onSuccess();
    await this.recordResults(d, slot, id, message, body, result);
    return "done";
  }

  private siteFailure(d: Destination, slot: number, r: SmtpReply): void {
    const now = this.clock.now();
    this.m?.attempts.inc({ result: "site-failure" });
    d.lastError = replyLine(r);
    this.putBack(d, slot);
    // Workers that were in flight when the site failed do not make the backoff longer.
    if (d.suspendedUntilMs > now) return;
    d.window.onConnectionFailure();
    d.siteFailuresInRow++;
    const base = this.siteBackoffMs[Math.min(d.siteFailuresInRow, this.siteBackoffMs.length) - 1]!;
    this.suspendUntil(d, now + this.jittered(base), "site", `site failure: ${d.lastError}`);
    const rule = matchRule(d.rules, r);
    if (rule) this.fireRule(d, rule, r);
  }

  private jittered(ms: number): number {
    return Math.max(0, Math.round(ms * (1 + this.jitter * (2 * this.random() - 1))));
  }

  /** Next attempt after `attempts` attempts: the retry list (last repeated), jittered, never past expiry. */
  private nextAttempt(d: Destination, attempts: number, arrivalMs: number, now: number): number {
    const list = d.policy.retryMs?.length ? d.policy.retryMs : this.opts.retryMs;
    const base = list[Math.min(attempts, list.length) - 1]!;
    return Math.min(now + this.jittered(base), arrivalMs + this.opts.maxAgeMs);
  }

  private async recordResults(
    d: Destination,
    slot: number,
    id: string,
    message: SchedulerStoredMessage,
    body: Uint8Array,
    result: AttemptResult,
  ): Promise<void> {
    const sp = this.opts.spool;
    const now = this.clock.now();
    const attempts = message.attempts + 1;
    const arrivalMs = message.arrivalMs;
    const size = sp.sizeOf(slot);
    const byIndex = new Map(result.recipients.map((r) => [r.index, r]));
    const stillPending = message.recipients.some(
      (r, i) => r.state === "pending" && (byIndex.get(i)?.kind ?? "transient") === "transient",
    );
    const next = stillPending ? this.nextAttempt(d, attempts, arrivalMs, now) : undefined;
    const update = {
      recipients: result.recipients.map((r) => ({
        index: r.index,
        state: (r.kind === "delivered" ? "delivered" : r.kind === "permanent" ? "failed" : "pending") as
          | "delivered"
          | "failed"
          | "pending",
        reply: replyLine(r.reply),
      })),
      attempts,
      ...(next !== undefined ? { nextAttemptMs: next } : {}),
    };
    await sp.recordOutcome(slot, update);

    // Recorded: now act on it.
    const kinds = new Set(result.recipients.map((r) => r.kind));
    this.m?.attempts.inc({ result: kinds.size === 1 ? [...kinds][0]! : "mixed" });
    const dsn: DsnRecipient[] = [];
    let firedRule = false;
    for (const r of result.recipients) {
      const rc = message.recipients[r.index]!;
      this.m?.recipients.inc({ result: r.kind });
      this.emit({
        type: r.kind === "delivered" ? "delivery" : r.kind === "permanent" ? "bounce" : "transient-failure",
        id,
        destination: message.destination,
        sender: message.sender,
        recipient: rc.address,
        ...(result.mx ? { mx: result.mx.name, ip: result.mx.ip } : {}),
        ...(result.tls ? { tls: result.tls } : {}),
        code: r.reply.code,
        ...(r.reply.enhanced ? { enhanced: r.reply.enhanced } : {}),
        text: r.reply.lines.join(" "),
        attempt: attempts,
        queueTimeMs: now - arrivalMs,
        size,
      });
      if (r.kind !== "delivered") {
        d.lastError = replyLine(r.reply);
        if (!firedRule) {
          const rule = matchRule(d.rules, r.reply);
          if (rule) {
            this.fireRule(d, rule, r.reply);
            firedRule = true;
          }
        }
      }
      const action = r.kind === "delivered" ? "delivered" : r.kind === "permanent" ? "failed" : undefined;
      if (action && wantsDsn(rc.notify, action, message.sender)) {
        const entry: DsnRecipient = {
          address: rc.address,
          action,
          status:
            r.kind === "delivered" ? (r.reply.enhanced ?? "2.0.0") : statusFromReply(r.reply, "permanent"),
          diagnostic: diagnosticFromReply(r.reply),
          lastAttemptMs: now,
        };
        if (rc.orcpt) entry.orcpt = rc.orcpt;
        if (result.mx) entry.remoteMta = `dns; ${result.mx.name}`;
        dsn.push(entry);
      }
    }
    if (next !== undefined) {
      if (this.delayWarningDue(slot, arrivalMs, now)) {
        this.slots.warned[slot] = 1;
        for (const r of result.recipients) {
          const rc = message.recipients[r.index]!;
          if (r.kind !== "transient" || !wantsDsn(rc.notify, "delayed", message.sender)) continue;
          const entry: DsnRecipient = {
            address: rc.address,
            action: "delayed",
            status: statusFromReply(r.reply, "transient"),
            diagnostic: diagnosticFromReply(r.reply),
            lastAttemptMs: now,
            willRetryUntilMs: arrivalMs + this.opts.maxAgeMs,
          };
          if (rc.orcpt) entry.orcpt = rc.orcpt;
          dsn.push(entry);
          this.emit({
            type: "delay-warning",
            id,
            destination: message.destination,
            sender: message.sender,
            recipient: rc.address,
          });
        }
      }
      this.schedule(slot, next);
      this.armTimer();
    } else {
      this.slots.where[slot] = NONE;
      this.slots.warned[slot] = 0;
    }
    if (dsn.length > 0) await this.sendDsn(id, message, body, dsn, now);
  }

  private delayWarningDue(slot: number, arrivalMs: number, now: number): boolean {
    const w = this.opts.delayWarningMs;
    return w > 0 && this.slots.warned[slot] === 0 && now - arrivalMs >= w;
  }

  /** Expiry: every pending recipient fails with its last reply; a DSN says "expired". */
  private async expire(d: Destination, slot: number, id: string, now: number): Promise<void> {
    const sp = this.opts.spool;
    const { message, body } = await sp.read(slot);
    const size = sp.sizeOf(slot);
    const pending = message.recipients.flatMap((r, index) => (r.state === "pending" ? [{ r, index }] : []));
    const text = `message expired after ${Math.round((now - message.arrivalMs) / 60_000)} minutes in the queue`;
    await sp.recordOutcome(slot, {
      recipients: pending.map(({ index, r }) => ({
        index,
        state: "failed",
        reply: r.lastReply ?? `421 4.4.7 ${text}`,
      })),
      attempts: message.attempts,
      reason: "expired",
    });
    this.slots.where[slot] = NONE;
    this.slots.warned[slot] = 0;
    this.m?.expired.inc();
    this.m?.attempts.inc({ result: "expired" });
    const dsn: DsnRecipient[] = [];
    for (const { r } of pending) {
      const last = parseStoredReply(r.lastReply) ?? parseStoredReply(d.lastError);
      this.m?.recipients.inc({ result: "expired" });
      this.emit({
        type: "expiration",
        id,
        destination: message.destination,
        sender: message.sender,
        recipient: r.address,
        code: last?.code ?? 421,
        enhanced: "4.4.7",
        text: last ? `${text}; last reply: ${replyLine(last)}` : text,
        attempt: message.attempts,
        queueTimeMs: now - message.arrivalMs,
        size,
      });
      if (!wantsDsn(r.notify, "failed", message.sender)) continue;
      const entry: DsnRecipient = {
        address: r.address,
        action: "failed",
        // RFC 3463 X.4.7: delivery time expired.
        status: "5.4.7",
        diagnostic: last ? diagnosticFromReply(last) : `smtp; ${text}`,
      };
      if (r.orcpt) entry.orcpt = r.orcpt;
      dsn.push(entry);
    }
    if (dsn.length > 0) await this.sendDsn(id, message, body, dsn, now);
  }

  /** Fails every pending recipient with `r` (DNS permanent, a bounce rule). */
  private async failAll(
    d: Destination,
    slot: number,
    id: string,
    r: SmtpReply,
    reason: string,
  ): Promise<void> {
    const sp = this.opts.spool;
    const now = this.clock.now();
    const { message, body } = await sp.read(slot);
    const size = sp.sizeOf(slot);
    const pending = message.recipients.flatMap((rc, index) =>
      rc.state === "pending" ? [{ rc, index }] : [],
    );
    await sp.recordOutcome(slot, {
      recipients: pending.map(({ index }) => ({ index, state: "failed", reply: replyLine(r) })),
      attempts: message.attempts + 1,
      reason,
    });
    this.slots.where[slot] = NONE;
    this.slots.warned[slot] = 0;
    d.lastError = replyLine(r);
    const dsn: DsnRecipient[] = [];
    for (const { rc } of pending) {
      this.m?.recipients.inc({ result: "permanent" });
      this.emit({
        type: "bounce",
        id,
        destination: message.destination,
        sender: message.sender,
        recipient: rc.address,
        code: r.code,
        ...(r.enhanced ? { enhanced: r.enhanced } : {}),
        text: r.lines.join(" "),
        attempt: message.attempts + 1,
        queueTimeMs: now - message.arrivalMs,
        size,
        reason,
      });
      if (!wantsDsn(rc.notify, "failed", message.sender)) continue;
      const entry: DsnRecipient = {
        address: rc.address,
        action: "failed",
        status: statusFromReply(r, "permanent"),
        diagnostic: diagnosticFromReply(r),
        lastAttemptMs: now,
      };
      if (rc.orcpt) entry.orcpt = rc.orcpt;
      dsn.push(entry);
    }
    if (dsn.length > 0) await this.sendDsn(id, message, body, dsn, now);
  }

  /** Builds a DSN, appends it to the spool from <> to the original sender, and queues it. */
  private async sendDsn(
    id: string,
    message: SchedulerStoredMessage,
    original: Uint8Array,
    recipients: DsnRecipient[],
    now: number,
  ): Promise<void> {
    if (isNullSender(message.sender)) return;
    const a = message.attributes;
    const bytes = buildDsn({
      reportingMta: this.opts.hostname,
      originalMessageId: id,
      ...(a.envid ? { envId: a.envid } : {}),
      ...(a.ret === "FULL" || a.ret === "HDRS" ? { ret: a.ret } : {}),
      arrivalMs: message.arrivalMs,
      nowMs: now,
      sender: message.sender,
      recipients,
      original,
      ...(this.opts.dsnMaxOriginalBytes !== undefined
        ? { maxOriginalBytes: this.opts.dsnMaxOriginalBytes }
        : {}),
    });
    const action = recipients.some((r) => r.action === "failed")
      ? "failed"
      : recipients.some((r) => r.action === "delayed")
        ? "delayed"
        : "delivered";
    this.pendingOps++;
    try {
      const stored = await this.opts.spool.append({
        sender: "",
        destination: domainOf(message.sender),
        recipients: [{ address: message.sender }],
        attributes: { dsn: id, body: eightBit(bytes) ? "8BITMIME" : "7BIT" },
        body: bytes,
      });
      this.m?.dsns.inc({ action });
      this.emit({
        type: "dsn",
        id,
        destination: domainOf(message.sender),
        sender: "",
        recipient: message.sender,
        dsnId: stored.id,
        action,
        size: bytes.length,
      });
      this.enqueue(stored.slot);
    } catch (err) {
      // The outcome is already recorded; losing the DSN is the lesser harm than delivering twice.
      this.opts.log.error("could not queue a DSN", { id, sender: message.sender, error: errorMessage(err) });
    } finally {
      this.pendingOps--;
    }
  }

  // ------------------------------------------------------------------ rules

  private fireRule(d: Destination, rule: BackoffRule, r: SmtpReply): void {
    const now = this.clock.now();
    const until = now + rule.forMs;
    const text = replyLine(r);
    this.m?.rules.inc({ rule: rule.name, action: rule.action });
    this.opts.log.warn("backoff rule fired", {
      destination: d.name,
      rule: rule.name,
      action: rule.action,
      forMs: rule.forMs,
      reply: text,
    });
    this.emitDestination({
      type: "rule",
      destination: d.name,
      rule: rule.name,
      action: rule.action,
      reason: text,
      untilMs: until,
    });
    switch (rule.action) {
      case "suspend":
        this.suspendUntil(d, Math.max(until, d.suspendedUntilMs), "rule", `rule ${rule.name}: ${text}`);
        break;
      case "throttle": {
        const rate = rule.messageRate ? new RateLimiter(rule.messageRate) : undefined;
        // Keep the current bucket when the same rule fires again, so a storm of replies does not refill it.
        const keep = d.throttle && d.throttle.rule === rule.name ? d.throttle.rate : undefined;
        d.throttle = {
          untilMs: until,
          maxConnections: Math.max(1, rule.maxConnections ?? 1),
          rate: keep ?? rate,
          rule: rule.name,
        };
        this.wakeAt(d, until);
        break;
      }
      case "bounce":
        d.bounce = { untilMs: until, reply: { ...r, code: r.code >= 500 ? r.code : 550 }, rule: rule.name };
        this.wakeAt(d, until);
        // Everything scheduled for this destination becomes due now, and fails.
        queueMicrotask(() => this.flush({ destination: d.name }));
        break;
    }
  }

  // ------------------------------------------------------------------ misc

  private emit(e: SchedulerEvent): void {
    if (!this.opts.onEvent) return;
    try {
      this.opts.onEvent(e);
    } catch (err) {
      this.opts.log.error("delivery event handler failed", { error: errorMessage(err) });
    }
  }

  private emitDestination(e: DestinationEvent): void {
    if (!this.opts.onDestinationEvent) return;
    try {
      this.opts.onDestinationEvent(e);
    } catch (err) {
      this.opts.log.error("destination event handler failed", { error: errorMessage(err) });
    }
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0) return;
    if (this.activeWorkers > 0 || this.inFlight > 0 || this.pendingOps > 0) return;
    if (!this.stopping) {
      const now = this.clock.now();
      const t = this.scheduled.peekTime();
      if (t !== undefined && t <= now) return;
      const w = this.wakeups.peekTime();
      if (w !== undefined && w <= now) return;
      for (const d of this.byNum) {
        if (d.readyLength === 0 || d.suspendedUntilMs > now) continue;
        if (this.messageWait(d, now) > 0) continue;
        if (d.connectionRate && d.connectionRate.waitMs(now) > 0) continue;
        // Stale entries only? Then the queue is effectively empty.
        let live = false;
        for (const q of d.queues)
          q.ready.forEach((slot) => {
            const t = this.slots;
            if (t.where[slot] === READY && t.readyDest[slot] === d.num && t.readyPool[slot] === q.pool + 1)
              live = true;
          });
        if (live) return;
      }
    }
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
