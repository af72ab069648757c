/**
 * The node registry: every node's heartbeat, and the list of nodes alive.
 *
 * Owns: this node's registration in Redis (name, instance, control address, version, queue totals),
 * the heartbeat timer, the last list of live nodes seen, and a small state file next to the spool:
 * the number of nodes last seen alive (so that a node that starts while Redis is down still knows
 * its share) and the spool's identity (`owner`: a node restarted after kill -9 takes its name back
 * at once from the dead instance instead of waiting for its registration to expire).
 * Does not own: what the share is used for (leases.ts, rates.ts).
 * Invariants: a name belongs to one running instance: a heartbeat that finds another live instance
 * under this node's name is refused (the node stays in local-share mode and says so); a node not
 * heard from within `deadAfterMs` is not counted alive.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import { type RedisLink, RedisDownError } from "./_link.ts";
import { DEREGISTER, HEARTBEAT, type Keys } from "./_scripts.ts";

export interface QueueTotals {
  messages: number;
  recipients: number;
  bytes: number;
  activeConnections: number;
}

export interface NodeInfo {
  name: string;
  instance: string;
  /** The identity of its spool (a restarted node has a new instance, the same owner). */
  owner: string;
  /** host:port of its control API ("" = none). */
  control: string;
  version: string;
  startedMs: number;
  queue: QueueTotals;
  /** Redis time of its last heartbeat. */
  heartbeatMs: number;
}

export interface RegistryOptions {
  name: string;
  instance: string;
  control: () => string;
  version: string;
  heartbeatMs: number;
  deadAfterMs: number;
  queueTotals: () => QueueTotals;
  /** Where the number of nodes last seen alive is kept between runs; "" = nowhere. */
  stateFile: string;
  /** The number of nodes assumed when none was ever seen (first start with Redis down). */
  expectedNodes: number;
  /** Whether this node may announce itself now (its leases are in Redis). */
  canBeat(): boolean;
  /** Whether the count seen is the fleet's (shared mode, not in the middle of a rejoin). */
  settled(): boolean;
  log: Logger;
}

export class NameConflictError extends Error {
  override name = "NameConflictError";
  constructor(
    readonly node: string,
    readonly holder: Partial<NodeInfo>,
  ) {
    super(
      `node name "${node}" is in use by another running node (control ${holder.control || "off"}, started ${
        holder.startedMs ? new Date(holder.startedMs).toISOString() : "?"
      }); give each node its own cluster.node`,
    );
  }
}

export class Registry {
  private timer: ReturnType<typeof setInterval> | undefined;
  private alive: NodeInfo[] = [];
  private lastCount: number;
  /** The spool's identity (from the state file), or this instance's when there is none. */
  readonly owner: string;
  /** The count in the state file. */
  private written: number;
  private startedMs = Date.now();
  /** Set while another instance holds this node's name. */
  conflict: NameConflictError | undefined;
  /** Heartbeats answered since the link last came up (the first one ends a rejoin). */
  beatsSinceUp = 0;
  private beating: Promise<void> | undefined;
  private listeners: (() => void)[] = [];

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    private readonly opts: RegistryOptions,
  ) {
    const state = readState(opts.stateFile);
    this.lastCount = Math.max(1, state.nodesAlive ?? opts.expectedNodes);
    this.owner = state.owner ?? (opts.stateFile ? crypto.randomUUID() : opts.instance);
    this.written = this.lastCount;
    if (state.owner === undefined)
      writeState(opts.stateFile, { nodesAlive: this.lastCount, owner: this.owner }, opts.log);
  }

  /** Nodes alive at the last heartbeat (this one included once registered). */
  nodes(): readonly NodeInfo[] {
    return this.alive;
  }

  /** The number of nodes last seen alive, at least 1: the divisor of every local share. */
  get aliveCount(): number {
    return this.lastCount;
  }

  /** Called after every heartbeat answer. */
  onBeat(cb: () => void): void {
    this.listeners.push(cb);
  }

  start(): void {
    this.timer = setInterval(() => void this.beat(), this.opts.heartbeatMs);
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** One heartbeat now (at most one in flight); resolves when answered or failed. */
  beat(): Promise<void> {
    this.beating ??= this.doBeat().finally(() => {
      this.beating = undefined;
    });
    return this.beating;
  }

  private async doBeat(): Promise<void> {
    if (!this.link.up || !this.opts.canBeat()) return;
    const o = this.opts;
    const me = {
      name: o.name,
      instance: o.instance,
      owner: this.owner,
      control: o.control(),
      version: o.version,
      startedMs: this.startedMs,
      queue: o.queueTotals(),
    };
    let reply: unknown[];
    try {
      reply = (await this.link.run(
        HEARTBEAT,
        [this.k.node(o.name), this.k.nodes],
        [o.name, o.instance, JSON.stringify(me), o.deadAfterMs, this.k.node(""), this.owner],
      )) as unknown[];
    } catch (err) {
      if (!(err instanceof RedisDownError)) o.log.error("heartbeat failed", { error: errorMessage(err) });
      return;
    }
    if (reply[0] !== 1) {
      const holder = parseJson(reply[2]) as Partial<NodeInfo>;
      if (!this.conflict) {
        this.conflict = new NameConflictError(o.name, holder);
        o.log.error(this.conflict.message);
      }
      for (const cb of this.listeners) cb();
      return;
    }
    if (this.conflict) {
      o.log.info("node name is ours again", { node: o.name });
      this.conflict = undefined;
    }
    const nodes: NodeInfo[] = [];
    for (const j of reply.slice(2)) {
      const n = parseJson(j) as NodeInfo | undefined;
      if (n && typeof n.name === "string") nodes.push(n);
    }
    this.alive = nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.beatsSinceUp++;
    const count = Math.max(1, nodes.length);
    if (count !== this.lastCount) {
      o.log.info("nodes alive", { count, nodes: nodes.map((n) => n.name) });
      this.lastCount = count;
    }
    for (const cb of this.listeners) cb();
    // Kept for a start with Redis down; not while rejoining, when the others may not be back yet.
    if (this.opts.settled() && count !== this.written) {
      this.written = count;
      writeState(o.stateFile, { nodesAlive: count, owner: this.owner }, o.log);
    }
  }

  /** Removes this node's registration (graceful stop); best effort. */
  async deregister(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.beating;
    if (!this.link.up) return;
    try {
      await this.link.run(
        DEREGISTER,
        [this.k.node(this.opts.name), this.k.nodes],
        [this.opts.name, this.opts.instance],
      );
    } catch {}
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

function parseJson(x: unknown): unknown {
  if (typeof x !== "string") return undefined;
  try {
    return JSON.parse(x);
  } catch {
    return undefined;
  }
}

function readState(file: string): { nodesAlive?: number; owner?: string } {
  if (!file) return {};
  try {
    const j = JSON.parse(readFileSync(file, "utf8")) as { nodesAlive?: unknown; owner?: unknown };
    const n = j.nodesAlive;
    return {
      ...(typeof n === "number" && Number.isInteger(n) && n >= 1 ? { nodesAlive: n } : {}),
      ...(typeof j.owner === "string" && j.owner ? { owner: j.owner } : {}),
    };
  } catch {
    return {};
  }
}

function writeState(file: string, state: { nodesAlive: number; owner: string }, log: Logger): void {
  if (!file) return;
  try {
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ ...state, atMs: Date.now() })}\n`, { mode: 0o600 });
    renameSync(tmp, file);
  } catch (err) {
    log.warn("cannot write the cluster state file", { file, error: errorMessage(err) });
  }
}
