/**
 * The concurrency window of one destination, after Postfix's slow start.
 *
 * Owns: how many connections a destination may use right now, between 1 and its limit.
 * Does not own: the limit itself (policy), suspension of a dead site (scheduler.ts).
 * Invariants: 1 <= size <= limit; a success opens it by one (up to the limit), a connection failure
 * halves it (rounding down, never below 1); `reset` goes back to the initial size after a suspension.
 */

export class ConcurrencyWindow {
  private current: number;

  constructor(
    private limit: number,
    private readonly initial = 2,
  ) {
    this.current = this.clamp(initial);
  }

  get size(): number {
    return this.current;
  }

  get maximum(): number {
    return this.limit;
  }

  /** A new limit (policy change); the window shrinks into it if needed. */
  setLimit(limit: number): void {
    this.limit = Math.max(1, Math.floor(limit));
    this.current = this.clamp(this.current);
  }

  onSuccess(): void {
    this.current = this.clamp(this.current + 1);
  }

  onConnectionFailure(): void {
    this.current = this.clamp(Math.floor(this.current / 2));
  }

  reset(): void {
    this.current = this.clamp(this.initial);
  }

  private clamp(n: number): number {
    return Math.max(1, Math.min(this.limit, n));
  }
}
