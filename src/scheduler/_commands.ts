/**
 * Operator commands on live messages (`mta queue bounce`, `delete`): carried out by the scheduler,
 * which owns the messages, when each is next taken from its queue.
 *
 * Owns: marking the selected messages, taking them out of whichever tier holds them into the command
 * lane (a message being attempted is handed over when its attempt ends and is still pending), the
 * lane itself (a few messages at a time, not subject to any site's limits or suspension: an operator
 * may bounce what a suspended destination holds), and the answer once every one was handled.
 * Does not own: what a bounce or delete records (disposition/), selecting messages (admin's QueueOps).
 * Invariant: the spool is only ever written for a message by whoever holds it (a worker or this
 * lane), so an outcome can never land on a slot the spool has handed to another message.
 */
import type { Outcome } from "../disposition/index.ts";
import { AssertionError, assert, errorMessage } from "../lib/index.ts";
import type { Attempts } from "./_attempt.ts";
import type { SchedulerCore } from "./_core.ts";
import {
  ACTIVE,
  CMD_BOUNCE,
  CMD_DELETE,
  CMD_NONE,
  COMMAND,
  NONE,
  READY,
  ROUTING,
  SCHEDULED,
} from "./_slots.ts";
import type { CommandResult } from "./_types.ts";

/** Messages the lane works on at once (reads and group-committed records). */
const LANE_CONCURRENCY = 64;

interface Job {
  action: "bounce" | "delete";
  left: number;
  result: CommandResult;
  resolve: (r: CommandResult) => void;
}

export class Commands {
  private readonly lane: number[] = [];
  private laneHead = 0;
  private running = 0;
  /** Jobs waiting for each slot (usually one). */
  private readonly waiting = new Map<number, { job: Job; id: string }[]>();
  /** Lane work in flight (for idle()). */
  get busy(): number {
    return this.running + (this.lane.length - this.laneHead);
  }

  constructor(
    private readonly core: SchedulerCore,
    private readonly attempts: Attempts,
    private readonly onEnd: () => void,
  ) {}

  /** Bounces or deletes the messages `ids` (those still queued); resolves when every one was handled. */
  submit(action: "bounce" | "delete", ids: readonly string[]): Promise<CommandResult> {
    const core = this.core;
    const sp = core.opts.spool;
    const t = core.slots;
    return new Promise((resolve) => {
      const job: Job = {
        action,
        left: 0,
        result: { affected: 0, recipients: 0, dsns: 0, failed: [] },
        resolve,
      };
      const code = action === "bounce" ? CMD_BOUNCE : CMD_DELETE;
      const targets: number[] = [];
      for (const id of ids) {
        const slot = sp.slotOf(id);
        if (slot === undefined || !sp.isLive(slot) || sp.idOf(slot) !== id) continue;
        t.ensure(slot);
        job.left++;
        const list = this.waiting.get(slot);
        if (list) list.push({ job, id });
        else this.waiting.set(slot, [{ job, id }]);
        // The first command on a message wins; a later one only waits for it.
        if (t.command[slot] === CMD_NONE) {
          t.command[slot] = code;
          targets.push(slot);
        }
      }
      for (const slot of targets) this.takeOut(slot);
      if (job.left === 0) resolve(job.result);
    });
  }

  /** Takes a marked message out of its tier into the lane; an active one is handed over later. */
  private takeOut(slot: number): void {
    const core = this.core;
    switch (core.slots.where[slot]) {
      case SCHEDULED:
        core.timers.unschedule(slot);
        core.clearOverflow(slot);
        this.toLane(slot);
        break;
      case READY: // its ready-queue entry goes stale
      case ROUTING: // its staged entry is skipped
      case NONE:
        this.toLane(slot);
        break;
      case ACTIVE: // the attempt's end hands it over if it is still pending
      case COMMAND:
        break;
    }
  }

  /** Queues a marked message for the lane and starts lane work. */
  toLane(slot: number): void {
    const t = this.core.slots;
    t.where[slot] = COMMAND;
    t.renew(slot);
    this.lane.push(slot);
    this.pump();
  }

  private pump(): void {
    while (this.running < LANE_CONCURRENCY && this.laneHead < this.lane.length) {
      const slot = this.lane[this.laneHead++]!;
      if (this.laneHead > 1024 && this.laneHead * 2 > this.lane.length) {
        this.lane.splice(0, this.laneHead);
        this.laneHead = 0;
      }
      this.running++;
      void this.handle(slot).finally(() => {
        this.running--;
        this.pump();
        this.onEnd();
      });
    }
  }

  private async handle(slot: number): Promise<void> {
    const core = this.core;
    const sp = core.opts.spool;
    const t = core.slots;
    const code = t.command[slot]!;
    const waiters = this.waiting.get(slot) ?? [];
    this.waiting.delete(slot);
    let affected = 0;
    let dsn = false;
    let error: string | undefined;
    try {
      assert(t.where[slot] === COMMAND, () => `slot ${slot} in the command lane is not held by it`);
      if (sp.isLive(slot)) {
        const { message, body } = await sp.read(slot);
        const outcome: Outcome = code === CMD_BOUNCE ? { kind: "bounced" } : { kind: "deleted" };
        const d = await core.disposer.dispose({ slot, message, body, outcome });
        affected = d.recipients;
        t.command[slot] = CMD_NONE;
        this.attempts.act(slot, d);
        dsn = await d.dsn;
      } else core.finish(slot);
    } catch (err) {
      if (err instanceof AssertionError) throw err;
      error = errorMessage(err);
      // Nothing was recorded: the message goes back to waiting for its next attempt.
      t.command[slot] = CMD_NONE;
      if (t.where[slot] === COMMAND) core.schedule(slot, core.clock.now() + 60_000);
    }
    for (const { job, id } of waiters) {
      if (error !== undefined) job.result.failed.push({ id, error });
      else if (affected > 0) {
        job.result.affected++;
        job.result.recipients += affected;
        if (dsn) job.result.dsns++;
      }
      if (--job.left === 0) job.resolve(job.result);
    }
  }

  /** Answers the jobs of a message that left before its command ran (its attempt finished it). */
  settleGone(slot: number): void {
    const waiters = this.waiting.get(slot);
    if (!waiters) return;
    this.waiting.delete(slot);
    for (const { job } of waiters) if (--job.left === 0) job.resolve(job.result);
  }
}
