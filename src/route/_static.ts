/**
 * Static routes (`delivery.routes`): a domain's next hop without MX, like Postfix's transport table.
 *
 * Owns: the lookup order (the exact domain, then each parent domain, then "*"), the next hop's name
 * (its hosts as written: the queue key of everything the route carries), and turning the route's
 * host names into addresses (A/AAAA, never MX: Postfix's `[host]:port`).
 * Does not own: the queue (scheduler/), MX lookup (dns/).
 */
import { isIP } from "node:net";
import type { Config, RouteConfig } from "../config/index.ts";
import type { Resolver, RouteHost } from "../dns/index.ts";
import { formatHostPort } from "../lib/index.ts";

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

/**
 * The next hop of a route: its hosts in order, `relay.example.com:25` or `10.0.0.1:25,10.0.0.2:25`.
 * Every domain the route carries shares this one queue and its limits (a smarthost is one destination).
 */
export function nextHopName(route: RouteConfig): string {
  let name = hopNames.get(route);
  if (name === undefined) {
    name = route.hosts.map((h) => formatHostPort(h)).join(",");
    hopNames.set(route, name);
  }
  return name;
}

/** Each route object's next-hop name, built once: the scheduler asks it for every message it queues. */
const hopNames = new WeakMap<RouteConfig, string>();

/** The route's hosts as addresses, in order; `problems` names each host that has none. */
export async function routeHosts(
  route: RouteConfig,
  resolver: Resolver,
  families: readonly (4 | 6)[],
): Promise<{ hosts: RouteHost[]; problems: string[] }> {
  const hosts: RouteHost[] = [];
  const problems: string[] = [];
  for (const [i, h] of route.hosts.entries()) {
    if (isIP(h.host)) {
      hosts.push({ name: h.host, ip: h.host, port: h.port, preference: i });
      continue;
    }
    const found = await Promise.all(families.map((f) => resolver.addresses(h.host, f)));
    found.forEach((r) => {
      if (r.kind === "ok")
        for (const ip of r.addresses) hosts.push({ name: h.host, ip, port: h.port, preference: i });
      else problems.push(`${h.host}: ${r.kind === "error" ? r.error : r.kind}`);
    });
  }
  return { hosts, problems };
}
