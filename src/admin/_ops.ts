/**
 * Queue operations: every `mta queue` command as a method over a spool and, in a live daemon, its
 * scheduler. The same object answers the control API (live) and the CLI's local mode (stopped spool).
 *
 * Owns: selecting messages (by id, destination, sender, state, age) and computing every command's
 * answer (its JSON shape is _shapes.ts's).
 * Does not own: the queues and their shape (scheduler/: live bounce and delete are scheduler
 * commands, carried out by the owner of the messages; `summarize` is the one aggregation), the
 * summary's rows and order (_summary.ts), what a bounce or delete records (disposition/; offline
 * through _offline.ts), the `mta_queue_*` series (_gauges.ts), bytes on disk (spool/), transport
 * (_routes.ts, _client.ts).
 * Invariants:
 * - every answer is plain JSON (no undefined, no Infinity), identical in shape live and offline;
 * - an action goes through disposition/: recorded in the spool, then logged, then a DSN;
 * - suspensions live in the scheduler's memory: offline `suspend`/`resume` are refused, never faked.
 */
import { Classifier, replyLineInput } from "../bounce/index.ts";
import type { DsnInjector } from "../disposition/index.ts";
import { type Clock, MAX_DURATION_MS, systemClock } from "../lib/index.ts";
import type { Counter, DeliveryLog, Logger, Metrics } from "../observe/index.ts";
import { type CommandResult, type DestinationSummary, summarize } from "../scheduler/index.ts";
import type { CompactReport, Spool, StoredMessage, VerifyReport } from "../spool/index.ts";
import { silentLogger } from "../observe/index.ts";
import { splitMessage } from "../message/index.ts";
import { verifySpool } from "../spool/index.ts";
import {
  type ActionResult,
  daemonNeeded,
  type FlushResult,
  MESSAGE_STATES,
  type MessageDetail,
  type MessageList,
  type MessageRow,
  type MessageState,
  QueueError,
  type QueueSummary,
  type Selector,
  nullable,
  SORT_KEYS,
  type SortKey,
  type StatsResult,
} from "./_shapes.ts";
import { registerQueueMetrics } from "./_gauges.ts";
import { summaryOf, summaryRows } from "./_summary.ts";
import { offlineAction } from "./_offline.ts";

/** What QueueOps needs of a live scheduler (the real `Scheduler` has all of it). */
export interface LiveScheduler {
  summary(): DestinationSummary[];
  flush(target: { destination?: string; id?: string }): { flushed: number; backoffLifted: string[] };
  suspend(destination: string, forMs?: number, reason?: string): void;
  resume(destination: string): void;
  command(action: "bounce" | "delete", ids: readonly string[]): Promise<CommandResult>;
  nextAttemptOf(slot: number): number;
  /** Queues a message appended here (a transfer from another node). */
  enqueue(slot: number): void;
}

export interface QueueOpsOptions {
  spool: Spool;
  /** The running scheduler; absent offline (a stopped spool opened by the CLI). */
  scheduler?: LiveScheduler;
  deliveryLog?: DeliveryLog;
  /** Offline: how admin-bounce DSNs are queued (the accept pipeline over this spool). */
  dsn?: DsnInjector;
  /** Reporting-MTA of admin-bounce DSNs (offline). */
  hostname: string;
  log?: Logger;
  clock?: Clock;
  /** Registers the `mta_queue_*` series (queue depth, bytes, oldest age, admin actions). */
  metrics?: Metrics;
  /** The bounce class of a stored reply line (shown by `show`, written with admin bounces). */
  classify?: (replyLine: string) => string;
  /** Told of the operator's suspend/resume after the scheduler applied them (a cluster publishes them). */
  onAdmin?: {
    suspended(destination: string, forMs: number | undefined, reason: string): void;
    resumed(destination: string): void;
  };
  /** How long `hold` waits for attempts in flight to end (default 30 s). */
  drainTimeoutMs?: number;
}

/**
 * The header fields of a message for `mta queue show`, as Latin-1 text: each continuation line
 * trimmed and joined with one space (message/'s `splitMessage` finds the fields).
 */
export function parseHeaders(body: Uint8Array): { name: string; value: string }[] {
  return splitMessage(body).fields.map((f) => ({
    name: f.name,
    value: f.raw
      .slice(f.name.length + 1)
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== "")
      .join(" "),
  }));
}

export class QueueOps {
  readonly spool: Spool;
  private readonly scheduler: LiveScheduler | undefined;
  private readonly clock: Clock;
  private readonly adminCounter: Counter | undefined;
  /** Destinations held by an action (a transfer), until it lets them go. */
  private readonly draining = new Map<string, Promise<unknown>>();

  /** The configuration's rules when given, else the built-in ones (the same answer offline and live). */
  private readonly classify: (replyLine: string) => string;

  constructor(private readonly opts: QueueOpsOptions) {
    const builtin = Classifier.builtin();
    this.classify = opts.classify ?? ((line) => builtin.classify(replyLineInput(line)).class);
    this.spool = opts.spool;
    this.scheduler = opts.scheduler;
    this.clock = opts.clock ?? systemClock;
    if (opts.metrics) this.adminCounter = registerQueueMetrics(opts.metrics, this.spool, this.clock);
  }

  get live(): boolean {
    return this.scheduler !== undefined;
  }

  // ------------------------------------------------------------------ read-only

  /** Per destination, like qshape / KumoMTA's queue-summary: one pass over the in-RAM index. */
  summary(opts: { sort?: SortKey; top?: number } = {}): QueueSummary {
    const sort = opts.sort ?? "messages";
    if (!SORT_KEYS.includes(sort))
      throw new QueueError("usage", `sort must be one of ${SORT_KEYS.join(", ")}`, 400);
    if (opts.top !== undefined && (!Number.isInteger(opts.top) || opts.top < 0))
      throw new QueueError("usage", "top must be a whole number", 400);
    const now = this.clock.now();
    // One aggregation (scheduler/'s summarize): the live scheduler's view, or the spool alone.
    const shape = this.scheduler ? this.scheduler.summary() : summarize(this.spool, now);
    return summaryOf(summaryRows(shape), sort, opts.top, now);
  }

  private heldDestinations(): Set<string> {
    const held = new Set<string>();
    if (!this.scheduler) return held;
    for (const s of this.scheduler.summary())
      if (s.state === "suspended" || s.state === "backoff") held.add(s.destination);
    return held;
  }

  /** When the message is next attempted: the scheduler's due time live, the spool's column offline. */
  private nextAttemptOf(slot: number): number {
    return this.scheduler ? this.scheduler.nextAttemptOf(slot) : this.spool.nextAttemptOf(slot);
  }

  private stateOf(slot: number, now: number, held: Set<string>): MessageState {
    if (held.size > 0 && held.has(this.spool.destinationOf(slot))) return "held";
    return this.nextAttemptOf(slot) <= now ? "active" : "deferred";
  }

  private checkSelector(sel: Selector): void {
    if (sel.state !== undefined && !MESSAGE_STATES.includes(sel.state))
      throw new QueueError("usage", `state must be one of ${MESSAGE_STATES.join(", ")}`, 400);
    if (sel.olderThanMs !== undefined && !(Number.isFinite(sel.olderThanMs) && sel.olderThanMs >= 0))
      throw new QueueError("usage", "older-than must be a duration", 400);
  }

  /** Live slots matching `sel`, in slot order. Reads envelopes from disk only for a sender filter. */
  private select(sel: Selector, now: number): number[] {
    this.checkSelector(sel);
    const sp = this.spool;
    if (sel.id !== undefined) {
      const slot = sp.slotOf(sel.id);
      return slot !== undefined && sp.isLive(slot) ? [slot] : [];
    }
    const held = sel.state !== undefined ? this.heldDestinations() : new Set<string>();
    const sender = sel.sender?.toLowerCase();
    const out: number[] = [];
    sp.forEachLive((slot) => {
      if (sel.destination !== undefined && sp.destinationOf(slot) !== sel.destination) return;
      if (sel.olderThanMs !== undefined && now - sp.arrivalOf(slot) < sel.olderThanMs) return;
      if (sel.state !== undefined && this.stateOf(slot, now, held) !== sel.state) return;
      if (sender !== undefined) {
        try {
          if (sp.readEnvelope(slot).sender.toLowerCase() !== sender) return;
        } catch {
          return;
        }
      }
      out.push(slot);
    });
    return out;
  }

  /** Messages matching the filters, oldest first, at most `limit` (default 1000) of them. */
  list(sel: Selector & { limit?: number } = {}): MessageList {
    const now = this.clock.now();
    const limit = sel.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 0)
      throw new QueueError("usage", "limit must be a whole number", 400);
    const sp = this.spool;
    const slots = this.select(sel, now);
    slots.sort((a, b) => sp.arrivalOf(a) - sp.arrivalOf(b) || (sp.idOf(a) < sp.idOf(b) ? -1 : 1));
    const held = this.heldDestinations();
    const messages: MessageRow[] = [];
    for (const slot of slots.slice(0, limit)) {
      let env: StoredMessage;
      try {
        env = sp.readEnvelope(slot);
      } catch {
        continue;
      }
      messages.push({
        id: env.id,
        destination: env.destination,
        sender: env.sender,
        recipients: env.recipients.length,
        pendingRecipients: sp.pendingRecipientsOf(slot),
        bytes: env.sizeBytes,
        arrivalMs: env.arrivalMs,
        attempts: env.attempts,
        nextAttemptMs: this.nextAttemptOf(slot),
        state: this.stateOf(slot, now, held),
      });
    }
    return { nowMs: now, matched: slots.length, messages };
  }

  /** One message: envelope, recipients with their state and last reply, header; the body on request. */
  async show(id: string, opts: { body?: boolean } = {}): Promise<MessageDetail> {
    const sp = this.spool;
    const slot = sp.slotOf(id);
    if (slot === undefined || !sp.isLive(slot))
      throw new QueueError("data", `no message ${id} in the queue`, 404);
    const { message: m, body } = await sp.read(slot);
    const d: MessageDetail = {
      id: m.id,
      destination: m.destination,
      sender: m.sender,
      arrivalMs: m.arrivalMs,
      attempts: m.attempts,
      nextAttemptMs: this.nextAttemptOf(slot),
      state: this.stateOf(slot, this.clock.now(), this.heldDestinations()),
      bytes: m.sizeBytes,
      recipients: m.recipients.map((r) => ({
        address: r.address,
        state: r.state,
        lastReply: nullable(r.lastReply),
        tls: nullable(r.lastTls),
        class: r.lastReply && r.state !== "delivered" ? this.classify(r.lastReply) : null,
        notify: nullable(r.notify),
        orcpt: nullable(r.orcpt),
      })),
      attributes: m.attributes,
      headers: parseHeaders(body),
    };
    if (opts.body) d.body = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("latin1");
    return d;
  }

  stats(): StatsResult {
    const s = this.spool.stats();
    // A spool opened read-only has no active segment of its own: the newest one is the daemon's.
    if (s.activeSegment === "") s.activeSegment = this.spool.segmentInfo().at(-1)?.name ?? "";
    return { dir: this.spool.dir, ...s };
  }

  /** Checks every record of every segment; read-only, safe next to the running daemon. */
  verify(): Promise<VerifyReport> {
    return verifySpool(this.spool.dir);
  }

  // ------------------------------------------------------------------ actions

  compact(): Promise<CompactReport> {
    return this.spool.compact();
  }

  /**
   * Retry now: one message (by id), one destination's, or all. Live, the scheduler moves them to the
   * ready queues (and lifts a site backoff); offline, the next attempt time is recorded in the spool so
   * that the next start tries them at once.
   */
  async flush(target: { destination?: string; id?: string } = {}): Promise<FlushResult> {
    const sp = this.spool;
    if (target.id !== undefined) {
      const slot = sp.slotOf(target.id);
      if (slot === undefined || !sp.isLive(slot))
        throw new QueueError("data", `no message ${target.id} in the queue`, 404);
    }
    // The scheduler counts what it made due (the messages held ready behind a backoff among them)
    // and names the sites whose backoff it lifted.
    if (this.scheduler) return { ...this.scheduler.flush(target), live: true };
    const now = this.clock.now();
    const slots = this.select(
      {
        ...(target.id !== undefined ? { id: target.id } : {}),
        ...(target.destination !== undefined ? { destination: target.destination } : {}),
      },
      now,
    ).filter((slot) => sp.nextAttemptOf(slot) > now);
    await Promise.all(
      slots.map((slot) =>
        sp.recordOutcome(slot, {
          recipients: [],
          attempts: sp.attemptsOf(slot),
          nextAttemptMs: now,
          reason: "admin-flush",
        }),
      ),
    );
    return { flushed: slots.length, backoffLifted: [], live: false };
  }

  private needScheduler(what: string): LiveScheduler {
    if (!this.scheduler) throw daemonNeeded(what);
    return this.scheduler;
  }

  suspend(
    destination: string,
    forMs?: number,
    reason?: string,
  ): { destination: string; untilMs: number | null } {
    if (!destination) throw new QueueError("usage", "suspend needs a destination", 400);
    if (forMs !== undefined && !(Number.isFinite(forMs) && forMs > 0 && forMs <= MAX_DURATION_MS))
      throw new QueueError(
        "usage",
        "forMs must be a positive number of milliseconds of at most 100 years",
        400,
      );
    const why = reason ?? "suspended by operator";
    this.needScheduler("suspend").suspend(destination, forMs, why);
    this.opts.onAdmin?.suspended(destination, forMs, why);
    return { destination, untilMs: forMs === undefined ? null : this.clock.now() + forMs };
  }

  resume(destination: string): { destination: string } {
    if (!destination) throw new QueueError("usage", "resume needs a destination", 400);
    this.needScheduler("resume").resume(destination);
    this.opts.onAdmin?.resumed(destination);
    return { destination };
  }

  /** Live slots matching `sel` now, in slot order (for actions built on top, e.g. a transfer). */
  selectSlots(sel: Selector): number[] {
    return this.select(sel, this.clock.now());
  }

  /**
   * Holds `destinations` still while an action changes their messages (see the invariants) and
   * resolves with the function that lets them go; offline there is nothing to hold.
   */
  hold(destinations: string[]): Promise<() => void> {
    return this.scheduler ? this.holdDestinations(this.scheduler, destinations) : Promise.resolve(() => {});
  }

  /** Suspends the destinations that are not already, waits until no attempt to them is in flight. */
  private async holdDestinations(sched: LiveScheduler, destinations: string[]): Promise<() => void> {
    // One action per destination at a time: wait for an earlier one to release it.
    for (const d of destinations) await this.draining.get(d);
    const prior = new Map(sched.summary().map((s) => [s.destination, s]));
    const mine: string[] = [];
    for (const d of destinations) {
      const p = prior.get(d);
      // Already suspended by the operator or a rule: keep that suspension (a bounce rule still attempts).
      if (p?.state === "suspended" && !p.reason?.startsWith("bouncing")) continue;
      sched.suspend(d, undefined, "held for an administrative action");
      mine.push(d);
    }
    let done!: () => void;
    const p = new Promise<void>((r) => (done = r));
    for (const d of mine) this.draining.set(d, p);
    const release = () => {
      for (const d of mine) {
        this.draining.delete(d);
        sched.resume(d);
      }
      done();
    };
    const want = new Set(destinations);
    const deadline = performance.now() + (this.opts.drainTimeoutMs ?? 30_000);
    for (;;) {
      const busy = sched.summary().filter((s) => want.has(s.destination) && s.activeConnections > 0);
      if (busy.length === 0) return release;
      if (performance.now() > deadline) {
        release();
        throw new QueueError(
          "unavailable",
          `attempts to ${busy.map((b) => b.destination).join(", ")} are still in flight; nothing was changed, try again`,
          503,
        );
      }
      await Bun.sleep(10);
    }
  }

  /** Queues a message appended by an action built on top (the running scheduler takes it). */
  enqueue(slot: number): void {
    this.scheduler?.enqueue(slot);
  }

  bounce(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return this.act("bounce", sel, opts.yes === true);
  }

  delete(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return this.act("delete", sel, opts.yes === true);
  }

  private async act(action: "bounce" | "delete", sel: Selector, yes: boolean): Promise<ActionResult> {
    if (
      sel.id === undefined &&
      sel.destination === undefined &&
      sel.sender === undefined &&
      sel.olderThanMs === undefined &&
      sel.state === undefined
    )
      throw new QueueError(
        "usage",
        `${action} needs a selector: id, destination, sender, state or older-than`,
        400,
      );
    const sp = this.spool;
    const now = this.clock.now();
    const slots = this.select(sel, now);
    const result: ActionResult = {
      action,
      matched: slots.length,
      done: yes,
      affected: 0,
      recipients: 0,
      dsns: 0,
      sample: slots.slice(0, 20).map((s) => sp.idOf(s)),
      failed: [],
    };
    if (!yes || slots.length === 0) return result;
    const ids = slots.map((s) => sp.idOf(s));
    // Live: the scheduler owns the messages and carries the command out itself; offline: the same
    // disposition path over the stopped spool.
    const done = this.scheduler ? await this.scheduler.command(action, ids) : await this.offline(action, ids);
    result.affected = done.affected;
    result.recipients = done.recipients;
    result.dsns = done.dsns;
    result.failed = done.failed;
    if (done.affected > 0) this.adminCounter?.inc({ action }, done.affected);
    this.opts.deliveryLog?.flush();
    return result;
  }

  /** Bounce or delete on a stopped spool (_offline.ts). */
  private offline(action: "bounce" | "delete", ids: string[]): Promise<CommandResult> {
    const o = this.opts;
    return offlineAction(
      {
        spool: this.spool,
        ...(o.dsn ? { dsn: o.dsn } : {}),
        hostname: o.hostname,
        classify: this.classify,
        ...(o.deliveryLog ? { deliveryLog: o.deliveryLog } : {}),
        log: o.log ?? silentLogger(),
        clock: this.clock,
      },
      action,
      ids,
    );
  }
}
