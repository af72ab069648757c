/**
 * MX rollup: many domains that share mail exchangers share one site (one queue, one set of limits).
 *
 * Owns: `mxMatches`, `siteFor` (the rollup a domain belongs to, from its MX host names), `hasRollups`.
 * Does not own: the MX lookup (dns/), where the site's mail waits (scheduler/).
 * A `delivery.domains` entry with `mx` patterns is a rollup; an entry named after the domain wins.
 */
import type { Config } from "../config/index.ts";

/** `*.google.com` matches any name under google.com; anything else matches itself. */
export function mxMatches(pattern: string, host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return pattern.startsWith("*.") ? h.endsWith(pattern.slice(1)) : h === pattern;
}

/**
 * The rollup a domain belongs to: the first `delivery.domains` entry with `mx` patterns matching one
 * of its hosts; undefined when the domain has an entry of its own (it wins) or nothing matches.
 */
export function siteFor(
  domains: Config["delivery"]["domains"],
  domain: string,
  hostNames: readonly string[],
): string | undefined {
  if (Object.hasOwn(domains, domain)) return undefined;
  for (const [name, p] of Object.entries(domains)) {
    if (!p.mx?.length) continue;
    if (hostNames.some((h) => p.mx!.some((pat) => mxMatches(pat, h)))) return name;
  }
  return undefined;
}

/** Whether any destination policy is an MX rollup. */
export function hasRollups(config: Config): boolean {
  return Object.values(config.delivery.domains).some((p) => (p.mx?.length ?? 0) > 0);
}
