/**
 * The daemon: the engine plus SMTP listeners and the HTTP control endpoint; runs until a signal.
 *
 * Owns: start order (engine (spool, scheduler) → control → listeners), stop order (listeners drain
 * first, then the scheduler, then the spool), SIGHUP reload (every `live` key of config/'s RELOAD
 * table at once; `restart` keys are reported against what runs), signal handling.
 * Invariant: the spool lock is held for the whole life of the daemon; nothing is acknowledged before
 * the spool is open, and the spool closes only after every listener and delivery has stopped.
 */
import { readFileSync, statSync } from "node:fs";
import pkg from "../../package.json" with { type: "json" };
import {
  type Config,
  ConfigError,
  inlineSecretPaths,
  type ListenerConfig,
  loadConfig,
  type RawConfig,
  resolveSecrets,
  restartNeeded,
} from "../config/index.ts";
import { EXIT, errnoOf, errnoText, errorMessage, formatHostPort, UnavailableError } from "../lib/index.ts";
import {
  type ControlServer,
  createLogger,
  jsonError,
  Metrics,
  registerProcessMetrics,
  type Logger,
  setLogLevel,
  startControlServer,
} from "../observe/index.ts";
import { type Listener, type ListenerOptions, startListener } from "../listener/index.ts";
import type { ClusterNode } from "./cluster.ts";
import { Engine } from "./engine.ts";
import type { WebhookDispatcher } from "../webhook/index.ts";
import { startProblems } from "./preflight.ts";
import { startWebhooks } from "./webhooks.ts";
import { injectHandler, injectLimitBytes, MaildropPickup } from "../accept/index.ts";
import {
  handle,
  jsonBody,
  optString,
  QueueError,
  QueueOps,
  queueRoutes,
  suppressionRoutes,
  type TransferResult,
} from "../admin/index.ts";
import { BounceInbox } from "../feedback/index.ts";

export interface DaemonOptions {
  log: Logger;
  /** The validated file as written (for `restartNeeded` on reload); default: no restart keys known. */
  raw?: RawConfig;
}

export function listenerOptions(l: ListenerConfig, hostname: string): ListenerOptions {
  const opts: ListenerOptions = {
    name: l.name,
    host: l.address.host,
    port: l.address.port,
    hostname,
    relayFrom: l.relayFrom,
    auth: l.auth,
    users: l.users,
    allowPlaintextAuth: l.allowPlaintextAuth,
    submission: l.submission,
    maxMessageBytes: l.maxMessageBytes,
    maxRecipients: l.maxRecipients,
    maxLineBytes: l.maxLineBytes,
    maxErrors: l.maxErrors,
    maxJunkCommands: l.maxJunkCommands,
    commandTimeoutMs: l.commandTimeoutMs,
    dataTimeoutMs: l.dataTimeoutMs,
    maxConnections: l.maxConnections,
    maxConnectionsPerIp: l.maxConnectionsPerIp,
    rejectBareNewlines: l.rejectBareNewlines,
  };
  if (l.tls) {
    opts.tls = { cert: readFileSync(l.tls.certFile, "utf8"), key: readFileSync(l.tls.keyFile, "utf8") };
    opts.implicitTls = l.tls.implicit;
  }
  return opts;
}

/** Why a bind failed, in words: errno's meaning when there is one, Bun's message otherwise. */
function bindReason(err: unknown): string {
  return errnoOf(err) ? errnoText(err) : errorMessage(err);
}

function startControlServerOr(where: string, opts: Parameters<typeof startControlServer>[0]): ControlServer {
  try {
    return startControlServer(opts);
  } catch (err) {
    const msg = bindReason(err);
    const what = msg.startsWith("control.socket") ? msg : `control.address ${where}: cannot listen: ${msg}`;
    throw new UnavailableError(what, { cause: err });
  }
}

export class Daemon {
  private stopping: Promise<void> | undefined;
  /** Set by runDaemon: what a finished drain calls to stop the process as SIGTERM would. */
  onStopRequest: (() => void) | undefined;
  private draining: Promise<TransferResult> | undefined;

  private constructor(
    public config: Config,
    readonly log: Logger,
    readonly engine: Engine,
    readonly control: ControlServer | undefined,
    readonly listeners: Listener[],
    readonly webhooks: WebhookDispatcher[],
    readonly maildrop: MaildropPickup | undefined,
    readonly cluster: ClusterNode | undefined,
    /** The file the daemon started with: what its `restart` keys are running on. */
    private readonly started: RawConfig | undefined,
  ) {}

  static async start(config: Config, opts: DaemonOptions): Promise<Daemon> {
    const { log } = opts;
    // Only a node with a cluster: section loads the cluster code (and Redis's client).
    const clusterMod = config.cluster ? await import("./cluster.ts") : undefined;
    const redis = clusterMod?.redisConnection(config.cluster!);
    const metrics = new Metrics();
    registerProcessMetrics(metrics, pkg.version);
    // Built before the engine (its scheduler asks the cluster for shared limits from the first
    // site on); it connects to Redis in start(), once the engine runs.
    const cluster =
      clusterMod && redis
        ? clusterMod.ClusterNode.create(config, redis, { log: log.withTag("cluster"), metrics })
        : undefined;
    const engine = await Engine.start(config, {
      log,
      metrics,
      ...(cluster ? { shared: cluster.limits } : {}),
    });
    let control: ControlServer | undefined;
    const listeners: Listener[] = [];
    let webhooks: WebhookDispatcher[] = [];
    let maildrop: MaildropPickup | undefined;
    // The daemon object exists only at the end; routes reach it through this.
    let daemon: Daemon | undefined;
    try {
      webhooks = startWebhooks(config, engine, log.withTag("webhook"));
      const queueOps = new QueueOps({
        spool: engine.spool,
        scheduler: engine.scheduler,
        deliveryLog: engine.deliveryLog,
        hostname: config.hostname,
        metrics: engine.metrics,
        log: log.withTag("queue"),
        classify: (line) => engine.feedback.classifyLine(line),
        ...(cluster ? { onAdmin: cluster.onAdmin } : {}),
      });
      if (config.control.address || config.control.socketPath) {
        const a = config.control.address;
        const where = a ? formatHostPort(a) : "";
        control = startControlServerOr(where, {
          ...(a ? { host: a.host, port: a.port } : {}),
          ...(config.control.socketPath ? { socketPath: config.control.socketPath } : {}),
          hostNames: config.control.hostNames,
          token: config.control.token,
          log: log.withTag("control"),
          metrics: engine.metrics,
          // A failing webhook endpoint is reported, not unhealthy: mail still flows; a cluster node
          // that cannot reach Redis is "degraded" (still 200: it delivers at its share).
          health: () => {
            const c = cluster?.health();
            return {
              ok: true,
              ...(c?.status ? { status: c.status } : {}),
              detail: {
                ...(webhooks.length > 0
                  ? { webhooks: Object.fromEntries(webhooks.map((w) => [w.name, w.health])) }
                  : {}),
                ...(c?.detail ?? {}),
              },
            };
          },
        });
        const maxMessageBytes = injectLimitBytes(config);
        const inject = injectHandler(engine.pipeline, { hostname: config.hostname, maxMessageBytes });
        control.addRoute("POST /api/v1/inject", (req, url, peer) =>
          daemon?.isDraining
            ? jsonError(503, "this node is draining: it takes no new mail")
            : inject(req, url, peer),
        );
        for (const [key, handler] of Object.entries(queueRoutes(queueOps))) control.addRoute(key, handler);
        for (const [key, handler] of Object.entries(suppressionRoutes(engine.feedback.suppression)))
          control.addRoute(key, handler);
        if (cluster) {
          for (const [key, handler] of Object.entries(cluster.routes())) control.addRoute(key, handler);
          control.addRoute(
            "POST /api/v1/cluster/drain",
            handle(async (req) => {
              const to = optString(await jsonBody(req), "to") ?? "";
              if (!daemon) throw new QueueError("unavailable", "the daemon is still starting", 503);
              return daemon.drain(to);
            }),
          );
        }
      }
      await cluster?.start(engine, queueOps, control);
      for (const [i, l] of config.listen.entries()) {
        const where = `listen[${i}].address ${formatHostPort(l.address)}`;
        try {
          listeners.push(
            await startListener(
              listenerOptions(l, config.hostname),
              l.role === "bounces" ? new BounceInbox(engine.feedback) : engine.pipeline,
              {
                log: log.withTag("smtp"),
                metrics: engine.metrics,
              },
            ),
          );
        } catch (err) {
          throw new UnavailableError(`${where}: cannot listen: ${bindReason(err)}`, { cause: err });
        }
      }
      if (config.spool.maildrop) {
        maildrop = new MaildropPickup({
          dir: config.spool.maildrop,
          pipeline: engine.pipeline,
          hostname: config.hostname,
          maxMessageBytes: injectLimitBytes(config),
          log: log.withTag("maildrop"),
        });
        try {
          maildrop.start();
        } catch (err) {
          throw new UnavailableError(
            `cannot prepare spool.maildrop ${config.spool.maildrop}: ${errorMessage(err)}`,
            {
              cause: err,
            },
          );
        }
      }
    } catch (err) {
      await maildrop?.stop();
      for (const l of listeners) await l.close({ graceMs: 0 });
      await control?.stop();
      await Promise.all(webhooks.map((w) => w.stop(0)));
      await cluster?.stopSharing();
      await engine.stop();
      await cluster?.stop();
      throw err;
    }
    daemon = new Daemon(config, log, engine, control, listeners, webhooks, maildrop, cluster, opts.raw);
    return daemon;
  }

  get isDraining(): boolean {
    return this.draining !== undefined;
  }

  /**
   * Drain to another node: stop taking mail (listeners close, the inject API answers 503), move
   * every queued message to `to`, then stop as SIGTERM would. When some could not be moved the
   * daemon keeps running without listeners (it says so; run the drain again, or restart it).
   */
  drain(to: string): Promise<TransferResult> {
    if (!this.cluster) throw new QueueError("usage", "drain needs a cluster: section", 400);
    const cluster = this.cluster;
    // Check the target before anything closes: a typo must not leave the node deaf.
    cluster.checkPeer(to);
    const run = async () => {
      this.log.info("draining", { to });
      await Promise.all([this.maildrop?.stop(), ...this.listeners.map((l) => l.close({ graceMs: 1500 }))]);
      const r = await cluster.transfer(to, {});
      if (r.failed.length === 0) {
        this.log.info("drained; stopping", { to, moved: r.moved });
        setTimeout(() => this.onStopRequest?.(), 50);
      } else
        this.log.error("drain left messages here; not taking mail, not stopping", {
          to,
          moved: r.moved,
          left: r.failed.length,
        });
      return r;
    };
    const p = (this.draining ?? Promise.resolve(undefined)).then(run, run);
    this.draining = p;
    return p;
  }

  /** The "started" log line, with the bound addresses (tests and scripts read the ports from it). */
  announce(): void {
    this.log.info(`mta ${pkg.version} started`, {
      spool: this.config.spool.dir,
      messages: this.engine.spool.recovery.messages,
      listeners: this.listeners.map((l) => formatHostPort({ host: l.host, port: l.port })),
      control: this.control?.host
        ? formatHostPort({ host: this.control.host, port: this.control.port })
        : "off",
      controlSocket: this.control?.socketPath ?? "off",
      ...(this.cluster ? { cluster: `${this.cluster.cluster.node} (${this.cluster.cluster.mode})` } : {}),
    });
  }

  /**
   * Applies a new, already validated configuration: every `live` key at once (DKIM keys, routes,
   * DNS, retry schedule, scheduler settings, every live site's policy, log level of every logger, the
   * delivery log file); says which `restart` keys differ from what runs.
   */
  reload(config: Config, raw?: RawConfig): void {
    this.engine.reload(config); // DKIM keys first: a bad key throws and nothing changes
    setLogLevel(this.log, config.log.level);
    const needsRestart = this.started && raw ? restartNeeded(this.started, raw) : [];
    this.config = config;
    this.log.info("configuration reloaded", needsRestart.length ? { needsRestart } : {});
  }

  /**
   * Graceful stop within `graceMs` (shutdown_grace): listeners stop accepting at once and sessions in
   * the middle of a message may finish and get their 250; the control API refuses new requests that
   * would change anything and lets those in flight finish; deliveries in flight get what is left of the
   * grace (at least 1 s) to record their outcome; then the spool closes. A message whose session is
   * cut at the end of the grace gets 421 and is not kept.
   */
  stop(graceMs = this.config.shutdownGraceMs): Promise<void> {
    this.stopping ??= (async () => {
      const deadline = Date.now() + graceMs;
      this.log.info("stopping", { graceMs });
      this.control?.drain();
      await Promise.all([this.maildrop?.stop(), ...this.listeners.map((l) => l.close({ graceMs }))]);
      await this.control?.stop(Math.max(0, deadline - Date.now()));
      await this.cluster?.stopSharing(); // before the suppression list closes with the engine
      await this.engine.stop(Math.max(1000, deadline - Date.now()));
      // After the engine: its last events are in the file; what is not sent now is sent at the next start.
      await Promise.all(this.webhooks.map((w) => w.stop(1000)));
      await this.cluster?.stop(); // after the last connection: its leases go back to the fleet
      this.log.info("stopped");
    })();
    return this.stopping;
  }

  /** A second signal: sessions still receiving a message get 421 now (what is being stored is kept). */
  hurry(): void {
    this.log.info("ending the shutdown grace now");
    for (const l of this.listeners) void l.close({ graceMs: 0 });
  }
}

/** Secrets written inline in a file every local user may read are not secret: say so at start. */
function warnReadableSecrets(file: string, inline: string[], log: Logger): void {
  if (inline.length === 0) return;
  let mode = 0;
  try {
    mode = statSync(file).mode;
  } catch {
    return;
  }
  if ((mode & 0o004) !== 0)
    log.warn(
      `${file} is readable by every local user and holds ${inline.join(", ")}: move them to *_file keys (mode 0600) or chmod o-r the file`,
    );
}

/** `mta serve`: loads the configuration, runs the daemon until SIGTERM/SIGINT, returns the exit code. */
export async function runDaemon(configFile: string): Promise<number> {
  const { config: loaded, raw, problemAt } = loadConfig(configFile);
  // What check-config checks, serve checks: refused here, with the YAML path and line, before any bind.
  const problems = startProblems(loaded);
  if (problems.length > 0)
    throw new ConfigError(
      configFile,
      problems.map((p) => problemAt(p.path, p.message)),
    );
  // The secret files were found readable just now (startProblems): read them into the configuration.
  const { config } = resolveSecrets(loaded);
  const log = createLogger({ level: config.log.level, format: config.log.format });
  warnReadableSecrets(configFile, inlineSecretPaths(raw), log);
  const daemon = await Daemon.start(config, { log, raw });
  return new Promise<number>((resolve) => {
    let signalled = false;
    const stop = (signal: string) => {
      log.info(`received ${signal}`);
      if (signalled) return daemon.hurry();
      signalled = true;
      daemon.stop().then(
        () => resolve(EXIT.ok),
        (err) => {
          log.error("stop failed", { error: errorMessage(err) });
          resolve(EXIT.software);
        },
      );
    };
    daemon.onStopRequest = () => stop("a finished drain");
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      try {
        const { config: next, raw: nextRaw, problemAt } = loadConfig(configFile);
        const secrets = resolveSecrets(next);
        if (secrets.problems.length > 0)
          throw new ConfigError(
            configFile,
            secrets.problems.map((p) => problemAt(p.path, p.message)),
          );
        daemon.reload(secrets.config, nextRaw);
      } catch (err) {
        const detail = err instanceof ConfigError ? err.message : errorMessage(err);
        log.error(`configuration reload failed; keeping the running configuration\n${detail}`);
      }
    });
    // Only now, with every signal handled, say that we are up.
    daemon.announce();
  });
}
