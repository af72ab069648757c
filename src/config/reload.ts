/**
 * What a reload (SIGHUP) changes while the daemon runs, key by key.
 *
 * Owns: `RELOAD`, one entry per configuration key (YAML path): `live` (applied at once by
 * `Daemon.reload`) or `restart` (the running value stays until the daemon restarts), and
 * `restartNeeded`, which compares a new file against what is running, not against the last file read.
 * A test walks the schema and fails when a key has no entry, so a new key cannot be forgotten.
 * An entry for a section covers every key under it; a section may instead list its keys one by one.
 */
import type { RawConfig } from "./schema.ts";

export type ReloadClass = "live" | "restart";

export const RELOAD: Readonly<Record<string, ReloadClass>> = Object.freeze({
  // Listeners, the control endpoint and the spool hold sockets, a lock and files opened at start.
  hostname: "restart",
  // Read when the daemon is told to stop.
  shutdown_grace: "live",
  spool: "restart",
  listen: "restart",
  control: "restart",
  // The resolver is shared by the routing step and tlspolicy/ (its MTA-STS and DANE state): as started.
  dns: "restart",
  "delivery.routes": "live",
  "delivery.retry": "live",
  "delivery.max_age": "live",
  "delivery.site_backoff": "live",
  "delivery.port": "live",
  "delivery.delay_warning": "live",
  "delivery.max_connections": "live",
  // The deliverer's connection pool and SMTP client timeouts are set when it is built.
  "delivery.idle_timeout": "restart",
  "delivery.timeouts": "restart",
  // Applied to every live site: limits, rates, TLS, retry lists, pool, rollups.
  "delivery.domains": "live",
  // A queued message's pool is an index into the pools the scheduler started with.
  "delivery.sources": "restart",
  "delivery.pools": "restart",
  "delivery.max_connections_per_source": "live",
  "delivery.max_ready_per_site": "live",
  // Keys are loaded and checked first; a bad one keeps the running keys.
  dkim: "live",
  // DANE, MTA-STS and TLS-RPT state (under the spool) opened at start.
  tls_policy: "restart",
  // Read by each `mta send` when it starts; the daemon does not use it.
  send: "live",
  // Read from the running configuration by feedback/ at each use (rules reloaded and checked first).
  bounces: "live",
  suppression: "live",
  // One dispatcher per webhook with its position file, built at start.
  webhooks: "restart",
  // The Redis connection, node name and lease period are fixed for a node's registration.
  cluster: "restart",
  "log.level": "live",
  "log.format": "restart",
  "log.deliveries": "live",
});

/** The entry covering `path` (its own, or its nearest section's). */
export function reloadClassOf(path: string): ReloadClass | undefined {
  for (let p = path; ; ) {
    const c = RELOAD[p];
    if (c) return c;
    const dot = p.lastIndexOf(".");
    if (dot < 0) return undefined;
    p = p.slice(0, dot);
  }
}

function valueAt(raw: unknown, path: string): unknown {
  let v: unknown = raw;
  for (const k of path.split("."))
    v = v && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

/**
 * The `restart` keys whose value in `next` differs from the running one, in table order. `running` is
 * the file the daemon started with: restart keys never change while it runs.
 */
export function restartNeeded(running: RawConfig, next: RawConfig): string[] {
  const out: string[] = [];
  for (const [path, c] of Object.entries(RELOAD)) {
    if (c !== "restart") continue;
    if (JSON.stringify(valueAt(running, path)) !== JSON.stringify(valueAt(next, path))) out.push(path);
  }
  return out;
}
