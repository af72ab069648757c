/**
 * The scheduler's shared state and its queue moves: which tier and queue each message is in.
 *
 * Owns: the sites by name and number (created on first use, retired when idle), the slot table, the
 * timer tier, egress, the live settings, and every move of a message between tiers: `schedule`
 * (scheduled tier), `makeReady` (a site's ready queue, or overflow-deferred, or staged for its
 * domain's first route lookup), `takeReady` / `putBack` (a worker takes and returns), `finish` (the
 * message left), and the re-keying of ready queues when the routes change.
 * Does not own: starting workers (_workers.ts), attempts (_attempt.ts), operator commands
 * (_commands.ts), the public API (_scheduler.ts).
 * Invariants: a message is in exactly one place: scheduled (heap), ready (its site's FIFO, under its
 * current reference), routing (staged), active (a worker or the command lane has it), or nowhere
 * (done, or not known); a site's ready queues hold at most `maxReadyPerSite` entries, plus messages
 * its workers put back.
 */
import { Disposer } from "../disposition/index.ts";
import { type Clock, errorMessage, systemClock } from "../lib/index.ts";
import type { Counter, Logger } from "../observe/index.ts";
import { Egress } from "./_egress.ts";
import { Site, type SiteEnv } from "./_site.ts";
import {
  ACTIVE,
  COMMAND,
  NONE,
  READY,
  ROUTING,
  SCHEDULED,
  type SlotRef,
  SlotTable,
  slotOfRef,
} from "./_slots.ts";
import { TimerTier } from "./_timers.ts";
import type { DestinationEvent, SchedulerOptions, SchedulerSettings } from "./_types.ts";

const DEFAULT_SITE_BACKOFF_MS = [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000];
const DEFAULT_MAX_PER_SOURCE = 20_000;
const DEFAULT_MAX_READY_PER_SITE = 10_000;
/** An over-full site's due message is deferred by this much per bound's worth of overflow. */
const OVERFLOW_DEFER_MS = 1000;
/** A site with nothing queued, running or restricted is forgotten after this long. */
export const SITE_IDLE_RETIRE_MS = 10 * 60_000;

export interface Live {
  retryMs: number[];
  maxAgeMs: number;
  delayWarningMs: number;
  maxConnections: number;
  siteBackoffMs: number[];
  maxReadyPerSite: number;
}

function liveOf(s: SchedulerSettings): Live {
  if (s.retryMs.length === 0) throw new RangeError("retryMs needs at least one delay");
  return {
    retryMs: s.retryMs,
    maxAgeMs: s.maxAgeMs,
    delayWarningMs: s.delayWarningMs,
    maxConnections: s.maxConnections,
    siteBackoffMs: s.siteBackoffMs?.length ? s.siteBackoffMs : DEFAULT_SITE_BACKOFF_MS,
    maxReadyPerSite: Math.max(1, s.maxReadyPerSite ?? DEFAULT_MAX_READY_PER_SITE),
  };
}

/** The parts that start work; the core calls them when a site may have something to do. */
export interface Starter {
  tryStart(site: Site): void;
  /** A message with an operator's command came out of its queue. */
  toCommandLane(slot: number): void;
  /** A message with an operator's command left before the command ran (its attempt finished it). */
  commandGone(slot: number): void;
  /** Queues a message the spool put in a slot whose previous message was still being handled. */
  enqueue(slot: number): void;
}

export class SchedulerCore {
  readonly clock: Clock;
  readonly random: () => number;
  readonly jitter: number;
  readonly log: Logger;
  readonly slots = new SlotTable();
  readonly timers: TimerTier;
  readonly egress: Egress;
  readonly disposer: Disposer;
  live: Live;
  private readonly sites = new Map<string, Site>();
  private readonly byNum: (Site | undefined)[] = [];
  private readonly freeNums: number[] = [];
  /** Domains waiting for their first route lookup (rollup on), with their due slots. */
  private readonly staged = new Map<string, number[]>();
  /** Attempts in flight per recipient domain (the queue view's active connections). */
  readonly inFlightByDomain = new Map<string, number>();
  private routerVersion: number;
  private lastSweepMs: number;
  starter!: Starter;
  started = false;
  stopping = false;
  /** Route lookups, spool writes and DSNs not tied to a worker. */
  pendingOps = 0;
  /** Called when something ended that `idle()` may be waiting for. */
  onSettled: () => void = () => {};
  readonly siteEnv: SiteEnv;
  readonly counters: { suspensions: Counter; rules: Counter; attempts: Counter } | undefined;

  constructor(
    readonly opts: SchedulerOptions,
    onDue: () => void,
  ) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.jitter = opts.jitter ?? 0.1;
    this.log = opts.log;
    this.live = liveOf(opts);
    this.timers = new TimerTier(this.clock, onDue);
    this.egress = new Egress(
      opts.pools,
      opts.defaultPool,
      opts.maxConnectionsPerSource ?? DEFAULT_MAX_PER_SOURCE,
    );
    this.routerVersion = opts.router.version;
    this.lastSweepMs = this.clock.now();
    const mt = opts.metrics;
    this.counters = mt
      ? {
          suspensions: mt.counter("mta_scheduler_suspensions_total", "Destination suspensions, by kind"),
          rules: mt.counter(
            "mta_scheduler_rule_firings_total",
            "Reply-driven backoff rules fired, by rule and action",
          ),
          attempts: mt.counter("mta_scheduler_attempts_total", "Delivery attempts, by result"),
        }
      : undefined;
    this.disposer = new Disposer({
      spool: opts.spool,
      ...(opts.dsn ? { dsn: opts.dsn } : {}),
      ...(opts.classifying ? { classifying: opts.classifying } : {}),
      settings: this.dispositionSettings(opts),
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
      log: opts.log,
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
      clock: this.clock,
    });
    this.siteEnv = {
      now: () => this.clock.now(),
      random: this.random,
      wakeAt: (site, atMs) => this.timers.wakeAt(site.num, atMs),
      flushSite: (site) => queueMicrotask(() => this.flushSite(site)),
      onEvent: (e) => this.emitDestination(e),
      log: opts.log,
      ...(this.counters ? { counters: this.counters } : {}),
      ...(opts.shared ? { shared: opts.shared } : {}),
    };
  }

  private dispositionSettings(s: SchedulerSettings) {
    return {
      hostname: this.opts.hostname,
      maxAgeMs: s.maxAgeMs,
      delayWarningMs: s.delayWarningMs,
      ...(s.dsnMaxOriginalBytes !== undefined ? { dsnMaxOriginalBytes: s.dsnMaxOriginalBytes } : {}),
    };
  }

  /** New live settings (a reload). */
  applySettings(s: SchedulerSettings): void {
    this.live = liveOf(s);
    this.egress.maxPerSource = s.maxConnectionsPerSource ?? DEFAULT_MAX_PER_SOURCE;
    this.disposer.update(this.dispositionSettings(s));
  }

  // ------------------------------------------------------------------ sites

  site(name: string): Site {
    let s = this.sites.get(name);
    if (!s) {
      const policy = this.opts.router.policyOf(name);
      const num = this.freeNums.pop() ?? this.byNum.length;
      s = new Site(num, name, policy, this.egress.sourcesOf(policy), this.siteEnv);
      this.sites.set(name, s);
      this.byNum[num] = s;
    }
    return s;
  }

  findSite(name: string): Site | undefined {
    return this.sites.get(name);
  }

  siteByNum(num: number): Site | undefined {
    return this.byNum[num];
  }

  forEachSite(cb: (s: Site) => void): void {
    for (const s of this.sites.values()) cb(s);
  }

  /** The site a domain's mail is queued under now (or the name itself: a site, or a domain not routed yet). */
  siteNameOf(name: string): string {
    return this.opts.router.siteOf(name) ?? name;
  }

  /** Forgets sites that have had nothing to do for a while (the long tail of destinations stays cheap). */
  sweepSites(nowMs: number): void {
    if (nowMs - this.lastSweepMs < 60_000) return;
    this.lastSweepMs = nowMs;
    for (const [name, s] of this.sites) {
      if (!s.isIdle(nowMs) || nowMs - s.lastActiveMs < SITE_IDLE_RETIRE_MS) continue;
      this.sites.delete(name);
      s.close();
      this.byNum[s.num] = undefined;
      this.timers.cancelWake(s.num);
      this.freeNums.push(s.num);
    }
  }

  /** A policy change (reload): every live site takes its new policy; queues move if routes changed. */
  refreshSites(): void {
    const router = this.opts.router;
    for (const s of this.sites.values()) {
      const p = router.policyOf(s.name);
      s.applyPolicy(p, this.egress.sourcesOf(p));
    }
    if (router.version === this.routerVersion) return;
    this.routerVersion = router.version;
    // Routes changed: a ready message may now belong to another site (a new smarthost, a removed route).
    const moved = new Set<Site>();
    for (const s of [...this.sites.values()]) {
      for (const q of s.queues) {
        for (const ref of q.ready.drain()) {
          const slot = slotOfRef(ref);
          if (!this.isQueuedIn(ref, s, q.pool)) continue;
          this.slots.where[slot] = NONE;
          const d = this.makeReady(slot);
          if (d) moved.add(d);
        }
      }
    }
    for (const d of moved) this.starter.tryStart(d);
  }

  // ------------------------------------------------------------------ moves

  schedule(slot: number, atMs: number): void {
    this.slots.ensure(slot);
    this.slots.where[slot] = SCHEDULED;
    this.timers.schedule(slot, atMs);
  }

  /** The pool of the message in `slot` as far as known: its own, else its site's. */
  poolOfSlot(site: Site, slot: number): number {
    const p = this.slots.pool[slot]!;
    return p > 0 ? p - 1 : this.egress.poolOf(site.policy);
  }

  isQueuedIn(ref: SlotRef, site: Site, pool: number): boolean {
    const t = this.slots;
    const slot = slotOfRef(ref);
    return (
      t.isCurrent(ref) &&
      t.where[slot] === READY &&
      t.site[slot] === site.num &&
      t.queuedPool[slot] === pool + 1
    );
  }

  readyInto(touched: Set<Site>, slot: number): void {
    const d = this.makeReady(slot);
    if (d) touched.add(d);
  }

  /**
   * Puts a due message into its site's ready queue for its pool. Returns the site, or undefined when
   * the message waits elsewhere: for its domain's first route lookup, in the scheduled tier (site
   * full), or in the command lane (an operator's command is pending).
   */
  makeReady(slot: number): Site | undefined {
    const t = this.slots;
    t.ensure(slot);
    if (t.where[slot] === SCHEDULED) {
      this.timers.unschedule(slot);
      this.clearOverflow(slot);
    }
    if (t.command[slot] !== 0) {
      t.where[slot] = NONE;
      this.starter.toCommandLane(slot);
      return undefined;
    }
    const domain = this.opts.spool.destinationOf(slot);
    const name = this.opts.router.siteOf(domain);
    if (name === undefined) {
      this.stage(domain, slot);
      return undefined;
    }
    return this.place(this.site(name), slot);
  }

  private place(site: Site, slot: number): Site | undefined {
    const t = this.slots;
    const pool = this.poolOfSlot(site, slot);
    // Already queued there (a flush of a message that was ready): one entry serves it.
    if (t.where[slot] === READY && t.site[slot] === site.num && t.queuedPool[slot] === pool + 1) return site;
    if (site.readyLength >= this.live.maxReadyPerSite) {
      // Full: stay in the scheduled tier, spread over a second per bound's worth of overflow.
      site.overflowed++;
      t.overflow[slot] = 1;
      t.site[slot] = site.num;
      const delay = OVERFLOW_DEFER_MS * (1 + Math.floor(site.overflowed / this.live.maxReadyPerSite));
      this.schedule(slot, this.clock.now() + delay + Math.floor(this.random() * OVERFLOW_DEFER_MS));
      return undefined;
    }
    const ref = t.renew(slot);
    site.queueOf(pool).ready.push(ref);
    t.where[slot] = READY;
    t.site[slot] = site.num;
    t.queuedPool[slot] = pool + 1;
    return site;
  }

  clearOverflow(slot: number): void {
    const t = this.slots;
    if (slot >= t.overflow.length || t.overflow[slot] === 0) return;
    t.overflow[slot] = 0;
    const d = this.byNum[t.site[slot]!];
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
      const slots = this.staged.get(domain) ?? [];
      this.staged.delete(domain);
      const touched = new Set<Site>();
      const sp = this.opts.spool;
      for (const s of slots) {
        if (this.slots.where[s] !== ROUTING) continue;
        this.slots.where[s] = NONE;
        if (this.stopping || !sp.isLive(s)) continue;
        // No route now (DNS trouble): queue under the domain itself; its attempt backs off.
        const d = this.place(this.site(site ?? domain), s);
        if (d) touched.add(d);
      }
      for (const d of touched) this.starter.tryStart(d);
      this.onSettled();
    };
    this.opts.router.route(domain).then(
      (r) => done(r.kind === "hosts" ? r.site : undefined),
      (err) => {
        this.log.error("route lookup failed inside the MTA", {
          destination: domain,
          error: errorMessage(err),
        });
        done(undefined);
      },
    );
  }

  /** The next live ready message of `q`, marked active; stale entries are dropped. */
  takeReady(site: Site, q: { pool: number; ready: { shift(): number | undefined } }): SlotRef | undefined {
    const t = this.slots;
    for (let ref = q.ready.shift(); ref !== undefined; ref = q.ready.shift()) {
      if (!this.isQueuedIn(ref, site, q.pool)) continue;
      const slot = slotOfRef(ref);
      if (!this.opts.spool.isLive(slot)) {
        t.where[slot] = NONE;
        continue;
      }
      t.where[slot] = ACTIVE;
      return ref;
    }
    return undefined;
  }

  /** Puts an unattempted message back at the front of its (pool's) ready queue. */
  putBack(site: Site, ref: SlotRef): void {
    const slot = slotOfRef(ref);
    const t = this.slots;
    if (t.command[slot] !== 0) {
      t.where[slot] = NONE;
      this.starter.toCommandLane(slot);
      return;
    }
    const pool = this.poolOfSlot(site, slot);
    t.where[slot] = READY;
    t.site[slot] = site.num;
    t.queuedPool[slot] = pool + 1;
    site.queueOf(pool).ready.unshift(ref);
  }

  /** The message in `slot` left the scheduler; a new message the spool put there meanwhile is queued now. */
  finish(slot: number): void {
    const t = this.slots;
    const again = t.requeue[slot] === 1;
    t.requeue[slot] = 0;
    if (t.command[slot] !== 0) this.starter.commandGone(slot);
    t.release(slot);
    if (again) this.starter.enqueue(slot);
  }

  /** Whether the slot's message is in a worker's or the command lane's hands. */
  isBusy(slot: number): boolean {
    const w = this.slots.whereOf(slot);
    return w === ACTIVE || w === COMMAND;
  }

  /** Everything scheduled for a site comes due now (a bounce rule fired). */
  flushSite(site: Site): void {
    const sp = this.opts.spool;
    const picked: number[] = [];
    this.timers.forEachScheduled((slot) => {
      if (this.siteNameOf(sp.destinationOf(slot)) === site.name) picked.push(slot);
    });
    const touched = new Set<Site>([site]);
    for (const slot of picked) this.readyInto(touched, slot);
    for (const d of touched) this.starter.tryStart(d);
  }

  emitDestination(e: DestinationEvent): void {
    if (!this.opts.onDestinationEvent) return;
    try {
      this.opts.onDestinationEvent(e);
    } catch (err) {
      this.log.error("destination event handler failed", { error: errorMessage(err) });
    }
  }

  jittered(ms: number): number {
    return Math.max(0, Math.round(ms * (1 + this.jitter * (2 * this.random() - 1))));
  }

  /** Next attempt after `attempts` attempts: the retry list (last repeated), jittered, never past expiry. */
  retryAt(site: Site, attempts: number, arrivalMs: number): number {
    const list = site.policy.retryMs?.length ? site.policy.retryMs : this.live.retryMs;
    const base = list[Math.min(attempts, list.length) - 1]!;
    return Math.min(this.clock.now() + this.jittered(base), arrivalMs + this.live.maxAgeMs);
  }
}
