/**
 * Message and connection rates shared by every node: GCRA evaluated in Redis on Redis's clock.
 *
 * Owns: `SharedRates.takeMany` (events of a site's rate, or how long to wait), the local GCRA at
 * rate / nodes that stands in while Redis is unreachable, and `SharedRateLimiter`: the synchronous
 * face the scheduler's site asks (`waitMs`, `take`, like its own RateLimiter), backed by a small
 * reserve of events granted by Redis ahead of need, so that no message waits for a round trip
 * while the reserve lasts.
 * Does not own: what is rate-limited and when to ask (the scheduler), the mode (cluster.ts).
 * Invariants: the shared and the local limiter follow the same rule as scheduler/'s RateLimiter:
 * "N/period" allows a burst of N, then one every period/N; in Redis the theoretical arrival time
 * lives under the site's key, so every node draws from one bucket whatever its own clock says. A
 * reserve only holds events Redis already granted (the bucket is charged when they are granted),
 * and drops them unused after `RESERVE_TTL_MS`: a reserve can make a node send less, never more.
 */
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import type { ClusterMode } from "./_leases.ts";
import { type RedisLink, RedisDownError } from "./_link.ts";
import { GCRA_TAKE, type Keys, type RateKind } from "./_scripts.ts";

export interface RateSpec {
  count: number;
  perMs: number;
}

/** GCRA on the local monotonic clock: the fallback while Redis is unreachable. */
class LocalGcra {
  private tat = Number.NEGATIVE_INFINITY;
  private readonly intervalMs: number;
  private readonly toleranceMs: number;
  constructor(count: number, perMs: number) {
    this.intervalMs = perMs / count;
    this.toleranceMs = Math.max(0, this.intervalMs * (count - 1));
  }
  /** Up to `n` events now: how many were taken, or the wait when none could be. */
  takeMany(nowMs: number, n: number): { granted: number; waitMs: number } {
    const tat = Math.max(this.tat, nowMs);
    const k = Math.min(n, Math.floor((nowMs + this.toleranceMs - tat) / this.intervalMs) + 1);
    if (k < 1) return { granted: 0, waitMs: tat - this.toleranceMs - nowMs };
    this.tat = tat + k * this.intervalMs;
    return { granted: k, waitMs: 0 };
  }
}

export class SharedRates {
  private readonly local = new Map<string, { spec: string; gcra: LocalGcra }>();
  /** Requests decided by Redis, and by the local share. */
  sharedTakes = 0;
  localTakes = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    private readonly opts: { mode(): ClusterMode; nodesAlive(): number; log: Logger },
  ) {}

  /** One event: 0 when taken, else the ms to wait (nothing taken). */
  async take(site: string, what: RateKind, rate: RateSpec): Promise<number> {
    return (await this.takeMany(site, what, rate, 1)).waitMs;
  }

  /**
   * Up to `n` events of `site`'s message or connection rate at once: how many were granted, or the
   * ms to wait when none was. Never throws: with Redis unreachable this node takes from its share.
   */
  async takeMany(
    site: string,
    what: RateKind,
    rate: RateSpec,
    n: number,
  ): Promise<{ granted: number; waitMs: number }> {
    if (!(rate.count > 0) || !(rate.perMs > 0)) return { granted: n, waitMs: 0 };
    const key = this.k.gcra(site, what);
    if (this.opts.mode() !== "local") {
      const intervalMs = rate.perMs / rate.count;
      try {
        const reply = (await this.link.run(
          GCRA_TAKE,
          [key],
          [intervalMs, intervalMs * (rate.count - 1), n],
        )) as [number, string];
        this.sharedTakes++;
        const granted = Number(reply[0]);
        return granted > 0 ? { granted, waitMs: 0 } : { granted: 0, waitMs: Math.max(0, Number(reply[1])) };
      } catch (err) {
        if (!(err instanceof RedisDownError))
          this.opts.log.error("rate script failed", { site, error: errorMessage(err) });
      }
    }
    this.localTakes++;
    return this.localGcra(key, rate).takeMany(performance.now(), n);
  }

  private localGcra(key: string, rate: RateSpec): LocalGcra {
    const n = Math.max(1, this.opts.nodesAlive());
    const spec = `${rate.count}/${rate.perMs}/${n}`;
    const cur = this.local.get(key);
    if (cur && cur.spec === spec) return cur.gcra;
    // This node's share of the rate: count / nodes per period.
    const gcra = new LocalGcra(rate.count / n, rate.perMs);
    this.local.set(key, { spec, gcra });
    return gcra;
  }

  /** A synchronous limiter for one site's rate, for the scheduler (see SharedRateLimiter). */
  limiter(site: string, what: RateKind, rate: RateSpec, onReady: () => void): SharedRateLimiter {
    return new SharedRateLimiter(this, site, what, rate, this.opts.nodesAlive, onReady);
  }
}

/** Events granted but not used within this long are dropped (they were charged to the bucket). */
const RESERVE_TTL_MS = 1000;
/** The reserve aims at this much of the node's share of the rate. */
const RESERVE_WINDOW_MS = 50;
const MAX_BATCH = 64;
/** What `waitMs` answers while Redis has not answered yet. */
const POLL_MS = 5;

export class SharedRateLimiter {
  private reserve = 0;
  private grantedAt = 0;
  private inFlight = false;
  /** performance.now() before which asking Redis again is pointless (it named a wait). */
  private notBefore = 0;
  private readonly batch: () => number;

  constructor(
    private readonly rates: SharedRates,
    readonly site: string,
    readonly what: RateKind,
    readonly rate: RateSpec,
    nodesAlive: () => number,
    /** Called when events were granted after a wait: the site may go on. */
    private readonly onReady: () => void,
  ) {
    // Enough for RESERVE_WINDOW_MS of this node's share, 1 .. MAX_BATCH: at 50/s over 3 nodes that is
    // one event a request (no reserve at all), at 10,000/s it is 64.
    this.batch = () =>
      Math.max(
        1,
        Math.min(
          MAX_BATCH,
          Math.floor((rate.count * RESERVE_WINDOW_MS) / rate.perMs / Math.max(1, nodesAlive())),
        ),
      );
  }

  /** Ms until an event may be taken (0 = now); takes nothing, but asks Redis ahead when the reserve is empty. */
  waitMs(_nowMs?: number): number {
    const now = performance.now();
    if (this.reserve > 0 && now - this.grantedAt > RESERVE_TTL_MS) this.reserve = 0;
    if (this.reserve > 0) return 0;
    this.refill(now);
    return Math.max(POLL_MS, this.notBefore - now);
  }

  /** Takes an event when one is in the reserve (0), else returns the wait (see waitMs). */
  take(nowMs?: number): number {
    const wait = this.waitMs(nowMs);
    if (wait > 0) return wait;
    this.reserve--;
    // Ask for more before the reserve runs dry, so that the next message does not wait.
    if (this.reserve === 0) this.refill(performance.now());
    return 0;
  }

  private refill(now: number): void {
    if (this.inFlight || now < this.notBefore) return;
    this.inFlight = true;
    const wasEmpty = this.reserve === 0;
    this.rates.takeMany(this.site, this.what, this.rate, this.batch()).then(
      ({ granted, waitMs }) => {
        this.inFlight = false;
        const t = performance.now();
        if (granted > 0) {
          this.reserve += granted;
          this.grantedAt = t;
          if (wasEmpty) this.onReady();
        } else {
          this.notBefore = t + waitMs;
          // Ask again when Redis said an event would be free.
          setTimeout(() => this.onReady(), Math.ceil(waitMs) + 1);
        }
      },
      () => {
        this.inFlight = false;
      },
    );
  }
}
