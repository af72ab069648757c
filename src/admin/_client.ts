/**
 * `QueueClient`: how the CLI runs a `mta queue` command, either through a running daemon's control
 * API or directly on a stopped spool.
 *
 * Owns: the HTTP client of the queue routes (_routes.ts lists them), HTTP status -> `QueueError`,
 * the local client (opening the spool read-only or locked, the offline DSN pipeline), choosing daemon
 * (its control socket, or TCP with the token: _control.ts) or local.
 * Does not own: what the commands do (_ops.ts), the routes (_routes.ts), the HTTP server
 * (observe/control.ts).
 * Invariant: both clients return the very objects `QueueOps` returns (HTTP only adds a JSON round
 * trip), so scripts see the same shapes whether a daemon runs or not.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import { errnoOf, errorMessage, fileError, formatHostPort, PermissionError } from "../lib/index.ts";
import { replyLineInput } from "../bounce/index.ts";
import { type ControlEndpoint, findDaemon, tcpEndpoint } from "./_control.ts";
import { loadClassifier } from "../feedback/index.ts";
import { DeliveryLog, Metrics, silentLogger } from "../observe/index.ts";
import { type CompactReport, Spool, type VerifyReport, verifySpool } from "../spool/index.ts";
import {
  type ActionResult,
  daemonNeeded,
  type FlushResult,
  type MessageDetail,
  type MessageList,
  QueueError,
  type QueueSummary,
  type Selector,
  type SortKey,
  type StatsResult,
} from "./_shapes.ts";
import { QueueOps } from "./_ops.ts";
import { AcceptPipeline } from "../accept/index.ts";
import type { DsnInjector } from "../disposition/index.ts";
import { makeSigner } from "../dkim/index.ts";
import type { TransferBatch, TransferReply, TransferResult } from "./_transfer.ts";
import type { ClusterSummary } from "./_fleet.ts";

export interface QueueClient {
  /** "daemon": through the control API; "local": on the spool directory. */
  readonly mode: "daemon" | "local";
  summary(opts?: { sort?: SortKey; top?: number }): Promise<QueueSummary>;
  list(sel?: Selector & { limit?: number }): Promise<MessageList>;
  show(id: string, opts?: { body?: boolean }): Promise<MessageDetail>;
  flush(target?: { destination?: string; id?: string }): Promise<FlushResult>;
  suspend(
    destination: string,
    forMs?: number,
    reason?: string,
  ): Promise<{ destination: string; untilMs: number | null }>;
  resume(destination: string): Promise<{ destination: string }>;
  bounce(sel: Selector, opts?: { yes?: boolean }): Promise<ActionResult>;
  delete(sel: Selector, opts?: { yes?: boolean }): Promise<ActionResult>;
  stats(): Promise<StatsResult>;
  verify(): Promise<VerifyReport>;
  compact(): Promise<CompactReport>;
  /** Moves the matching messages to another node of the cluster (a running daemon in a cluster only). */
  transfer(to: string, sel?: Selector): Promise<TransferResult>;
  /** Stops taking mail, moves everything to `to`, then stops the daemon (a cluster daemon only). */
  drain(to: string): Promise<TransferResult>;
  /** Every live node's summary, merged (a running daemon in a cluster only). */
  clusterSummary(opts?: { sort?: SortKey; top?: number }): Promise<ClusterSummary>;
}

// ------------------------------------------------------------------ HTTP client

function errorFromStatus(status: number, message: string): QueueError {
  const code =
    status === 400 || status === 405
      ? "usage"
      : status === 404
        ? "data"
        : status === 401 || status === 403
          ? "noperm"
          : status === 503
            ? "unavailable"
            : "runtime";
  return new QueueError(code, message, status);
}

export class HttpQueueClient implements QueueClient {
  readonly mode = "daemon";
  private readonly endpoint: ControlEndpoint;

  /** An endpoint from findDaemon, or `host`, `port` and the token: TCP (a wildcard is reached on loopback). */
  constructor(endpointOrHost: ControlEndpoint | string, port = 0, token?: string) {
    if (typeof endpointOrHost !== "string") this.endpoint = endpointOrHost;
    else {
      const h = endpointOrHost;
      const host = h === "0.0.0.0" || h === "" ? "127.0.0.1" : h === "::" ? "::1" : h;
      this.endpoint = tcpEndpoint(`http://${formatHostPort({ host, port })}`, token);
    }
  }

  private async call<T>(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    timeoutMs?: number,
  ): Promise<T> {
    let res: Response;
    try {
      res = await this.endpoint.request(
        method,
        path,
        body,
        timeoutMs !== undefined ? AbortSignal.timeout(timeoutMs) : undefined,
      );
    } catch (err) {
      throw new QueueError(
        "unavailable",
        `the daemon's control API at ${this.endpoint.where} did not answer: ${errorMessage(err)}`,
        503,
      );
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new QueueError(
        "runtime",
        `the control API answered ${res.status} with something not JSON: ${text.slice(0, 200)}`,
        502,
      );
    }
    if (!res.ok)
      throw errorFromStatus(res.status, String((json as { error?: unknown }).error ?? `HTTP ${res.status}`));
    return json as T;
  }

  /** True when an mta control API answers /healthz at this endpoint. */
  async reachable(timeoutMs = 1000): Promise<boolean> {
    try {
      const res = await this.endpoint.request("GET", "/healthz", undefined, AbortSignal.timeout(timeoutMs));
      const j = (await res.json()) as { status?: unknown };
      return typeof j.status === "string";
    } catch {
      return false;
    }
  }

  summary(opts: { sort?: SortKey; top?: number } = {}): Promise<QueueSummary> {
    const q = new URLSearchParams();
    if (opts.sort !== undefined) q.set("sort", opts.sort);
    if (opts.top !== undefined) q.set("top", String(opts.top));
    return this.call("GET", `/api/v1/queue/summary?${q}`);
  }
  list(sel: Selector & { limit?: number } = {}): Promise<MessageList> {
    const q = new URLSearchParams();
    if (sel.destination !== undefined) q.set("destination", sel.destination);
    if (sel.sender !== undefined) q.set("sender", sel.sender);
    if (sel.state !== undefined) q.set("state", sel.state);
    if (sel.olderThanMs !== undefined) q.set("older_than_ms", String(sel.olderThanMs));
    if (sel.limit !== undefined) q.set("limit", String(sel.limit));
    if (sel.id !== undefined) throw new QueueError("usage", "list takes no id; use show", 400);
    return this.call("GET", `/api/v1/queue/messages?${q}`);
  }
  show(id: string, opts: { body?: boolean } = {}): Promise<MessageDetail> {
    return this.call("GET", `/api/v1/queue/messages/${encodeURIComponent(id)}${opts.body ? "?body=1" : ""}`);
  }
  flush(target: { destination?: string; id?: string } = {}): Promise<FlushResult> {
    return this.call("POST", "/api/v1/queue/flush", target);
  }
  suspend(
    destination: string,
    forMs?: number,
    reason?: string,
  ): Promise<{ destination: string; untilMs: number | null }> {
    return this.call("POST", "/api/v1/queue/suspend", { destination, forMs, reason });
  }
  resume(destination: string): Promise<{ destination: string }> {
    return this.call("POST", "/api/v1/queue/resume", { destination });
  }
  bounce(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return this.call("POST", "/api/v1/queue/bounce", { ...sel, yes: opts.yes === true });
  }
  delete(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return this.call("POST", "/api/v1/queue/delete", { ...sel, yes: opts.yes === true });
  }
  stats(): Promise<StatsResult> {
    return this.call("GET", "/api/v1/spool/stats");
  }
  verify(): Promise<VerifyReport> {
    return this.call("GET", "/api/v1/spool/verify");
  }
  compact(): Promise<CompactReport> {
    return this.call("POST", "/api/v1/spool/compact");
  }
  transfer(to: string, sel: Selector = {}): Promise<TransferResult> {
    return this.call("POST", "/api/v1/queue/transfer", { to, ...sel });
  }
  drain(to: string): Promise<TransferResult> {
    return this.call("POST", "/api/v1/cluster/drain", { to });
  }
  clusterSummary(opts: { sort?: SortKey; top?: number } = {}): Promise<ClusterSummary> {
    const q = new URLSearchParams();
    if (opts.sort !== undefined) q.set("sort", opts.sort);
    if (opts.top !== undefined) q.set("top", String(opts.top));
    return this.call("GET", `/api/v1/cluster/summary?${q}`);
  }
  /** Node to node: one node's whole summary, with a deadline. */
  nodeSummary(timeoutMs: number): Promise<QueueSummary> {
    return this.call("GET", "/api/v1/queue/summary", undefined, timeoutMs);
  }
  /** Node to node: one batch of a transfer. */
  transferIn(batch: TransferBatch, timeoutMs: number): Promise<TransferReply> {
    return this.call("POST", "/api/v1/cluster/transfer-in", batch, timeoutMs);
  }
}

// ------------------------------------------------------------------ local client

/**
 * Runs each command on the spool directory itself: read-only commands open it without the lock
 * (safe next to a daemon whose control API is off), actions take the lock (and fail with
 * SpoolLockedError, exit 69, while a daemon holds it). Each call opens and closes the spool.
 */
export class LocalQueueClient implements QueueClient {
  readonly mode = "local";

  constructor(private readonly config: Config) {}

  private get dir(): string {
    return this.config.spool.dir;
  }

  /** The configuration's bounce rules for `show` and admin bounces (the built-in ones when they have problems). */
  private ops(o: { spool: Spool; deliveryLog?: DeliveryLog; dsn?: DsnInjector }): QueueOps {
    let classify: ((line: string) => string) | undefined;
    try {
      const c = loadClassifier(this.config);
      classify = (line) => c.classify(replyLineInput(line)).class;
    } catch {}
    return new QueueOps({ ...o, hostname: this.config.hostname, ...(classify ? { classify } : {}) });
  }

  private checkDir(): void {
    try {
      statSync(join(this.dir, "segments"));
    } catch (err) {
      if (errnoOf(err) !== "ENOENT") throw fileError(err, `spool.dir ${this.dir}`, "read");
      throw new QueueError(
        "unavailable",
        `no spool at ${this.dir} (check spool.dir in the configuration)`,
        503,
      );
    }
  }

  /** JSON round trip, so that a local answer is byte for byte what the control API would send. */
  private async readOnly<T>(fn: (ops: QueueOps) => T | Promise<T>): Promise<T> {
    this.checkDir();
    const spool = await Spool.openReadOnly({ dir: this.dir, bodyCacheBytes: 0 }).catch((err) => {
      throw fileError(err, `spool.dir ${this.dir}`, "read");
    });
    try {
      return JSON.parse(JSON.stringify(await fn(this.ops({ spool }))));
    } finally {
      await spool.close();
    }
  }

  private async locked<T>(fn: (ops: QueueOps) => T | Promise<T>, opts: { dsn?: boolean } = {}): Promise<T> {
    this.checkDir();
    const s = this.config.spool;
    const spool = await Spool.open({
      dir: s.dir,
      sync: s.sync,
      segmentSizeBytes: s.segmentSizeBytes,
      compactBelowLiveRatio: s.compactBelowLiveRatio,
      bodyCacheBytes: 0,
    }).catch((err) => {
      throw fileError(err, `spool.dir ${s.dir}`, "write");
    });
    let deliveryLog: DeliveryLog;
    try {
      deliveryLog = new DeliveryLog(this.config.log.deliveriesFile);
    } catch (err) {
      await spool.close();
      throw fileError(err, `log.deliveries ${this.config.log.deliveriesFile}`, "write");
    }
    try {
      // Admin-bounce DSNs take the path of every message: signed, appended, logged (delivered at the
      // daemon's next start). A key that cannot be loaded fails the command before anything changes.
      const signer = opts.dsn ? makeSigner(this.config) : undefined;
      const dsn = opts.dsn
        ? new AcceptPipeline({
            spool,
            deliveryLog,
            log: silentLogger(),
            metrics: new Metrics(),
            ...(signer ? { sign: (m: Uint8Array) => signer.sign(m) } : {}),
          })
        : undefined;
      return JSON.parse(JSON.stringify(await fn(this.ops({ spool, deliveryLog, ...(dsn ? { dsn } : {}) }))));
    } finally {
      deliveryLog.close();
      await spool.close();
    }
  }

  summary(opts: { sort?: SortKey; top?: number } = {}): Promise<QueueSummary> {
    return this.readOnly((o) => o.summary(opts));
  }
  list(sel: Selector & { limit?: number } = {}): Promise<MessageList> {
    return this.readOnly((o) => o.list(sel));
  }
  show(id: string, opts: { body?: boolean } = {}): Promise<MessageDetail> {
    return this.readOnly((o) => o.show(id, opts));
  }
  flush(target: { destination?: string; id?: string } = {}): Promise<FlushResult> {
    return this.locked((o) => o.flush(target));
  }
  async suspend(_destination: string): Promise<{ destination: string; untilMs: number | null }> {
    throw daemonNeeded("suspend");
  }
  async resume(_destination: string): Promise<{ destination: string }> {
    throw daemonNeeded("resume");
  }
  bounce(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return opts.yes
      ? this.locked((o) => o.bounce(sel, opts), { dsn: true })
      : this.readOnly((o) => o.bounce(sel, opts));
  }
  delete(sel: Selector, opts: { yes?: boolean } = {}): Promise<ActionResult> {
    return opts.yes ? this.locked((o) => o.delete(sel, opts)) : this.readOnly((o) => o.delete(sel, opts));
  }
  stats(): Promise<StatsResult> {
    return this.readOnly((o) => o.stats());
  }
  async verify(): Promise<VerifyReport> {
    this.checkDir();
    const report = await verifySpool(this.dir).catch((err) => {
      throw fileError(err, `spool.dir ${this.dir}`, "read");
    });
    return JSON.parse(JSON.stringify(report));
  }
  compact(): Promise<CompactReport> {
    return this.locked((o) => o.compact());
  }
  async transfer(_to: string): Promise<TransferResult> {
    throw daemonNeeded("transfer");
  }
  async drain(_to: string): Promise<TransferResult> {
    throw daemonNeeded("drain");
  }
  async clusterSummary(): Promise<ClusterSummary> {
    throw daemonNeeded("summary --cluster");
  }
}

/**
 * A client for `config`: the daemon's control API when one answers at `control.address`, else the
 * spool directory. `prefer: "local"` skips the daemon (for a spool copied elsewhere).
 */
export async function openQueueClient(
  config: Config,
  opts: { prefer?: "daemon" | "local"; timeoutMs?: number } = {},
): Promise<QueueClient> {
  if (opts.prefer !== "local") {
    const d = await findDaemon(config, opts.timeoutMs ?? 1000);
    if ("found" in d) return new HttpQueueClient(d.found);
    if ("refused" in d) throw new PermissionError(`queue: ${d.refused}`);
  }
  return new LocalQueueClient(config);
}
