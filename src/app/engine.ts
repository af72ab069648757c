/**
 * The engine: spool, scheduler, deliverer, DNS and the accept pipeline, wired from the configuration.
 * `mta serve` runs it with listeners and the control endpoint; `mta send` runs it alone.
 *
 * Owns: construction and start/stop order of the delivery side; per-destination policy lookup;
 * the delivery log writer fed by scheduler events.
 * Invariant: the spool is opened (lock taken, index recovered) before anything is accepted or
 * delivered, and closed only after the scheduler stopped.
 */
import pkg from "../../package.json" with { type: "json" };
import { isLoopback } from "../lib/index.ts";
import type { Config } from "../config/index.ts";
import { Deliverer } from "../deliverer/index.ts";
import { createResolver, type Resolver } from "../dns/index.ts";
import { type DkimSignerPool, makeSignerPool } from "../dkim/index.ts";
import { fileError, MtaError } from "../lib/index.ts";
import { DeliveryLog, type Logger, Metrics, registerProcessMetrics } from "../observe/index.ts";
import { Router } from "../route/index.ts";
import {
  type PoolMember,
  Scheduler,
  type SchedulerEvent,
  type SharedLimits,
  type SchedulerSettings,
} from "../scheduler/index.ts";
import { Spool } from "../spool/index.ts";
import { readCaBundle, type TlsPolicies } from "../tlspolicy/index.ts";
import { AcceptPipeline } from "../accept/index.ts";
import { Feedback, loadClassifier } from "../feedback/index.ts";
import { openTlsPolicies, tlsPolicyProblems } from "./tlsDelivery.ts";

export interface EngineOptions {
  log: Logger;
  metrics?: Metrics;
  /** false: open the spool and accept, but deliver nothing (the scheduler is not started). */
  deliver?: boolean;
  /** Also told every message event the delivery log gets (`mta send` counts its own results). */
  onEvent?: (e: SchedulerEvent) => void;
  /** Limits shared with the other nodes of a cluster (app/cluster.ts); absent: this node's own. */
  shared?: SharedLimits;
}

/** What a reload may change in the running scheduler. */
export function schedulerSettings(config: Config): SchedulerSettings {
  const d = config.delivery;
  return {
    retryMs: d.retryMs,
    maxAgeMs: d.maxAgeMs,
    siteBackoffMs: d.siteBackoffMs,
    delayWarningMs: d.delayWarningMs,
    maxConnections: d.maxConnections,
    maxConnectionsPerSource: d.maxConnectionsPerSource,
    maxReadyPerSite: d.maxReadyPerSite,
  };
}

/**
 * The DNS resolver of a configuration. MTA_LOOPBACK_ONLY=1 (tests, benchmarks, sandboxes): nothing
 * leaves 127.0.0.0/8 and ::1, not even a DNS question to the machine's resolver.
 */
function makeResolver(config: Config, metrics: Metrics): Resolver {
  const loopbackOnly = process.env.MTA_LOOPBACK_ONLY === "1";
  const dnsServers = loopbackOnly ? config.dns.servers.filter((s) => isLoopback(s.host)) : config.dns.servers;
  if (loopbackOnly && dnsServers.length === 0) dnsServers.push({ host: "127.0.0.1", port: 9 });
  return createResolver({
    servers: dnsServers,
    timeoutMs: config.dns.timeoutMs,
    attempts: config.dns.attempts,
    dnssec: config.dns.dnssec,
    metrics,
  });
}

/**
 * Egress pools for the scheduler: `delivery.pools` with their sources resolved; without a pool named
 * "default", every source with weight 1 becomes the default pool (none when there are no sources).
 */
export function egressPools(config: Config): { pools: Record<string, PoolMember[]>; defaultPool?: string } {
  const { sources, pools } = config.delivery;
  const source = (name: string) => {
    const s = sources[name]!;
    return { name, address: s.address, ...(s.ehloName ? { ehloName: s.ehloName } : {}) };
  };
  const out: Record<string, PoolMember[]> = {};
  for (const [name, members] of Object.entries(pools))
    out[name] = members.map((m) => ({ source: source(m.source), weight: m.weight }));
  if (!out.default && Object.keys(sources).length > 0)
    out.default = Object.keys(sources).map((name) => ({ source: source(name), weight: 1 }));
  return out.default ? { pools: out, defaultPool: "default" } : { pools: out };
}

export class Engine {
  private stopping: Promise<void> | undefined;
  private signer: DkimSignerPool | undefined;
  tlsPolicies: TlsPolicies | undefined;

  private constructor(
    public config: Config,
    readonly log: Logger,
    readonly metrics: Metrics,
    readonly spool: Spool,
    readonly deliveryLog: DeliveryLog,
    readonly deliverer: Deliverer,
    readonly router: Router,
    readonly scheduler: Scheduler,
    readonly pipeline: AcceptPipeline,
    readonly feedback: Feedback,
    private readonly delivering: boolean,
  ) {}

  static async start(config: Config, opts: EngineOptions): Promise<Engine> {
    const { log } = opts;
    const metrics = opts.metrics ?? new Metrics();
    if (!opts.metrics) registerProcessMetrics(metrics, pkg.version);
    // Before the lock (and before signing threads start): a TLS policy that cannot work is a config
    // error, not a half-start. `mta serve` has checked this already (preflight); `mta send` has not.
    const tlsProblems = tlsPolicyProblems(config);
    if (tlsProblems.length > 0)
      throw new MtaError("config", tlsProblems.map((p) => `${p.path.join(".")}: ${p.message}`).join("; "));
    const ca = readCaBundle(config.tlsPolicy.caFile || undefined);
    // Before the lock: a bad key is a config error, not a half-start.
    const signer = makeSignerPool(config, log.withTag("dkim"));
    let spool: Spool;
    try {
      spool = await Spool.open({
        dir: config.spool.dir,
        sync: config.spool.sync,
        segmentSizeBytes: config.spool.segmentSizeBytes,
        compactBelowLiveRatio: config.spool.compactBelowLiveRatio,
        bodyCacheBytes: config.spool.bodyCacheBytes,
        log: log.withTag("spool"),
        metrics,
      });
    } catch (err) {
      signer?.close();
      throw fileError(err, `spool.dir ${config.spool.dir}`, "write");
    }
    const r = spool.recovery;
    log.info("spool open", {
      dir: config.spool.dir,
      messages: r.messages,
      segments: r.segments,
      damaged: r.damaged.length,
      truncatedBytes: r.truncatedBytes,
      ms: Math.round(r.ms),
    });
    for (const d of r.damaged) log.warn("damaged spool record skipped", { ...d });
    let deliveryLog: DeliveryLog;
    try {
      deliveryLog = new DeliveryLog(config.log.deliveriesFile);
    } catch (err) {
      signer?.close();
      await spool.close();
      throw fileError(err, `log.deliveries ${config.log.deliveriesFile}`, "write");
    }
    let feedback: Feedback;
    try {
      feedback = await Feedback.open(config, { log: log.withTag("feedback"), metrics, deliveryLog });
    } catch (err) {
      signer?.close();
      deliveryLog.close();
      await spool.close();
      throw err;
    }
    const loopbackOnly = process.env.MTA_LOOPBACK_ONLY === "1";
    const resolver = makeResolver(config, metrics);
    const t = config.delivery.timeouts;
    const deliverer = new Deliverer({
      timeouts: { ...t, idleMs: config.delivery.idleTimeoutMs },
      maxMessagesPerConnection: config.delivery.domains.default.maxMessagesPerConnection,
      idleTimeoutMs: config.delivery.idleTimeoutMs,
      ...(loopbackOnly ? { allowAddress: isLoopback } : {}),
      rememberBrokenTlsMs: config.tlsPolicy.rememberBrokenTlsMs,
      log: log.withTag("deliverer"),
      metrics,
    });
    const tlsPolicies = openTlsPolicies(config, resolver, {
      ca,
      loopbackOnly,
      log: log.withTag("tlspolicy"),
      metrics,
      submit: (sub) => engine.pipeline.submit(sub),
    });
    // The routing step plans each attempt's TLS (DANE, MTA-STS, the domain's mode) with tlspolicy/.
    const router = new Router(config, resolver, tlsPolicies);
    const pipeline = new AcceptPipeline({
      spool,
      deliveryLog,
      log: log.withTag("accept"),
      metrics,
      // Always wired: a reload may add keys to a daemon that started without any.
      sign: (m) => engine.sign(m),
      feedback,
    });
    const scheduler = new Scheduler({
      spool,
      deliverer,
      router,
      // DSNs go through the accept pipeline: DKIM-signed and logged like any message.
      dsn: pipeline,
      ...(opts.shared ? { shared: opts.shared } : {}),
      // The disposition step classifies every result and feeds the suppression list.
      classifying: feedback,
      // VERP: a message with one recipient, from a sender that gets them, goes out with its return path.
      returnPath: (id, sender, recipient) => feedback.returnPath(id, sender, recipient),
      hostname: config.hostname,
      ...schedulerSettings(config),
      ...egressPools(config),
      onEvent: (e) => {
        deliveryLog.write({ ...e });
        opts.onEvent?.(e);
      },
      onDestinationEvent: (e) => deliveryLog.write({ ...e }),
      log: log.withTag("scheduler"),
      metrics,
    });
    pipeline.queue = scheduler;
    const delivering = opts.deliver !== false;
    const engine = new Engine(
      config,
      log,
      metrics,
      spool,
      deliveryLog,
      deliverer,
      router,
      scheduler,
      pipeline,
      feedback,
      delivering,
    );
    engine.signer = signer;
    engine.tlsPolicies = tlsPolicies;
    if (delivering) scheduler.start();
    return engine;
  }

  private sign(message: Uint8Array): Uint8Array | Promise<Uint8Array> {
    return this.signer ? this.signer.sign(message) : message;
  }

  /**
   * Applies a new, validated configuration to the delivery side at once: DKIM keys, routes, the
   * retry schedule and the other scheduler settings, every live site's policy; moves or reopens the
   * delivery log. The new keys are checked before anything changes: a bad one throws and nothing
   * changes. DNS and TLS-policy settings are `restart` keys (config/'s reload table): the resolver
   * and the TLS policy state are shared with tlspolicy/ and kept as they started.
   */
  reload(config: Config): void {
    loadClassifier(config); // a bad rules file throws before anything changes
    const signer = makeSignerPool(config, this.log.withTag("dkim"));
    this.feedback.reload(config);
    this.signer?.close(); // its threads finish what they hold, then end
    this.signer = signer;
    this.router.reload(config);
    this.scheduler.reload(schedulerSettings(config));
    this.config = config;
    this.deliveryLog.reopen(config.log.deliveriesFile);
  }

  async stop(graceMs = 1500): Promise<void> {
    this.stopping ??= (async () => {
      if (this.delivering) await this.scheduler.stop(graceMs);
      await this.tlsPolicies?.close();
      this.signer?.close();
      await this.deliverer.close();
      await this.feedback.close();
      this.deliveryLog.close();
      await this.spool.close();
    })();
    return this.stopping;
  }
}
