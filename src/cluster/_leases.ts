/**
 * Connection-limit leases: a slot of a site's (and a source x site's) connection limit, held by one
 * node for one connection, shared by every node through Redis.
 *
 * Owns: the leases this node holds, acquiring (one script call), renewing them all every third of the
 * lease period (one script call), releasing, the local deadline of each lease, and the local share
 * (limit / nodes last seen alive, at least 1) that replaces Redis while it is unreachable.
 * Does not own: when a connection opens or ends (the scheduler asks and releases), the mode (cluster.ts).
 *
 * Why leases are short and renewed (KumoMTA sizes its leases to the sum of every SMTP timeout, so a
 * dead node holds its slots for up to ~28 minutes): a node that dies stops renewing, and its slots are
 * free in Redis within one lease period.
 *
 * Invariants:
 * - a shared lease is usable only until `sentAt + 0.9 x lease period`, where `sentAt` is when the
 *   acquisition or the last successful renewal was *sent* (local monotonic clock): Redis let it expire
 *   no earlier than that, so a node that could not renew (paused, cut off) stops using it before
 *   another node can be given the slot. The 10% covers clock-rate error and the reply's travel.
 * - in local mode a node holds at most its share of every limit; leaving shared mode keeps the
 *   oldest leases that fit the share and takes away the others (`onLost`). An acquisition Redis had
 *   not answered when it went away is never granted locally: it is asked again after the grace.
 * - a lease lost is never usable again; the holder ends its connection after the message in hand.
 */
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import { type RedisLink, RedisDownError } from "./_link.ts";
import { type Keys, LEASE_ACQUIRE, LEASE_RELEASE, LEASE_RENEW } from "./_scripts.ts";

export type ClusterMode = "shared" | "rejoining" | "local";

export interface LeaseRequest {
  /** The site's name: every node must call the same site by the same name. */
  site: string;
  /** The site's connection limit, cluster-wide. */
  limit: number;
  /** A source address and its limit for this site (per source x site), when one is bound. */
  source?: { address: string; limit: number };
}

const VALIDITY = 0.9;
/** At most this long after losing Redis a node keeps to the slots it kept (half a lease at most). */
const GROW_GRACE_MS = 2000;

export class Lease {
  lost = false;
  released = false;
  /** Called once when the lease is taken away (not on release). */
  onLost: ((reason: string) => void) | undefined;

  constructor(
    readonly site: string,
    readonly keys: readonly string[],
    readonly limits: readonly number[],
    readonly member: string,
    /** Held in Redis (true) or only in this node's local share (false). */
    public shared: boolean,
    /** performance.now() until which a shared lease may be used. */
    public validUntil: number,
    readonly seq: number,
    private readonly owner: LeaseManager,
  ) {}

  /** May a new message be sent under this lease now? */
  get usable(): boolean {
    return !this.lost && !this.released && (!this.shared || performance.now() < this.validUntil);
  }

  release(): void {
    this.owner.release(this);
  }
}

export interface LeaseOptions {
  node: string;
  instance: string;
  leaseMs: number;
  mode(): ClusterMode;
  /** The number of nodes last seen alive (the divisor of the local share). */
  nodesAlive(): number;
  log: Logger;
  onLostLease?(): void;
  /**
   * Slots of a limit that Redis cannot see but another node may be using: the shares of nodes not
   * back since Redis returned (still in local mode, or dead). Acquisitions leave them free.
   */
  reserved?(limit: number): number;
}

/** A node's share of `limit` while it cannot ask Redis: limit / nodes, at least 1. */
export function localShare(limit: number, nodes: number): number {
  return Math.max(1, Math.floor(limit / Math.max(1, nodes)));
}

export class LeaseManager {
  private readonly byKey = new Map<string, Set<Lease>>();
  private readonly all = new Set<Lease>();
  private readonly siteOfKey = new Map<string, string>();
  /** Sites refused a lease, waiting for a slot; with the time a slot may come free (0 = unknown). */
  private readonly waiting = new Map<string, number>();
  private readonly freeListeners: ((site: string) => void)[] = [];
  private renewTimer: ReturnType<typeof setInterval> | undefined;
  private expiryTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private retryAt = Number.POSITIVE_INFINITY;
  private seq = 0;
  private renewing: Promise<void> | undefined;
  /** Keys other nodes wait for, with the number of nodes sharing each (holders and waiters), as of the last renewal. */
  private readonly sharers = new Map<string, number>();
  /** Leases were in Redis at some point (a loss of Redis then starts a grace, see fitsGrace). */
  private wasShared = false;
  /** Until when a node that lost Redis keeps to the slots it kept (performance.now()), and how many per key. */
  private growAfterMs = 0;
  private keptAtLoss = new Map<string, number>();
  lostTotal = 0;
  /** Acquisitions answered by Redis, and refused ones (full). */
  acquired = 0;
  refused = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    private readonly opts: LeaseOptions,
  ) {}

  start(): void {
    this.renewTimer = setInterval(() => void this.renew(), Math.max(100, this.opts.leaseMs / 3));
    (this.renewTimer as { unref?: () => void }).unref?.();
  }

  /** Leases held, shared and local. */
  get held(): number {
    return this.all.size;
  }

  /** Leases held for a site (all sources). */
  heldFor(site: string): number {
    return this.byKey.get(this.k.lease(site))?.size ?? 0;
  }

  /**
   * The part of `site`'s `limit` this node should hold: all of it, unless other nodes were refused
   * a slot of it (seen at the last renewal); then limit / the nodes sharing it, at least 1, so that
   * a node that gets mail later is not kept out by the ones that came first.
   */
  fairShare(site: string, limit: number): number {
    const n = this.sharers.get(this.k.lease(site));
    return n === undefined || n <= 1 ? limit : localShare(limit, n);
  }

  /** Called with a site's name when a slot of it may have come free (released anywhere, expired, or a mode change). */
  onFree(cb: (site: string) => void): void {
    this.freeListeners.push(cb);
  }

  /**
   * One connection slot of `req.site` (and of its source x site), or undefined when the limit is
   * reached (the site is told through `onFree` when to try again). Never throws: with Redis
   * unreachable it answers from the local share.
   */
  async acquire(req: LeaseRequest): Promise<Lease | undefined> {
    const keys = [this.k.lease(req.site)];
    const limits = [Math.max(1, req.limit)];
    if (req.source) {
      keys.push(this.k.sourceLease(req.site, req.source.address));
      limits.push(Math.max(1, req.source.limit));
    }
    for (const key of keys) this.siteOfKey.set(key, req.site);
    const mode = this.opts.mode();
    if (mode !== "shared" && !this.fitsShare(keys, limits)) return this.refuse(req.site, 0);
    if (mode === "local" && !this.fitsGrace(keys)) {
      return this.refuse(req.site, this.growAfterMs - performance.now());
    }
    const seq = ++this.seq;
    const member = `${this.opts.node}/${this.opts.instance}/${seq}`;
    if (mode === "local")
      return this.add(new Lease(req.site, keys, limits, member, false, Infinity, seq, this));
    // Counted while Redis answers, so that concurrent requests respect the share in rejoining mode.
    const lease = this.add(new Lease(req.site, keys, limits, member, true, 0, seq, this));
    const sentAt = performance.now();
    let reply: unknown[];
    try {
      const reserved = this.opts.reserved ?? (() => 0);
      reply = (await this.link.run(LEASE_ACQUIRE, keys, [
        member,
        this.opts.leaseMs,
        ...limits.map((l) => Math.max(0, l - reserved(l))),
        this.opts.node,
      ])) as unknown[];
    } catch (err) {
      this.remove(lease);
      if (!(err instanceof RedisDownError))
        this.opts.log.error("lease script failed", { site: req.site, error: errorMessage(err) });
      // Unanswered: Redis may or may not have granted it, and the other nodes' connections beyond
      // their share are still ending. Ask again in the mode now in force (local: after the grace,
      // within the share), never grant it here: a slot taken at the moment of the loss would open a
      // connection beside theirs (the limit exceeded).
      return this.refuse(req.site, Math.max(100, this.growAfterMs - performance.now()));
    }
    if (lease.released) {
      // Released (or the manager closed) before Redis answered: give the slot back.
      if (reply[0] === 1) this.sendRelease([lease]);
      return undefined;
    }
    if (reply[0] !== 1) {
      this.remove(lease);
      this.refused++;
      const nowMs = Number(reply[2]);
      const freeAt = Number(reply[3] ?? 0);
      return this.refuse(req.site, freeAt > nowMs ? freeAt - nowMs : 0);
    }
    this.acquired++;
    lease.validUntil = sentAt + this.opts.leaseMs * VALIDITY;
    this.armExpiry();
    return lease;
  }

  private refuse(site: string, freeInMs: number): undefined {
    const at = freeInMs > 0 ? performance.now() + freeInMs + 5 : 0;
    const cur = this.waiting.get(site);
    this.waiting.set(site, cur === undefined || cur === 0 ? at : Math.min(cur, at || cur));
    if (at > 0) this.armRetry(at);
    return undefined;
  }

  /**
   * Just after Redis was lost, a node does not grow beyond the slots it kept: the nodes that held
   * more than their share end those connections after the message in hand, and growing at once
   * would open new ones beside them (the limit exceeded for a moment).
   */
  private fitsGrace(keys: readonly string[]): boolean {
    if (performance.now() >= this.growAfterMs) return true;
    return keys.every((key) => (this.byKey.get(key)?.size ?? 0) < (this.keptAtLoss.get(key) ?? 0));
  }

  private fitsShare(keys: readonly string[], limits: readonly number[]): boolean {
    const n = this.opts.nodesAlive();
    return keys.every((key, i) => (this.byKey.get(key)?.size ?? 0) < localShare(limits[i]!, n));
  }

  private add(lease: Lease): Lease {
    this.all.add(lease);
    for (const key of lease.keys) {
      let set = this.byKey.get(key);
      if (!set) this.byKey.set(key, (set = new Set()));
      set.add(lease);
    }
    return lease;
  }

  private remove(lease: Lease): void {
    this.all.delete(lease);
    for (const key of lease.keys) {
      const set = this.byKey.get(key);
      if (!set) continue;
      set.delete(lease);
      if (set.size === 0) this.byKey.delete(key);
    }
  }

  release(lease: Lease): void {
    if (lease.released) return;
    lease.released = true;
    this.remove(lease);
    if (lease.shared && !lease.lost && lease.validUntil > 0) this.sendRelease([lease]);
    // A local slot is free at once for this node's own waiting sites.
    if (!lease.shared || lease.lost) this.freed(lease.site);
  }

  private sendRelease(leases: Lease[]): void {
    void this.releaseInRedis(leases);
  }

  /** One LEASE_RELEASE for `leases`; a failure is harmless (each expires by itself). */
  private async releaseInRedis(leases: Lease[]): Promise<void> {
    const keys: string[] = [];
    const args: (string | number)[] = [this.k.events];
    for (const l of leases)
      l.keys.forEach((key, i) => {
        keys.push(key);
        args.push(l.member, l.limits[i]!);
      });
    if (!this.link.up || keys.length === 0) return;
    await this.link.run(LEASE_RELEASE, keys, args).catch(() => {});
  }

  private lose(lease: Lease, reason: string): void {
    if (lease.lost || lease.released) return;
    lease.lost = true;
    this.remove(lease);
    this.lostTotal++;
    this.opts.onLostLease?.();
    this.opts.log.warn("connection lease lost", { site: lease.site, reason });
    lease.onLost?.(reason);
    this.freed(lease.site);
  }

  /** A slot of `site` may be free: tell the listeners if the site was waiting. */
  private freed(site: string): void {
    if (!this.waiting.has(site)) return;
    this.waiting.delete(site);
    for (const cb of this.freeListeners) cb(site);
  }

  /** A pub/sub "free" message for a lease key. */
  keyFreed(key: string): void {
    const site = this.siteOfKey.get(key);
    if (site !== undefined) this.freed(site);
  }

  /** Every waiting site may try again (a mode change, a change in the number of nodes). */
  wakeAll(): void {
    for (const site of [...this.waiting.keys()]) this.freed(site);
  }

  private recheckTimer: ReturnType<typeof setTimeout> | undefined;

  private armRecheck(inMs: number): void {
    if (this.recheckTimer) return;
    this.recheckTimer = setTimeout(() => {
      this.recheckTimer = undefined;
      void this.renew().then(() => this.wakeAll());
    }, inMs);
    (this.recheckTimer as { unref?: () => void }).unref?.();
  }

  private armRetry(at: number): void {
    if (at >= this.retryAt) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryAt = at;
    this.retryTimer = setTimeout(() => this.retryDue(), Math.max(0, at - performance.now()));
    (this.retryTimer as { unref?: () => void }).unref?.();
  }

  private retryDue(): void {
    this.retryTimer = undefined;
    this.retryAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [site, at] of [...this.waiting]) {
      if (at > 0 && at <= now) this.freed(site);
      else if (at > 0) next = Math.min(next, at);
    }
    if (Number.isFinite(next)) this.armRetry(next);
  }

  /** Renews every shared lease in one script call; leases Redis did not keep are lost. */
  renew(): Promise<void> {
    this.renewing ??= this.doRenew().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private async doRenew(): Promise<void> {
    if (this.opts.mode() === "local" || !this.link.up) return;
    const leases = [...this.all].filter((l) => l.shared && l.validUntil > 0);
    if (leases.length === 0) return;
    const keys: string[] = [];
    const members: string[] = [];
    const owners: Lease[] = [];
    for (const l of leases)
      for (const key of l.keys) {
        keys.push(key);
        members.push(l.member);
        owners.push(l);
      }
    const sentAt = performance.now();
    let reply: unknown[];
    try {
      reply = (await this.link.run(LEASE_RENEW, keys, [
        this.opts.leaseMs,
        ...members,
        this.opts.node,
      ])) as unknown[];
    } catch (err) {
      if (!(err instanceof RedisDownError))
        this.opts.log.error("lease renewal failed", { error: errorMessage(err) });
      return;
    }
    const lostIdx = new Set(((reply[1] as unknown[]) ?? []).map((i) => Number(i) - 1));
    const sharing = (reply[2] as unknown[]) ?? [];
    this.sharers.clear();
    let recheckMs = Number.POSITIVE_INFINITY;
    for (let i = 0; i + 2 < sharing.length; i += 3) {
      this.sharers.set(String(sharing[i]), Number(sharing[i + 1]));
      recheckMs = Math.min(recheckMs, Number(sharing[i + 2]));
    }
    // A part held by another node (it may be dead) ends before the next renewal: look again then,
    // so that its slots are shared out as soon as Redis lets them go.
    if (recheckMs < this.opts.leaseMs / 3) this.armRecheck(recheckMs + 5);
    const lost = new Set<Lease>();
    for (const i of lostIdx) if (owners[i]) lost.add(owners[i]!);
    for (const l of leases) {
      if (lost.has(l)) this.lose(l, "Redis no longer held it (expired before it could be renewed)");
      else if (!l.lost && !l.released) l.validUntil = sentAt + this.opts.leaseMs * VALIDITY;
      // Renewed in Redis after it was given up here: free the slot there too.
      else if (!lost.has(l)) this.sendRelease([l]);
    }
    this.armExpiry();
  }

  /** One timer at the earliest local deadline: a lease not renewed by then is lost. */
  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    let first = Number.POSITIVE_INFINITY;
    for (const l of this.all) if (l.shared && l.validUntil > 0 && l.validUntil < first) first = l.validUntil;
    if (!Number.isFinite(first)) return;
    this.expiryTimer = setTimeout(() => this.expire(), Math.max(0, first - performance.now()) + 1);
    (this.expiryTimer as { unref?: () => void }).unref?.();
  }

  private expire(): void {
    this.expiryTimer = undefined;
    const now = performance.now();
    for (const l of [...this.all])
      if (l.shared && l.validUntil > 0 && l.validUntil <= now)
        this.lose(l, "not renewed within the lease period (Redis did not answer in time)");
    this.armExpiry();
  }

  /**
   * Redis is unreachable: every lease still valid becomes a local one while it fits this node's
   * share, oldest first; the rest are lost.
   */
  toLocal(): void {
    this.expire();
    const n = this.opts.nodesAlive();
    const counts = new Map<string, number>();
    const kept: Lease[] = [];
    for (const l of [...this.all].sort((a, b) => a.seq - b.seq)) {
      // Still being acquired (no answer yet): not a slot this node holds; its acquire asks again.
      if (l.shared && l.validUntil === 0) continue;
      const fits = l.keys.every((key, i) => (counts.get(key) ?? 0) < localShare(l.limits[i]!, n));
      if (!fits) {
        this.lose(l, `Redis is unreachable and this node's share of ${l.site} is smaller`);
        continue;
      }
      for (const key of l.keys) counts.set(key, (counts.get(key) ?? 0) + 1);
      kept.push(l);
    }
    for (const l of kept) {
      l.shared = false;
      l.validUntil = Infinity;
    }
    if (this.wasShared) {
      this.keptAtLoss = counts;
      this.growAfterMs = performance.now() + Math.min(this.opts.leaseMs / 2, GROW_GRACE_MS);
    }
    this.armExpiry();
    this.wakeAll();
  }

  /** Redis is back: every local lease is taken again in Redis (lost where the slot is taken). */
  async toShared(): Promise<void> {
    this.wasShared = true;
    const local = [...this.all].filter((l) => !l.shared);
    await Promise.all(
      local.map(async (l) => {
        const sentAt = performance.now();
        try {
          const reply = (await this.link.run(
            LEASE_ACQUIRE,
            [...l.keys],
            [l.member, this.opts.leaseMs, ...l.limits, this.opts.node],
          )) as unknown[];
          if (l.released || l.lost) {
            if (reply[0] === 1) this.sendRelease([l]);
            return;
          }
          if (reply[0] === 1) {
            l.shared = true;
            l.validUntil = sentAt + this.opts.leaseMs * VALIDITY;
          } else this.lose(l, "Redis is back and the other nodes hold every slot");
        } catch {
          // Redis went away again: the lease stays local.
        }
      }),
    );
    this.armExpiry();
  }

  /** Releases everything (graceful stop). */
  async close(): Promise<void> {
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.recheckTimer) clearTimeout(this.recheckTimer);
    this.renewTimer = this.expiryTimer = this.retryTimer = this.recheckTimer = undefined;
    await this.renewing;
    const shared = [...this.all].filter((l) => l.shared && !l.lost && l.validUntil > 0);
    for (const l of [...this.all]) {
      l.released = true;
      this.remove(l);
    }
    await this.releaseInRedis(shared);
  }
}
