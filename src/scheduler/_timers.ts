/**
 * The timer tier: when each scheduled message is due, when each site wakes up, and the one timer.
 *
 * Owns: the scheduled queue (a heap of slot -> due time) and the wake-ups (a heap of site number ->
 * time a suspension, throttle or rate wait ends), and the single `setTimeout` that covers both.
 * Does not own: what happens when something is due (the scheduler's `tick`).
 * Invariant: a scheduled message's due time lives here and only here; the spool's next-attempt
 * column is its durable copy, read once at start. The queue view asks `dueAt`.
 */
import type { Clock } from "../lib/index.ts";
import { TimerHeap } from "./_heap.ts";

const MAX_TIMER_MS = 2 ** 31 - 1;

export class TimerTier {
  private readonly scheduled = new TimerHeap();
  private readonly wakeups = new TimerHeap();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAtMs = Number.POSITIVE_INFINITY;
  private stopped = false;

  constructor(
    private readonly clock: Clock,
    private readonly onDue: () => void,
  ) {}

  get size(): number {
    return this.scheduled.size;
  }

  schedule(slot: number, atMs: number): void {
    this.scheduled.push(slot, atMs);
    this.arm();
  }

  unschedule(slot: number): void {
    this.scheduled.remove(slot);
  }

  isScheduled(slot: number): boolean {
    return this.scheduled.has(slot);
  }

  /** The due time of a scheduled message, or undefined when it is not scheduled. */
  dueAt(slot: number): number | undefined {
    return this.scheduled.timeOf(slot);
  }

  forEachScheduled(cb: (slot: number, atMs: number) => void): void {
    this.scheduled.forEach(cb);
  }

  /** The next scheduled slot due at `nowMs`, taken out; undefined when none is. */
  popDue(nowMs: number): number | undefined {
    return this.scheduled.popDue(nowMs);
  }

  /** Wakes site `num` at `atMs` (the earlier of two wake-ups wins). */
  wakeAt(num: number, atMs: number): void {
    const cur = this.wakeups.timeOf(num);
    if (cur === undefined || atMs < cur) this.wakeups.push(num, atMs);
    this.arm();
  }

  cancelWake(num: number): void {
    this.wakeups.remove(num);
  }

  popWake(nowMs: number): number | undefined {
    return this.wakeups.popDue(nowMs);
  }

  /** Whether something is due at `nowMs` that `tick` has not taken yet. */
  anyDue(nowMs: number): boolean {
    const a = this.scheduled.peekTime();
    const b = this.wakeups.peekTime();
    return (a !== undefined && a <= nowMs) || (b !== undefined && b <= nowMs);
  }

  arm(): void {
    if (this.stopped) return;
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
      this.onDue();
    }, delay);
    (this.timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
