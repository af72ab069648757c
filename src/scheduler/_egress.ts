/**
 * Egress: the pools of local source addresses and which source the next connection to a site uses.
 *
 * Owns: the pool list (index 0 = no source: the kernel's choice), pool lookup by name, the choice of
 * source per connection (smooth weighted round-robin over the members under both caps), and the
 * count of connections per source address across all sites.
 * Does not own: the per-site counts and round-robin state (kept on the site), starting connections.
 * Invariants: no site has more than its `maxConnections` on one source (in a cluster: nor more than
 * the slots of source x site it holds, `Site.sourceCap`); no source more than `maxPerSource` in all.
 */
import type { DestinationPolicy } from "../route/index.ts";
import type { Site } from "./_site.ts";
import type { EgressSource, PoolMember } from "./_types.ts";

export class Egress {
  /** Pool 0 is "no source" (the kernel's choice); then the configured pools in order. */
  private readonly list: { name: string; members: readonly PoolMember[] }[] = [{ name: "", members: [] }];
  private readonly index = new Map<string, number>();
  /** Connection workers per source address, all sites together. */
  private readonly active = new Map<string, number>();

  constructor(
    pools: Record<string, readonly PoolMember[]> | undefined,
    private readonly defaultPool: string | undefined,
    public maxPerSource: number,
  ) {
    for (const [name, members] of Object.entries(pools ?? {})) {
      for (const m of members)
        if (!(m.weight > 0)) throw new RangeError(`pool ${name}: weight of ${m.source.name} must be > 0`);
      if (this.list.length >= 0xfffe) throw new RangeError("too many pools");
      this.index.set(name, this.list.length);
      this.list.push({ name, members });
    }
  }

  /** The index of a pool by name; undefined for an unknown name. */
  indexOf(name: string): number | undefined {
    return this.index.get(name);
  }

  /** The pool of a site's policy (or the default pool); 0 = no source. */
  poolOf(policy: DestinationPolicy): number {
    const name = policy.pool ?? this.defaultPool;
    return name === undefined ? 0 : (this.index.get(name) ?? 0);
  }

  /** Sources a site's connections are spread over (its `maxConnections` applies to each). */
  sourcesOf(policy: DestinationPolicy): number {
    return Math.max(1, this.list[this.poolOf(policy)]!.members.length);
  }

  /**
   * A source for one more connection from `pool` to `site`: null = bind none (the kernel's choice);
   * undefined = every member is at a cap.
   */
  pick(site: Site, pool: number): EgressSource | null | undefined {
    const members = this.list[pool]!.members;
    const cap = Math.max(1, site.policy.maxConnections);
    if (members.length === 0) return (site.bySource.get("") ?? 0) < cap ? null : undefined;
    let cur = site.wrr.get(pool);
    if (!cur || cur.length !== members.length) site.wrr.set(pool, (cur = new Array(members.length).fill(0)));
    let best = -1;
    let total = 0;
    for (let i = 0; i < members.length; i++) {
      const m = members[i]!;
      const a = m.source.address;
      if ((this.active.get(a) ?? 0) >= this.maxPerSource) continue;
      if ((site.bySource.get(a) ?? 0) >= site.sourceCap(a, cap)) continue;
      cur[i]! += m.weight;
      total += m.weight;
      if (best < 0 || cur[i]! > cur[best]!) best = i;
    }
    if (best < 0) return undefined;
    cur[best]! -= total;
    return members[best]!.source;
  }

  acquire(site: Site, source: EgressSource | null): void {
    const key = source?.address ?? "";
    site.bySource.set(key, (site.bySource.get(key) ?? 0) + 1);
    if (source) this.active.set(key, (this.active.get(key) ?? 0) + 1);
  }

  release(site: Site, source: EgressSource | null): void {
    const key = source?.address ?? "";
    const left = (site.bySource.get(key) ?? 1) - 1;
    if (left > 0) site.bySource.set(key, left);
    else site.bySource.delete(key);
    if (source) {
      const all = (this.active.get(key) ?? 1) - 1;
      if (all > 0) this.active.set(key, all);
      else this.active.delete(key);
    }
  }

  forEachSource(cb: (address: string, connections: number) => void): void {
    for (const [a, n] of this.active) cb(a, n);
  }
}
