/**
 * Message and connection rates shared by every node: GCRA evaluated in Redis on Redis's clock.
 *
 * Owns: `SharedRates.take` (one event of a site's rate, or how long to wait), and the local GCRA
 * at rate / nodes that stands in while Redis is unreachable.
 * Does not own: what is rate-limited and when to ask (the scheduler), the mode (cluster.ts).
 * Invariant: the shared and the local limiter follow the same rule as scheduler/'s RateLimiter:
 * "N/period" allows a burst of N, then one every period/N; in Redis the theoretical arrival time
 * lives under the site's key, so every node draws from one bucket whatever its own clock says.
 */
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import type { ClusterMode } from "./_leases.ts";
import { type RedisLink, RedisDownError } from "./_link.ts";
import { GCRA_TAKE, type Keys } from "./_scripts.ts";

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
  take(nowMs: number): number {
    const tat = Math.max(this.tat, nowMs);
    const allowedAt = tat - this.toleranceMs;
    if (allowedAt > nowMs) return allowedAt - nowMs;
    this.tat = tat + this.intervalMs;
    return 0;
  }
}

export class SharedRates {
  private readonly local = new Map<string, { spec: string; gcra: LocalGcra }>();
  /** Events decided by Redis, and by the local share. */
  sharedTakes = 0;
  localTakes = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    private readonly opts: { mode(): ClusterMode; nodesAlive(): number; log: Logger },
  ) {}

  /**
   * Takes one event of `site`'s message or connection rate: 0 when taken, else the ms to wait
   * (nothing taken). Never throws: with Redis unreachable this node takes from its share.
   */
  async take(site: string, what: "msg" | "conn", rate: RateSpec): Promise<number> {
    if (!(rate.count > 0) || !(rate.perMs > 0)) return 0;
    const key = this.k.gcra(site, what);
    if (this.opts.mode() !== "local") {
      const intervalMs = rate.perMs / rate.count;
      try {
        const reply = (await this.link.run(
          GCRA_TAKE,
          [key],
          [intervalMs, intervalMs * (rate.count - 1)],
        )) as [number, string];
        this.sharedTakes++;
        return reply[0] === 1 ? 0 : Math.max(0, Number(reply[1]));
      } catch (err) {
        if (!(err instanceof RedisDownError))
          this.opts.log.error("rate script failed", { site, error: errorMessage(err) });
      }
    }
    this.localTakes++;
    return this.localGcra(key, rate).take(performance.now());
  }

  private localGcra(key: string, rate: RateSpec): LocalGcra {
    const n = Math.max(1, this.opts.nodesAlive());
    const spec = `${rate.count}/${rate.perMs}/${n}`;
    const cur = this.local.get(key);
    if (cur && cur.spec === spec) return cur.gcra;
    // This node's share of the rate: count / nodes per period (a share below one event per period
    // is one event per nodes x period).
    const gcra = new LocalGcra(rate.count / n, rate.perMs);
    this.local.set(key, { spec, gcra });
    return gcra;
  }
}
