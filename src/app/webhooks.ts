/**
 * Webhooks of the daemon: one dispatcher per configured endpoint, reading the delivery log.
 *
 * Owns: building the dispatchers from the configuration, their state directory in the spool
 * (`<spool.dir>/webhooks/<name>.pos`), waking them when the delivery log is written.
 * Does not own: sending (webhook/).
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/index.ts";
import type { Logger } from "../observe/index.ts";
import { WebhookDispatcher } from "../webhook/index.ts";
import type { Engine } from "./engine.ts";

export function startWebhooks(config: Config, engine: Engine, log: Logger): WebhookDispatcher[] {
  if (config.webhooks.length === 0) return [];
  const stateDir = join(config.spool.dir, "webhooks");
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const dispatchers = config.webhooks.map(
    (w) =>
      new WebhookDispatcher(
        {
          name: w.name,
          url: w.url,
          secret: w.secret,
          events: w.events,
          batchSize: w.batchSize,
          timeoutMs: w.timeoutMs,
          maxRetryDelayMs: w.maxRetryDelayMs,
          tlsVerify: w.tlsVerify,
          ...(w.caFile ? { caFile: w.caFile } : {}),
        },
        { logFile: config.log.deliveriesFile, stateDir, log, metrics: engine.metrics },
      ),
  );
  engine.deliveryLog.onFlush(() => {
    for (const d of dispatchers) d.poke();
  });
  for (const d of dispatchers) d.start();
  log.info("webhooks running", { webhooks: dispatchers.map((d) => d.name) });
  return dispatchers;
}
