/**
 * From a destination domain to the hosts to try: static routes (`delivery.routes`) first, else DNS.
 *
 * Owns: route lookup order (the exact domain, then each parent domain, then "*"), turning a route's
 * host names into addresses (A/AAAA, no MX: like Postfix's `[host]:port`), the route's AUTH and TLS,
 * and MX rollup: naming the site (a `delivery.domains` entry with `mx` patterns) whose queue and
 * limits a domain shares, from its MX (or static route) host names.
 * Does not own: MX logic (dns/), what to do with the result (scheduler/).
 */
import { isIP } from "node:net";
import type { Config, RouteConfig } from "../config/index.ts";
import { resolveDestination, type Resolver, type RouteResult } from "../dns/index.ts";

export type Routed = RouteResult & {
  auth?: { username: string; password: string };
  tls?: RouteConfig["tls"];
  /** The rollup whose queue and limits this domain shares (see `siteFor`). */
  site?: string;
};

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

export function findRoute(routes: Config["delivery"]["routes"], domain: string): RouteConfig | undefined {
  let d = domain.toLowerCase();
  for (;;) {
    const r = routes[d];
    if (r) return r;
    const dot = d.indexOf(".");
    if (dot < 0) break;
    d = d.slice(dot + 1);
  }
  return routes["*"];
}

export function makeRouter(config: Config, resolver: Resolver): (domain: string) => Promise<Routed> {
  const prefer = config.dns.prefer;
  const families: (4 | 6)[] = prefer === "ipv6" ? [6, 4] : [4, 6];
  const rollups = hasRollups(config);
  const withSite = (domain: string, r: Routed): Routed => {
    if (!rollups || r.kind !== "hosts") return r;
    const site = siteFor(
      config.delivery.domains,
      domain,
      r.hosts.map((h) => h.name),
    );
    return site === undefined ? r : { ...r, site };
  };
  return async (domain) => withSite(domain, await lookup(domain));
  async function lookup(domain: string): Promise<Routed> {
    const route = findRoute(config.delivery.routes, domain);
    if (!route) return resolveDestination(resolver, domain, { prefer, port: config.delivery.port });
    const hosts: Extract<RouteResult, { kind: "hosts" }>["hosts"] = [];
    const problems: string[] = [];
    for (const [i, h] of route.hosts.entries()) {
      if (isIP(h.host)) {
        hosts.push({ name: h.host, ip: h.host, port: h.port, preference: i });
        continue;
      }
      for (const f of families) {
        const r = await resolver.addresses(h.host, f);
        if (r.kind === "ok")
          for (const ip of r.addresses) hosts.push({ name: h.host, ip, port: h.port, preference: i });
        else problems.push(`${h.host}: ${r.kind === "error" ? r.error : r.kind}`);
      }
    }
    const extra = { ...(route.auth ? { auth: route.auth } : {}), ...(route.tls ? { tls: route.tls } : {}) };
    if (hosts.length === 0)
      return { kind: "transient", reason: `static route for ${domain}: ${problems.join(", ")}`, ...extra };
    return { kind: "hosts", hosts, ...extra };
  }
}
