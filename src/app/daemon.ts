/**
 * The daemon: builds every module from the configuration, runs until a signal, stops gracefully.
 *
 * Owns: start order (spool → control → scheduler → listeners), stop order (the reverse, after
 * listeners drain), SIGHUP reload, signal handling.
 * Invariant: the spool lock is held for the whole life of the daemon; nothing is acknowledged before
 * the spool is open, and the spool closes only after every listener and delivery has stopped.
 */
import pkg from "../../package.json" with { type: "json" };
import { type Config, ConfigError, loadConfig } from "../config/index.ts";
import { EXIT, errorMessage } from "../lib/index.ts";
import {
  type ControlServer,
  createLogger,
  DeliveryLog,
  type Logger,
  Metrics,
  registerProcessMetrics,
  setLogLevel,
  startControlServer,
} from "../observe/index.ts";
import { Spool } from "../spool/index.ts";

export interface DaemonOptions {
  log: Logger;
}

export class Daemon {
  private stopping: Promise<void> | undefined;

  private constructor(
    public config: Config,
    readonly log: Logger,
    readonly metrics: Metrics,
    readonly spool: Spool,
    readonly deliveryLog: DeliveryLog,
    readonly control: ControlServer | undefined,
  ) {}

  static async start(config: Config, opts: DaemonOptions): Promise<Daemon> {
    const { log } = opts;
    const metrics = new Metrics();
    registerProcessMetrics(metrics, pkg.version);
    const spool = await Spool.open({
      dir: config.spool.dir,
      sync: config.spool.sync,
      segmentSizeBytes: config.spool.segmentSizeBytes,
      compactBelowLiveRatio: config.spool.compactBelowLiveRatio,
      bodyCacheBytes: config.spool.bodyCacheBytes,
      log: log.withTag("spool"),
      metrics,
    });
    const deliveryLog = new DeliveryLog(config.log.deliveriesFile);
    let control: ControlServer | undefined;
    try {
      if (config.control.address) {
        control = startControlServer({
          host: config.control.address.host,
          port: config.control.address.port,
          token: config.control.token,
          log: log.withTag("control"),
          metrics,
        });
      }
    } catch (err) {
      await spool.close();
      deliveryLog.close();
      throw err;
    }
    const daemon = new Daemon(config, log, metrics, spool, deliveryLog, control);
    log.info(`mta ${pkg.version} started`, {
      spool: config.spool.dir,
      control: control ? `${control.host}:${control.port}` : "off",
    });
    return daemon;
  }

  /** Applies a new, already validated configuration: log level and format, delivery log file. */
  reload(config: Config): void {
    setLogLevel(this.log, config.log.level);
    const needsRestart: string[] = [];
    if (config.spool.dir !== this.config.spool.dir) needsRestart.push("spool.dir");
    if (JSON.stringify(config.control) !== JSON.stringify(this.config.control)) needsRestart.push("control");
    if (JSON.stringify(config.listen) !== JSON.stringify(this.config.listen)) needsRestart.push("listen");
    this.deliveryLog.reopen();
    this.config = config;
    this.log.info("configuration reloaded", needsRestart.length ? { needsRestart } : {});
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info("stopping");
      await this.control?.stop();
      this.deliveryLog.close();
      await this.spool.close();
      this.log.info("stopped");
    })();
    return this.stopping;
  }
}

/** `mta serve`: loads the configuration, runs the daemon until SIGTERM/SIGINT, returns the exit code. */
export async function runDaemon(configFile: string): Promise<number> {
  const { config } = loadConfig(configFile);
  const log = createLogger({ level: config.log.level, format: config.log.format });
  const daemon = await Daemon.start(config, { log });
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      log.info(`received ${signal}`);
      daemon.stop().then(
        () => resolve(EXIT.ok),
        (err) => {
          log.error("stop failed", { error: errorMessage(err) });
          resolve(EXIT.runtime);
        },
      );
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGHUP", () => {
      try {
        daemon.reload(loadConfig(configFile).config);
      } catch (err) {
        const detail = err instanceof ConfigError ? err.message : errorMessage(err);
        log.error(`configuration reload failed; keeping the running configuration\n${detail}`);
      }
    });
  });
}
