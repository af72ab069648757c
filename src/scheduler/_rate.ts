/**
 * Rate limits as GCRA (the generic cell rate algorithm, a token bucket kept as one number).
 *
 * Owns: `RateLimiter`: whether one more event (a message, a connection) may happen now, and if not,
 * when it may.
 * Does not own: the clock (passed in as `nowMs`), what is being limited.
 * Invariants: over any window of length W starting from an idle limiter, at most
 * `count + floor(W / intervalMs)` events are allowed, where `intervalMs = perMs / count`; the burst is
 * `count` (a full bucket), so "100/s" allows 100 at once and then one every 10 ms.
 */

import type { Rate } from "../lib/index.ts";

export class RateLimiter {
  /** Theoretical arrival time of the next event when the bucket is empty. */
  private tat = Number.NEGATIVE_INFINITY;
  private readonly intervalMs: number;
  private readonly burstMs: number;

  constructor(readonly rate: Rate) {
    if (!(rate.count > 0) || !(rate.perMs > 0))
      throw new RangeError(`bad rate ${rate.count}/${rate.perMs}ms`);
    this.intervalMs = rate.perMs / rate.count;
    // A full bucket holds `count` events: the first is free, the other count-1 are the tolerance.
    this.burstMs = this.intervalMs * (rate.count - 1);
  }

  /** Ms to wait before an event is allowed (0 = now); does not take it. */
  waitMs(nowMs: number): number {
    const tat = Math.max(this.tat, nowMs);
    const allowedAt = tat - this.burstMs;
    return allowedAt <= nowMs ? 0 : allowedAt - nowMs;
  }

  /** Takes one event if allowed now; returns 0 when taken, else the ms to wait (nothing taken). */
  take(nowMs: number): number {
    const wait = this.waitMs(nowMs);
    if (wait > 0) return wait;
    this.tat = Math.max(this.tat, nowMs) + this.intervalMs;
    return 0;
  }
}
