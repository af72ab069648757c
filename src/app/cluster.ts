/**
 * The cluster in the daemon: this node's `Cluster` built from `cluster:`, what other nodes share
 * applied to the scheduler, the operator's suspensions shared, `/healthz`, and the cluster's API.
 *
 * Owns: Redis credentials and TLS files read at start, the loopback-only guard, the mapping between
 * shared holds and scheduler calls, the routes for transfers and the fleet summary.
 * Does not own: what is shared and how (cluster/), moving messages (_transfer.ts), merging (_fleet.ts).
 * The daemon imports this file only when the configuration has a `cluster:` section.
 *
 * Routes (JSON; the control API's token protects them like every other route):
 *   POST /api/v1/queue/transfer        { to, id?, destination?, sender?, state?, olderThanMs? }
 *   POST /api/v1/cluster/transfer-in   node to node: one batch (see _transfer.ts)
 *   GET  /api/v1/cluster/summary?sort=&top=   every live node's summary merged
 *   GET  /api/v1/cluster/nodes         the registry: every live node, this one's mode
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { Cluster, type NodeInfo, type StateChange } from "../cluster/index.ts";
import type { Config } from "../config/index.ts";
import { errorMessage, formatHostPort, isLoopback, parseHostPort, UnavailableError } from "../lib/index.ts";
import type { Logger, Metrics, RouteHandler } from "../observe/index.ts";
import type { SharedLimits } from "../scheduler/index.ts";
import { replyLine } from "../smtp/index.ts";
import type { Engine } from "./engine.ts";
import {
  type ClusterSummary,
  type FleetNode,
  HttpQueueClient,
  handle,
  jsonBody,
  mergeSummaries,
  num,
  optString,
  QueueError,
  type QueueOps,
  type QueueSummary,
  SORT_KEYS,
  type SortKey,
  selectorFrom,
  str,
  TransferReceiver,
  type TransferResult,
  transferOut,
} from "../admin/index.ts";
import { SUPPRESSION_STREAM_MAX_ENTRIES, SuppressionSharing } from "./_suppressShare.ts";

/** How long the fleet summary waits for each node. */
const SUMMARY_TIMEOUT_MS = 3000;
/** How long one transfer batch may take at the receiver (it syncs the spool once per batch). */
const BATCH_TIMEOUT_MS = 60_000;

export interface RedisConnection {
  url: string;
  tls?: Bun.TLSOptions;
}

/**
 * The Redis URL with the password from `password_file`, and the TLS options: files read now, before
 * the spool opens, so that a bad file stops the start at once (UnavailableError, exit 69).
 */
export function redisConnection(config: NonNullable<Config["cluster"]>): RedisConnection {
  const u = new URL(config.redisUrl);
  if (config.passwordFile) {
    let text: string;
    try {
      text = readFileSync(config.passwordFile, "utf8");
    } catch (err) {
      throw new UnavailableError(`cluster.password_file ${config.passwordFile}: ${errorMessage(err)}`);
    }
    const password = text.split(/\r?\n/)[0] ?? "";
    if (!password) throw new UnavailableError(`cluster.password_file ${config.passwordFile} is empty`);
    u.password = encodeURIComponent(password);
  }
  if (process.env.MTA_LOOPBACK_ONLY === "1" && !isLoopback(u.hostname.replace(/^\[|\]$/g, "")))
    throw new UnavailableError(
      `cluster.redis ${u.hostname} is not a loopback address, and MTA_LOOPBACK_ONLY=1 allows nothing else`,
    );
  if (!config.tls) return { url: u.toString() };
  const tls: Bun.TLSOptions = { rejectUnauthorized: config.tls.verify };
  if (config.tls.caFile) {
    try {
      tls.ca = readFileSync(config.tls.caFile, "utf8");
    } catch (err) {
      throw new UnavailableError(`cluster.tls.ca ${config.tls.caFile}: ${errorMessage(err)}`);
    }
  }
  if (config.tls.serverName) tls.serverName = config.tls.serverName;
  // TLS options mean TLS, even with redis://.
  if (u.protocol === "redis:") u.protocol = "rediss:";
  return { url: u.toString(), tls };
}

export class ClusterNode {
  private engine: Engine | undefined;
  private ops: QueueOps | undefined;
  private receiver: TransferReceiver | undefined;
  /** The suppression list kept in step with the other nodes' (_suppressShare.ts). */
  private sharing: SuppressionSharing | undefined;
  /** The control address other nodes reach this one at, once the control API is up. */
  private control = "";

  private constructor(
    readonly cluster: Cluster,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** Builds the node (nothing connects yet). */
  static create(
    config: Config,
    redis: RedisConnection,
    opts: { log: Logger; metrics: Metrics },
  ): ClusterNode {
    const c = config.cluster!;
    const { url, tls } = redis;
    let node!: ClusterNode;
    const cluster = Cluster.create({
      url,
      ...(tls ? { tls } : {}),
      node: c.node,
      leaseMs: c.leaseMs,
      keyPrefix: c.keyPrefix,
      commandTimeoutMs: c.timeoutMs,
      control: () => node.control,
      version: pkg.version,
      queueTotals: () => node.totals(),
      stateFile: join(config.spool.dir, "cluster.json"),
      expectedNodes: c.expectedNodes,
      log: opts.log,
      metrics: opts.metrics,
    });
    node = new ClusterNode(cluster, config, opts.log);
    cluster.state.onChange((change) => node.apply(change));
    return node;
  }

  /** Wires the node to the running engine and queue operations, then connects and registers. */
  async start(
    engine: Engine,
    ops: QueueOps,
    control: { host: string; port: number } | undefined,
  ): Promise<void> {
    this.engine = engine;
    this.ops = ops;
    const a = this.config.cluster!.advertise;
    if (a) this.control = formatHostPort(a);
    else if (control) this.control = formatHostPort(reachable(control));
    this.receiver = new TransferReceiver({
      node: this.cluster.node,
      instance: this.cluster.instance,
      ops,
      deliveryLog: engine.deliveryLog,
      log: this.log,
    });
    this.sharing = new SuppressionSharing(
      engine.feedback.suppression,
      this.cluster.sharedLog("suppression", SUPPRESSION_STREAM_MAX_ENTRIES),
      { node: this.cluster.node, log: this.log, metrics: engine.metrics },
    );
    this.sharing.start();
    await this.cluster.start();
    if (!this.control || !this.config.control.token)
      this.log.warn(
        "other nodes cannot call this node's control API (transfers to it, summary --cluster): it needs control.address and control.token, the same token on every node",
      );
  }

  private totals() {
    const e = this.engine;
    if (!e) return { messages: 0, recipients: 0, bytes: 0, activeConnections: 0 };
    const s = e.spool.stats();
    return {
      messages: s.messages,
      recipients: s.recipients.pending,
      bytes: s.liveBytes,
      activeConnections: e.scheduler.activeConnections(),
    };
  }

  /** A hold from another node (or found at start) applied to this node's scheduler. */
  private apply(c: StateChange): void {
    const s = this.engine?.scheduler;
    if (!s) return;
    if (c.op === "set") {
      const h = c.hold;
      if (h.kind !== "admin") {
        // A rule that fired there: the site applies it here for what is left of it.
        if (h.remainingMs !== undefined)
          s.applyRemoteRule(h.site, {
            rule: h.rule ?? h.kind,
            action: h.kind,
            reply: h.reason,
            forMs: h.remainingMs,
            node: h.node,
          });
        return;
      }
      s.suspend(h.site, h.remainingMs, `${h.reason} (from node ${h.node})`);
      this.log.info("suspension from another node", { destination: h.site, node: h.node });
    } else if (c.kinds.includes("admin")) {
      s.resume(c.site);
      this.log.info("resumption from another node", { destination: c.site, node: c.node || "?" });
    }
  }

  /**
   * What the scheduler's sites ask in a cluster (scheduler's SharedLimits): their rates from one
   * GCRA per site in Redis, their connection slots as leases (a surplus kept as long as the
   * deliverer may keep an idle connection), and the rules that fire here published to every node.
   */
  readonly limits: SharedLimits = {
    rate: (site, what, rate, wake) => this.cluster.rates.limiter(site, what, rate, wake),
    slots: (site, source, wake, inUse) => {
      const s = this.cluster.slots(site, source, wake, this.config.delivery.idleTimeoutMs + 1000, inUse);
      return {
        held: (wanted, limit) => {
          s.want(wanted, limit);
          return s.allowed();
        },
        close: () => s.close(),
      };
    },
    ruleFired: (site, rule, reply, forMs) => {
      void this.cluster.state.set({
        site,
        kind: rule.action,
        rule: rule.name,
        reason: replyLine(reply),
        remainingMs: forMs,
      });
    },
  };

  /** QueueOps' hook: the operator's suspend and resume go to every node. */
  readonly onAdmin = {
    suspended: (destination: string, forMs: number | undefined, reason: string) => {
      void this.cluster.state.set({
        site: destination,
        kind: "admin",
        reason,
        ...(forMs !== undefined ? { remainingMs: forMs } : {}),
      });
    },
    resumed: (destination: string) => {
      void this.cluster.state.clear(destination);
    },
  };

  health(): { ok: boolean; status?: string; detail: Record<string, unknown> } {
    const h = this.cluster.health();
    const suppression = this.sharing?.health();
    return { ok: true, status: h.status, detail: { cluster: suppression ? { ...h, suppression } : h } };
  }

  /** Throws the QueueError a transfer to `name` would meet first (itself, unknown, no control API). */
  checkPeer(name: string): void {
    if (!name) throw new QueueError("usage", "drain needs a destination node: to", 400);
    this.peer(name);
  }

  private peer(name: string): NodeInfo {
    if (name === this.cluster.node)
      throw new QueueError("usage", `${name} is this node: a node cannot transfer to itself`, 400);
    const n = this.cluster.nodes().find((x) => x.name === name);
    if (!n) {
      const alive = this.cluster.nodes().map((x) => x.name);
      throw new QueueError(
        "unavailable",
        this.cluster.mode === "local"
          ? `cannot find node ${name}: Redis is unreachable (${this.cluster.link.reason})`
          : `no live node named ${name} (alive: ${alive.join(", ") || "none"})`,
        503,
      );
    }
    if (!n.control) throw new QueueError("unavailable", `node ${name} has no control API to send to`, 503);
    return n;
  }

  private client(n: NodeInfo): HttpQueueClient {
    const hp = parseHostPort(n.control)!;
    return new HttpQueueClient(hp.host, hp.port, this.config.control.token);
  }

  async transfer(to: string, sel: ReturnType<typeof selectorFrom>): Promise<TransferResult> {
    if (!to) throw new QueueError("usage", "transfer needs a destination node: to", 400);
    const n = this.peer(to);
    const http = this.client(n);
    return transferOut(
      this.ops!,
      sel,
      { node: n.name, send: (b) => http.transferIn(b, BATCH_TIMEOUT_MS) },
      {
        from: { node: this.cluster.node, instance: this.cluster.instance },
        deliveryLog: this.engine!.deliveryLog,
        log: this.log,
      },
    );
  }

  async summary(sort: SortKey, top: number | undefined): Promise<ClusterSummary> {
    if (!SORT_KEYS.includes(sort))
      throw new QueueError("usage", `sort must be one of ${SORT_KEYS.join(", ")}`, 400);
    if (top !== undefined && (!Number.isInteger(top) || top < 0))
      throw new QueueError("usage", "top must be a whole number", 400);
    const live = [...this.cluster.nodes()];
    if (!live.some((n) => n.instance === this.cluster.instance))
      live.unshift({
        name: this.cluster.node,
        instance: this.cluster.instance,
        owner: this.cluster.registry.owner,
        control: this.control,
        version: pkg.version,
        startedMs: 0,
        queue: this.totals(),
        heartbeatMs: 0,
      });
    const answers = await Promise.all(
      live.map(async (n): Promise<{ node: FleetNode; summary?: QueueSummary }> => {
        const node: FleetNode = { name: n.name, control: n.control, version: n.version, ok: true };
        try {
          const summary =
            n.instance === this.cluster.instance
              ? this.ops!.summary({})
              : await this.client(n).nodeSummary(SUMMARY_TIMEOUT_MS);
          node.totals = summary.totals;
          return { node, summary };
        } catch (err) {
          node.ok = false;
          node.error = n.control ? errorMessage(err) : "no control API";
          return { node };
        }
      }),
    );
    const parts = answers.flatMap((a) => (a.summary ? [{ node: a.node.name, summary: a.summary }] : []));
    const nodes = answers.map((a) => a.node).sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    const merged = mergeSummaries(parts, nodes, sort, top, Date.now());
    return this.cluster.mode === "local"
      ? {
          ...merged,
          note: `Redis is unreachable (${this.cluster.link.reason}): these are the nodes last seen alive`,
        }
      : merged;
  }

  routes(): Record<string, RouteHandler> {
    return {
      "POST /api/v1/queue/transfer": handle(async (req) => {
        const b = await jsonBody(req);
        return this.transfer(optString(b, "to") ?? "", selectorFrom(b));
      }),
      "POST /api/v1/cluster/transfer-in": handle(async (req) => this.receiver!.receive(await jsonBody(req))),
      "GET /api/v1/cluster/summary": handle((_req, url) =>
        this.summary((str(url, "sort") ?? "messages") as SortKey, num(url, "top")),
      ),
      "GET /api/v1/cluster/nodes": handle(() => ({ ...this.cluster.health(), nodes: this.cluster.nodes() })),
    };
  }

  /** Before the suppression list closes: no more changes are read or published. */
  async stopSharing(): Promise<void> {
    await this.sharing?.stop();
  }

  /** After the scheduler stopped: releases every lease, leaves the registry. */
  async stop(): Promise<void> {
    await this.sharing?.stop();
    await this.cluster.close();
  }
}

/** A wildcard bind is reached on loopback by the other nodes of this machine. */
function reachable(a: { host: string; port: number }): { host: string; port: number } {
  return a.host === "0.0.0.0" || a.host === ""
    ? { host: "127.0.0.1", port: a.port }
    : a.host === "::"
      ? { host: "::1", port: a.port }
      : a;
}
