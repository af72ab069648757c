/**
 * Per-destination policy: what a site may do (connections, rates, TLS, retries, pool, reply rules).
 *
 * Owns: `DestinationPolicy` and `policyOf`: a site's own `delivery.domains` entry over `default`.
 * Does not own: enforcing it (scheduler/'s site object), TLS at the socket (deliverer/).
 * A site is a recipient domain, an MX rollup's name, or a static route's next hop ("relay:25"): the
 * same lookup serves all three, so `delivery.domains."relay:25"` sets the limits of a smarthost.
 */
import type { Config, DomainPolicy, DomainTlsMode, TlsMode } from "../config/index.ts";
import type { Rate } from "../lib/index.ts";
import type { BackoffRule } from "./_rules.ts";

export interface DestinationPolicy {
  /** Connection limit for this site per source address (capped by the global `maxConnections`). */
  maxConnections: number;
  /** Messages one connection worker sends before it ends (the deliverer's pool may still reuse the socket). */
  maxMessagesPerConnection: number;
  messageRate?: Rate;
  connectionRate?: Rate;
  tls: TlsMode;
  tlsVerify: boolean;
  /** Overrides the global retry schedule. */
  retryMs?: number[];
  /** Slow start: the concurrency window's first size (default 2). */
  initialWindow?: number;
  /** Reply-driven backoff rules; default `DEFAULT_BACKOFF_RULES`. */
  rules?: readonly BackoffRule[];
  /** Egress pool (a name in `delivery.pools`); default: the scheduler's default pool. */
  pool?: string;
}

/**
 * The TLS the connection itself asks for. `auto`, `dane` and `sts` are opportunistic here: the TLS
 * TLS step of routing (route/_tls.ts, with tlspolicy/) plans each host's stronger requirement.
 */
function connectionTls(mode: DomainTlsMode): TlsMode {
  return mode === "off" || mode === "required" ? mode : "opportunistic";
}

/** The effective policy of a site: its own entry over `default`. */
export function policyOf(domains: Config["delivery"]["domains"], site: string): DestinationPolicy {
  const def = domains.default;
  const own: DomainPolicy = Object.hasOwn(domains, site) ? domains[site]! : {};
  const p: DestinationPolicy = {
    maxConnections: own.maxConnections ?? def.maxConnections,
    maxMessagesPerConnection: own.maxMessagesPerConnection ?? def.maxMessagesPerConnection,
    tls: connectionTls(own.tls ?? def.tls),
    tlsVerify: own.tlsVerify ?? def.tlsVerify,
  };
  const messageRate = own.messageRate ?? def.messageRate;
  const connectionRate = own.connectionRate ?? def.connectionRate;
  const retryMs = own.retryMs ?? def.retryMs;
  if (messageRate) p.messageRate = { count: messageRate.count, perMs: messageRate.perMs };
  if (connectionRate) p.connectionRate = { count: connectionRate.count, perMs: connectionRate.perMs };
  if (retryMs) p.retryMs = [...retryMs];
  const pool = own.pool ?? def.pool;
  if (pool) p.pool = pool;
  return p;
}
