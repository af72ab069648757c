/**
 * A cluster node: several `mta serve` processes that share connection limits, rates and site state
 * through one Redis, each with its own spool (shared nothing, as KumoMTA does).
 *
 * Owns: the node's mode and its changes, the wiring of link, registry, leases, rates and state, the
 * events channel, `/healthz`'s cluster part and the `mta_cluster_*` metrics.
 * Does not own: Redis I/O (_link.ts), what each shared thing means (its own file), how the scheduler
 * uses them (it asks `leases`, `rates`, and listens to `state`).
 *
 * Modes:
 * - shared: Redis answers; every limit is cluster-wide.
 * - local: Redis is unreachable (or another running node has this node's name). Every limit becomes
 *   this node's share: limit / nodes last seen alive, at least 1. Mail keeps flowing, `/healthz`
 *   says "degraded", and nothing is charged to a message: no attempt is spent because of Redis.
 * - rejoining: Redis is back. This node has put its local leases into Redis and registered, but it
 *   stays within its share until every node it saw alive before has registered again (their leases
 *   are then in Redis too) or one lease period has passed, so that the limit holds while the nodes
 *   come back one by one.
 * Invariant: until a node seen before the outage has registered again (its leases are then in
 * Redis), this node leaves that node's share of every limit free in Redis (`reserved`), in rejoining
 * mode and after it: a node still in local mode is still using its share. A node not back within
 * RESERVE_LEASES lease periods is counted dead and its share is free again. A node that starts while
 * Redis was away does the same for the nodes its state file says were alive.
 */
import { errorMessage, MtaError } from "../lib/index.ts";
import { LATENCY_BUCKETS_S, type Logger, type Metrics } from "../observe/index.ts";
import { type ClusterMode, LeaseManager, localShare } from "./_leases.ts";
import { RedisLink } from "./_link.ts";
import { SharedRates } from "./_rates.ts";
import { NameConflictError, type NodeInfo, type QueueTotals, Registry } from "./_registry.ts";
import { keys } from "./_scripts.ts";
import { SiteSlots } from "./_slots.ts";
import { SharedLog } from "./_journal.ts";
import { SharedState } from "./_state.ts";

/** The share of a node seen before an outage stays reserved this many lease periods at most. */
const RESERVE_LEASES = 3;

export interface ClusterOptions {
  /** redis:// or rediss:// URL, credentials included. */
  url: string;
  tls?: boolean | Bun.TLSOptions;
  node: string;
  leaseMs: number;
  keyPrefix: string;
  /** A Redis command unanswered this long takes the node to local mode. */
  commandTimeoutMs: number;
  /** host:port other nodes reach this node's control API at ("" = none); asked at every heartbeat. */
  control: () => string;
  version: string;
  queueTotals: () => QueueTotals;
  /** File keeping the number of nodes last seen alive between runs ("" = none). */
  stateFile: string;
  expectedNodes: number;
  log: Logger;
  metrics?: Metrics;
  /** Heartbeat period; default min(1 s, lease / 3). */
  heartbeatMs?: number;
}

export class ClusterError extends MtaError {
  override name = "ClusterError";
}

export interface ClusterHealth {
  status: "ok" | "degraded";
  node: string;
  mode: ClusterMode;
  redis: string;
  nodesAlive: number;
  leases: number;
}

export class Cluster {
  readonly instance = crypto.randomUUID();
  readonly link: RedisLink;
  readonly registry: Registry;
  readonly leases: LeaseManager;
  readonly rates: SharedRates;
  readonly state: SharedState;
  private current: ClusterMode = "local";
  private everUp = false;
  private session = 0;
  /** Nodes alive when the link last went down (other than this one): they must register again. */
  private before: string[] = [];
  private rejoinStartedAt = 0;
  /** Redis time of the first heartbeat after the link came up. */
  private firstBeatMs = 0;
  /** Nodes not back since Redis returned, whose shares stay free in Redis, until when, and the divisor of those shares. */
  private absent = 0;
  private absentUntil = 0;
  private absentOf = 1;
  /** Leases are in Redis (after toShared): the registry may announce this node. */
  private leasesInRedis = false;
  private readonly modeListeners: ((m: ClusterMode) => void)[] = [];
  private readonly siteSlots = new Map<string, Set<SiteSlots>>();
  private closed = false;
  private readonly logs = new Map<string, SharedLog>();
  private readonly m;
  /** The divisor of every local share. */
  readonly nodesAlive: () => number;

  private constructor(readonly opts: ClusterOptions) {
    const k = keys(opts.keyPrefix);
    const log = opts.log;
    const mt = opts.metrics;
    const rtt = mt?.histogram(
      "mta_cluster_redis_seconds",
      "Redis round trips of this node",
      LATENCY_BUCKETS_S,
    );
    const failures = mt?.counter("mta_cluster_redis_failures_total", "Redis commands that got no answer");
    this.m = {
      transitions: mt?.counter("mta_cluster_mode_changes_total", "Changes of the cluster mode, by new mode"),
      lost: mt?.counter("mta_cluster_leases_lost_total", "Connection leases taken away before release"),
    };
    this.link = new RedisLink({
      url: opts.url,
      ...(opts.tls !== undefined ? { tls: opts.tls } : {}),
      commandTimeoutMs: opts.commandTimeoutMs,
      connectTimeoutMs: Math.max(opts.commandTimeoutMs, 1000),
      channels: [k.events],
      clientName: `mta:${opts.node.replace(/[^A-Za-z0-9._:-]/g, "_")}`,
      onMessage: (_channel, message) => this.message(message),
      onUp: () => {
        void this.joined();
        for (const l of this.logs.values()) l.notified();
      },
      onDown: () => this.left(),
      log,
      observe: (s, ok) => {
        rtt?.observe(s);
        if (!ok) failures?.inc();
      },
    });
    const heartbeatMs = opts.heartbeatMs ?? Math.max(100, Math.min(1000, Math.floor(opts.leaseMs / 3)));
    this.registry = new Registry(this.link, k, {
      name: opts.node,
      instance: this.instance,
      control: opts.control,
      version: opts.version,
      heartbeatMs,
      deadAfterMs: opts.leaseMs,
      queueTotals: opts.queueTotals,
      stateFile: opts.stateFile,
      expectedNodes: opts.expectedNodes,
      canBeat: () => this.leasesInRedis,
      settled: () => this.current === "shared",
      log,
    });
    // Outside shared mode the divisor never drops below the nodes seen before the outage: a node
    // that has not come back yet is still delivering at its share.
    const nodesAlive = () =>
      this.current === "shared"
        ? this.registry.aliveCount
        : Math.max(this.registry.aliveCount, this.before.length + 1);
    this.leases = new LeaseManager(this.link, k, {
      node: opts.node,
      instance: this.instance,
      leaseMs: opts.leaseMs,
      mode: () => this.current,
      nodesAlive,
      log,
      onLostLease: () => this.m.lost?.inc(),
      reserved: (limit) =>
        this.absent > 0 && performance.now() < this.absentUntil
          ? this.absent * localShare(limit, this.absentOf)
          : 0,
    });
    this.nodesAlive = nodesAlive;
    this.rates = new SharedRates(this.link, k, { mode: () => this.current, nodesAlive, log });
    this.state = new SharedState(this.link, k, { node: opts.node, instance: this.instance, log });
    this.registry.onBeat(() => this.beaten());
    this.leases.onFree((site) => {
      for (const s of this.siteSlots.get(site) ?? []) s.freed();
    });
    if (mt) {
      mt.gauge("mta_cluster_redis_up", "1 while this node reaches Redis", (set) => set(this.link.up ? 1 : 0));
      mt.gauge("mta_cluster_mode", "1 for this node's current cluster mode", (set) => {
        for (const mode of ["shared", "rejoining", "local"] as const)
          set(mode === this.current ? 1 : 0, { mode });
      });
      mt.gauge("mta_cluster_nodes_alive", "Nodes seen alive at the last heartbeat", (set) =>
        set(nodesAlive()),
      );
      mt.gauge("mta_cluster_leases_held", "Connection leases this node holds", (set) =>
        set(this.leases.held),
      );
    }
  }

  /** A node not connected yet: register listeners (state, mode) first, then `start`. */
  static create(opts: ClusterOptions): Cluster {
    return new Cluster(opts);
  }

  /** `create` then `start`. */
  static async start(opts: ClusterOptions): Promise<Cluster> {
    const c = new Cluster(opts);
    await c.start();
    return c;
  }

  /**
   * Connects (one attempt; Redis down means local-share mode, not a refusal to start), reads the
   * shared state (listeners hear every hold already in force) and registers.
   * Throws ClusterError when another running node already has this node's name.
   */
  async start(): Promise<void> {
    const opts = this.opts;
    this.leases.start();
    this.registry.start();
    await this.link.start();
    if (this.link.up) await this.joining;
    else
      opts.log.warn("Redis is unreachable at start: delivering at this node's share of every limit", {
        reason: this.link.reason,
        nodesAlive: this.registry.aliveCount,
      });
    if (this.registry.conflict) {
      const err = new ClusterError("config", `cluster: ${this.registry.conflict.message}`);
      await this.close();
      throw err;
    }
  }

  get node(): string {
    return this.opts.node;
  }

  get mode(): ClusterMode {
    return this.current;
  }

  onMode(cb: (m: ClusterMode) => void): void {
    this.modeListeners.push(cb);
  }

  /**
   * The connection slots of `site` (and of `source` x site) on this node, for the scheduler's site:
   * see SiteSlots. `onChange` is called when the count may have changed; a lease no longer needed
   * is given back after `lingerMs` (the deliverer's idle timeout: an idle connection keeps its slot),
   * and never while `inUse` (the site's connections open or closing) needs it.
   */
  slots(
    site: string,
    source: { address: string; limit: number } | undefined,
    onChange: () => void,
    lingerMs?: number,
    inUse?: () => number,
  ): SiteSlots {
    const s = new SiteSlots(
      this.leases,
      site,
      source,
      onChange,
      (x) => {
        const set = this.siteSlots.get(site);
        set?.delete(x);
        if (set?.size === 0) this.siteSlots.delete(site);
      },
      lingerMs,
      inUse,
    );
    let set = this.siteSlots.get(site);
    if (!set) this.siteSlots.set(site, (set = new Set()));
    set.add(s);
    return s;
  }

  /**
   * The shared log `name` (see _journal.ts); its listeners also hear every reconnection. `maxLen`: the
   * stream is trimmed to about that many entries.
   */
  sharedLog(name: string, maxLen: number): SharedLog {
    let l = this.logs.get(name);
    if (!l) {
      l = new SharedLog(this.link, keys(this.opts.keyPrefix), name, {
        node: this.opts.node,
        maxLen,
        log: this.opts.log,
      });
      this.logs.set(name, l);
    }
    return l;
  }

  /** Nodes alive at the last heartbeat. */
  nodes(): readonly NodeInfo[] {
    return this.registry.nodes();
  }

  health(): ClusterHealth {
    return {
      status: this.current === "local" ? "degraded" : "ok",
      node: this.opts.node,
      mode: this.current,
      redis: this.link.up ? "up" : `down: ${this.link.reason}`,
      nodesAlive: this.nodesAlive(),
      leases: this.leases.held,
    };
  }

  /** `wake`: waiting sites may ask again now (not when leaving for local mode: toLocal wakes them once the grace is set). */
  private setMode(m: ClusterMode, why: string, wake = m !== "local"): void {
    if (m === this.current) return;
    const was = this.current;
    this.current = m;
    this.m.transitions?.inc({ mode: m });
    const fields = { mode: m, was, reason: why, nodesAlive: this.registry.aliveCount };
    if (m === "local") this.opts.log.warn("cluster degraded: each limit is this node's share", fields);
    else
      this.opts.log.info(
        m === "shared" ? "cluster limits shared through Redis" : "rejoining the cluster",
        fields,
      );
    for (const cb of this.modeListeners) cb(m);
    if (wake) this.leases.wakeAll();
  }

  private joining: Promise<void> | undefined;

  private joined(): void {
    const session = ++this.session;
    this.leasesInRedis = false;
    this.joining = (async () => {
      this.rejoinStartedAt = performance.now();
      this.firstBeatMs = 0;
      // Until the first heartbeat says who is back: every other node seen before (or, at a first
      // start, every other node the state file counts) may be in local mode, using its share.
      this.absentOf = this.nodesAlive();
      this.absent = this.everUp ? this.before.length : this.absentOf - 1;
      this.absentUntil = this.rejoinStartedAt + RESERVE_LEASES * this.opts.leaseMs;
      this.setMode("rejoining", "Redis answers");
      await this.leases.toShared();
      if (session !== this.session || !this.link.up) return;
      await this.state.resync();
      if (session !== this.session || !this.link.up) return;
      this.leasesInRedis = true;
      await this.registry.beat();
    })().catch((err) => this.opts.log.error("rejoining failed", { error: errorMessage(err) }));
  }

  private left(): void {
    this.session++;
    this.leasesInRedis = false;
    this.registry.beatsSinceUp = 0;
    this.before = this.registry
      .nodes()
      .map((n) => n.name)
      .filter((n) => n !== this.opts.node);
    this.setMode("local", `Redis: ${this.link.reason}`);
    this.leases.toLocal();
  }

  /** After every heartbeat: the end of a rejoin, a name conflict, a change in the number of nodes. */
  private beaten(): void {
    if (this.registry.conflict) {
      if (this.current !== "local") {
        this.setMode("local", "another running node has this node's name");
        this.leases.toLocal();
      }
      return;
    }
    if (this.current === "local" && this.link.up) {
      this.joined(); // the name is ours again
      return;
    }
    if (this.current === "local" || !this.leasesInRedis) {
      this.leases.wakeAll();
      return;
    }
    const nodes = this.registry.nodes();
    const self = nodes.find((n) => n.instance === this.instance);
    if (!self) return;
    if (this.firstBeatMs === 0) this.firstBeatMs = self.heartbeatMs;
    const back = new Set(nodes.filter((n) => n.heartbeatMs >= this.firstBeatMs).map((n) => n.name));
    const missing = this.everUp ? this.before.filter((n) => !back.has(n)) : [];
    if (this.absent > 0) {
      // A node has registered again once its leases are in Redis: its share need not be kept free.
      const absent = this.everUp ? missing.length : Math.max(0, this.absentOf - nodes.length);
      if (absent !== this.absent && performance.now() < this.absentUntil)
        this.opts.log.info("nodes back since Redis returned", { absent, nodes: nodes.map((n) => n.name) });
      this.absent = absent;
    }
    if (this.current !== "rejoining") {
      this.leases.wakeAll();
      return;
    }
    const waited = performance.now() - this.rejoinStartedAt;
    if (missing.length === 0 || waited >= this.opts.leaseMs) {
      this.everUp = true;
      this.setMode(
        "shared",
        missing.length === 0
          ? "every node is back"
          : `waited a lease period for ${missing.join(", ")} (their shares stay free for ${
              RESERVE_LEASES - 1
            } more, unless they come back)`,
      );
    }
  }

  private message(text: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    if (msg.op === "free") this.leases.keyFreed(String(msg.key ?? ""));
    else if (msg.op === "log") this.logs.get(String(msg.name ?? ""))?.notified();
    else this.state.message(msg);
  }

  /** Graceful stop: releases every lease, leaves the registry, closes Redis. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.joining;
    await this.leases.close();
    await this.registry.deregister();
    this.registry.stop();
    await this.link.close();
  }
}

export { NameConflictError };
