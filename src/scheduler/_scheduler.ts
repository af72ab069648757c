/**
 * The scheduler: from live spool slots to delivery attempts, and from verdicts back to the queues.
 *
 * Owns: the public API (start, enqueue, tick, flush, suspend, resume, bounce/delete commands, reload,
 * summary, stop, idle), its `mta_scheduler_*` gauges, and how the parts are put together:
 *   _core.ts      shared state and every move of a message between tiers and queues
 *   _site.ts      the site: queue key, policy, window, rates, suspension, rules (no sockets)
 *   _slots.ts     the slot table with a generation per slot
 *   _timers.ts    the timer tier: scheduled messages and site wake-ups, one timer
 *   _egress.ts    source pools and the choice of source per connection
 *   _workers.ts   connection workers and the global cap
 *   _attempt.ts   one attempt, from the checks before it to acting on the verdict
 *   _commands.ts  operator bounce/delete, carried out by the owner of the messages
 *   _summary.ts   the queue's shape per destination
 * Does not own: bytes on disk (spool/), SMTP (deliverer/), routing and policy (route/), outcomes,
 * the delivery log and DSNs (disposition/).
 *
 * Two tiers, after KumoMTA: due messages wait in their site's ready queues (per egress pool, arrival
 * order); the rest wait in the timer tier. A site is the queue key the routing step names: the
 * recipient domain, an MX rollup, or a static route's next hop (a smarthost is one destination).
 * Nothing scans the queue, except `flush` by destination and `summary`.
 *
 * Invariants:
 * - the outcome of an attempt is recorded in the spool before it is acted on (log line, DSN, retry);
 * - a whole-site failure (no host reachable, 421 greeting, DNS transient) never burns an attempt;
 * - only the holder of a message (a worker, or the command lane) writes its outcome;
 * - a null sender never gets a DSN; NOTIFY is honoured.
 * Known gap: the delay-warning flag lives in RAM, so a restart may send one more delay warning.
 */
import type { BackoffRule } from "../route/index.ts";
import { parseStoredReply, reply } from "../smtp/index.ts";
import { Attempts } from "./_attempt.ts";
import { Commands } from "./_commands.ts";
import { SchedulerCore } from "./_core.ts";
import type { Site } from "./_site.ts";
import { ACTIVE, COMMAND, NONE, READY, ROUTING, SCHEDULED } from "./_slots.ts";
import { type LiveView, summarize } from "./_summary.ts";
import type { CommandResult, DestinationSummary, SchedulerOptions, SchedulerSettings } from "./_types.ts";
import { Workers } from "./_workers.ts";

export class Scheduler {
  private readonly core: SchedulerCore;
  private readonly attempts: Attempts;
  private readonly workers: Workers;
  private readonly commands: Commands;
  private idleWaiters: (() => void)[] = [];
  private readonly view: LiveView;

  constructor(opts: SchedulerOptions) {
    const core = new SchedulerCore(opts, () => this.tick());
    this.core = core;
    this.attempts = new Attempts(core);
    this.workers = new Workers(core, this.attempts, () => this.checkIdle());
    this.commands = new Commands(core, this.attempts, () => this.checkIdle());
    core.starter = {
      tryStart: (s) => this.workers.tryStart(s),
      toCommandLane: (slot) => this.commands.toLane(slot),
      commandGone: (slot) => this.commands.settleGone(slot),
      enqueue: (slot) => this.enqueue(slot),
    };
    core.onSettled = () => {
      core.timers.arm();
      this.checkIdle();
    };
    this.view = {
      dueAtOf: (slot, now) => {
        const w = core.slots.whereOf(slot);
        if (w === SCHEDULED) return core.timers.dueAt(slot);
        return w === NONE ? undefined : now;
      },
      isDue: (slot) => {
        const w = core.slots.whereOf(slot);
        return w === READY || w === ACTIVE || w === ROUTING || w === COMMAND;
      },
      siteOf: (domain) => core.findSite(core.siteNameOf(domain)),
      forEachSite: (cb) => core.forEachSite(cb),
      inFlight: (domain) => core.inFlightByDomain.get(domain) ?? 0,
      limitOf: (s, now) => s.limit(now, core.live.maxConnections),
    };
    const mt = opts.metrics;
    if (mt) {
      mt.gauge("mta_scheduler_queued_messages", "Messages in the scheduler, by tier", (set) => {
        let ready = 0;
        core.forEachSite((s) => (ready += s.readyLength));
        set(core.timers.size, { tier: "scheduled" });
        set(ready, { tier: "ready" });
        set(this.attempts.inFlight, { tier: "active" });
      });
      mt.gauge("mta_scheduler_attempts_in_flight", "Delivery attempts in flight", (set) =>
        set(this.attempts.inFlight),
      );
      mt.gauge("mta_scheduler_connections_active", "Connection workers running", (set) =>
        set(this.workers.active),
      );
      mt.gauge("mta_scheduler_source_connections_active", "Connection workers by source address", (set) =>
        core.egress.forEachSource((source, n) => set(n, { source })),
      );
      mt.gauge(
        "mta_scheduler_overflow_messages",
        "Due messages held in the scheduled tier because their site's ready queues were full",
        (set) => {
          let n = 0;
          core.forEachSite((s) => (n += s.overflowed));
          set(n);
        },
      );
      mt.gauge("mta_scheduler_destinations_suspended", "Destinations suspended or backing off", (set) => {
        const now = core.clock.now();
        let n = 0;
        core.forEachSite((s) => {
          if (s.suspendedUntilMs > now) n++;
        });
        set(n);
      });
      mt.gauge("mta_scheduler_sites", "Sites (queue keys) the scheduler keeps state for", (set) => {
        let n = 0;
        core.forEachSite(() => n++);
        set(n);
      });
    }
  }

  // ------------------------------------------------------------------ public API

  /** Loads every live spool slot into the queues (due now into ready queues, in arrival order). */
  start(): void {
    const core = this.core;
    if (core.started) return;
    core.started = true;
    const now = core.clock.now();
    const due: number[] = [];
    const sp = core.opts.spool;
    sp.forEachLive((slot) => {
      if (sp.pendingRecipientsOf(slot) === 0) return;
      core.slots.ensure(slot);
      if (core.slots.where[slot] === COMMAND) return;
      core.slots.renew(slot);
      if (sp.nextAttemptOf(slot) > now) core.schedule(slot, sp.nextAttemptOf(slot));
      else due.push(slot);
    });
    due.sort((a, b) => sp.arrivalOf(a) - sp.arrivalOf(b));
    const touched = new Set<Site>();
    for (const slot of due) core.readyInto(touched, slot);
    for (const s of touched) this.workers.tryStart(s);
    core.timers.arm();
    this.checkIdle();
  }

  /**
   * Queues a newly appended message (due now or at its next attempt time). `hint.pool` is the
   * message's `pool` attribute when the caller knows it (else it is learned at the first attempt).
   */
  enqueue(slot: number, hint?: { pool?: string }): void {
    const core = this.core;
    if (core.stopping) return;
    const sp = core.opts.spool;
    if (!sp.isLive(slot)) return;
    const t = core.slots;
    t.ensure(slot);
    // The slot's previous message is still in a worker's or the lane's hands: queue this one after.
    if (core.isBusy(slot)) {
      t.requeue[slot] = 1;
      return;
    }
    if (t.where[slot] === SCHEDULED) {
      core.timers.unschedule(slot);
      core.clearOverflow(slot);
    }
    t.where[slot] = NONE;
    t.warned[slot] = 0;
    t.command[slot] = 0;
    t.renew(slot);
    t.pool[slot] = hint?.pool ? (core.egress.indexOf(hint.pool) ?? -1) + 1 : 0;
    if (!core.started) return; // start() will load it from the spool
    const at = sp.nextAttemptOf(slot);
    if (at > core.clock.now()) core.schedule(slot, at);
    else {
      const s = core.makeReady(slot);
      if (s) this.workers.tryStart(s);
    }
  }

  /**
   * Processes everything due at `clock.now()`: scheduled messages become ready, suspensions and
   * throttles end, rate waits are over. The timer tier calls it; tests with a ManualClock call it
   * after advancing the clock.
   */
  tick(): void {
    const core = this.core;
    if (core.stopping) return;
    const now = core.clock.now();
    const touched = new Set<Site>();
    const sp = core.opts.spool;
    for (let slot = core.timers.popDue(now); slot !== undefined; slot = core.timers.popDue(now)) {
      core.slots.where[slot] = NONE;
      core.clearOverflow(slot);
      if (sp.isLive(slot)) core.readyInto(touched, slot);
    }
    for (let n = core.timers.popWake(now); n !== undefined; n = core.timers.popWake(now)) {
      const s = core.siteByNum(n);
      if (!s) continue;
      s.expireRestrictions(now);
      touched.add(s);
    }
    for (const s of touched) this.workers.tryStart(s);
    core.sweepSites(now);
    core.timers.arm();
    this.checkIdle();
  }

  /**
   * Makes scheduled messages due now: all of them, one destination's, or one message (by id).
   * Lifts the site backoff (not an admin suspension) of the destination, or with no target of every
   * destination, as Postfix's `postqueue -f` unthrottles every queue: mail held ready behind a backoff
   * is retried too. Returns how many messages became due (scheduled ones plus those held so) and the
   * sites whose backoff was lifted.
   */
  flush(target: { destination?: string; id?: string } = {}): { flushed: number; backoffLifted: string[] } {
    const core = this.core;
    if (core.stopping) return { flushed: 0, backoffLifted: [] };
    const sp = core.opts.spool;
    let picked: number[] = [];
    if (target.id !== undefined) {
      const slot = sp.slotOf(target.id);
      if (slot !== undefined && core.timers.isScheduled(slot)) picked = [slot];
    } else {
      const all: { slot: number; at: number }[] = [];
      const want = target.destination;
      core.timers.forEachScheduled((slot, at) => {
        if (want === undefined) return void all.push({ slot, at });
        const dest = sp.destinationOf(slot);
        if (dest === want || core.siteNameOf(dest) === want) all.push({ slot, at });
      });
      all.sort((a, b) => a.at - b.at);
      picked = all.map((e) => e.slot);
    }
    const touched = new Set<Site>();
    if (target.destination !== undefined) {
      const s = core.findSite(core.siteNameOf(target.destination));
      if (s) touched.add(s);
    } else if (target.id === undefined) core.forEachSite((s) => touched.add(s));
    // Held ready behind a backoff (counted before the scheduled ones join the ready queues).
    let held = 0;
    for (const s of touched) if (s.backingOff) held += s.readyLength;
    for (const slot of picked) core.readyInto(touched, slot);
    const lifted: string[] = [];
    for (const s of touched) {
      if (s.backingOff) {
        s.lift("flushed");
        lifted.push(s.name);
      }
      this.workers.tryStart(s);
    }
    core.timers.arm();
    this.checkIdle();
    return { flushed: picked.length + held, backoffLifted: lifted.sort() };
  }

  /** No new attempts to `destination` (a domain: its site; or a site) for `forMs` (undefined = until `resume`). */
  suspend(destination: string, forMs?: number, reason = "suspended by operator"): void {
    const core = this.core;
    const s = core.site(core.siteNameOf(destination));
    const until = forMs === undefined ? Number.POSITIVE_INFINITY : core.clock.now() + forMs;
    s.suspend(until, "admin", reason);
  }

  /**
   * A backoff rule that fired on another node (a cluster's shared state): applied to the site of
   * `destination` for what is left of it, as if it had fired here, and not passed on again. A rule
   * this node's policy does not have (configurations differ) is applied with its action and the
   * defaults (throttle: one connection at one message a second) for at most an hour, except a bounce
   * (mail is failed here only by a rule this node has). A known rule lasts no longer here than its
   * own `forMs`, whatever the message says.
   */
  applyRemoteRule(
    destination: string,
    fired: { rule: string; action: BackoffRule["action"]; reply: string; forMs: number; node: string },
  ): void {
    const core = this.core;
    if (core.stopping || !(fired.forMs > 0)) return;
    if (fired.action !== "suspend" && fired.action !== "throttle" && fired.action !== "bounce") return;
    const s = core.site(core.siteNameOf(destination));
    const known = s.rules.find((r) => r.name === fired.rule && r.action === fired.action);
    if (!known && fired.action === "bounce") {
      core.log.warn("bounce rule from another node not applied: this node has no such rule", {
        destination: s.name,
        rule: fired.rule,
        node: fired.node,
      });
      return;
    }
    const rule: BackoffRule = known ?? {
      name: fired.rule,
      action: fired.action,
      forMs: Math.min(fired.forMs, 3_600_000),
      maxConnections: 1,
      messageRate: { count: 1, perMs: 1000 },
    };
    const r = parseStoredReply(fired.reply) ?? reply(451, "4.7.0", fired.reply);
    s.fireRule(rule, r, { node: fired.node, forMs: Math.min(fired.forMs, rule.forMs) });
  }

  resume(destination: string): void {
    const core = this.core;
    const s = core.findSite(core.siteNameOf(destination));
    if (!s) return;
    s.resume();
    this.workers.tryStart(s);
    this.checkIdle();
  }

  /**
   * An operator's bounce or delete of the messages `ids`: each is taken from its queue (or handed over
   * when its attempt in flight ends) and disposed of by the scheduler itself. Resolves when all were.
   */
  command(action: "bounce" | "delete", ids: readonly string[]): Promise<CommandResult> {
    return this.commands.submit(action, ids);
  }

  /** A configuration reload: new settings, every live site's new policy, queues re-keyed if routes changed. */
  reload(settings: SchedulerSettings): void {
    const core = this.core;
    core.applySettings(settings);
    core.refreshSites();
    core.forEachSite((s) => this.workers.tryStart(s));
    this.workers.pumpWaiting();
    core.timers.arm();
    this.checkIdle();
  }

  /** When the message in `slot` is next attempted, as the scheduler has it (now if it is due). */
  nextAttemptOf(slot: number): number {
    const now = this.core.clock.now();
    return this.view.dueAtOf(slot, now) ?? this.core.opts.spool.nextAttemptOf(slot);
  }

  /** Per destination with queued mail or a state worth showing. O(queued messages): for the API, not for hot paths. */
  summary(): DestinationSummary[] {
    return summarize(this.core.opts.spool, this.core.clock.now(), this.view);
  }

  activeConnections(): number {
    return this.workers.active;
  }

  /** Stops starting attempts and waits (at most `graceMs`) for the ones in flight. */
  async stop(graceMs = 30_000): Promise<void> {
    this.core.stopping = true;
    this.core.timers.stop();
    await this.workers.drain(graceMs);
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

  private checkIdle(): void {
    if (this.idleWaiters.length === 0) return;
    const core = this.core;
    if (
      this.workers.active > 0 ||
      this.attempts.inFlight > 0 ||
      core.pendingOps > 0 ||
      this.commands.busy > 0
    )
      return;
    if (!core.stopping) {
      const now = core.clock.now();
      if (core.timers.anyDue(now)) return;
      let live = false;
      core.forEachSite((s) => {
        if (live || s.readyLength === 0 || s.isSuspended(now)) return;
        if (s.messageWait(now) > 0 || s.connectionWait(now) > 0) return;
        // Stale entries only? Then the queue is effectively empty.
        for (const q of s.queues)
          q.ready.forEach((ref) => {
            if (core.isQueuedIn(ref, s, q.pool)) live = true;
          });
      });
      if (live) return;
    }
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
