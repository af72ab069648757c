/**
 * The routing step: from a recipient domain to its site (the queue key), its next hops, the TLS each
 * must use, and its policy.
 *
 * Owns: the order of the decision (a static route, else MX through dns/, then MX rollup, then the
 * TLS plan of tlspolicy/ for the hosts found), the site names (a static route's next hop; an MX
 * rollup's name; else the domain itself), what each domain's rollup turned out to be (learned from
 * its MX, forgotten on reload), and the policy of every site.
 * Does not own: DNS transport and MX order (dns/), TLS decisions (tlspolicy/), queues and limits
 * (scheduler/), the configuration file (config/): `reload` is handed a new validated configuration
 * and swaps every table at once.
 * Invariants: `siteOf` never does I/O; when it answers, `route` names the same site (until a reload);
 * it answers without a lookup for every domain except, with rollups configured, one never routed yet.
 * A decision is TLS-planned only when the caller asks (`tls`): the attempt, which knows its message.
 */
import type { Config, RouteConfig, TlsMode } from "../config/index.ts";
import { resolveDestination, type Resolver } from "../dns/index.ts";
import type { AttemptTlsOutcome } from "../tlspolicy/index.ts";
import { type DestinationPolicy, policyOf } from "./_policy.ts";
import { hasRollups, siteFor } from "./_rollup.ts";
import { findRoute, nextHopName, routeHosts } from "./_static.ts";
import { type PlannedNextHop, planHosts, policyDomain, type TlsPlanner, tlsModeOf } from "./_tls.ts";

/** Hands an attempt's result to the TLS planner (TLS-RPT); absent when nothing was planned. */
type Report = (result: AttemptTlsOutcome, sendingIp?: string) => void;

/** Where a domain's mail goes now. `site` is always set: it is the queue key. */
export type RouteDecision =
  | {
      kind: "hosts";
      site: string;
      /** In order; each with the TLS its plan requires (when planned). */
      hosts: PlannedNextHop[];
      auth?: { username: string; password: string };
      /** A static route's TLS, over the site policy's. */
      tls?: TlsMode;
      tlsVerify?: boolean;
      sourceAddress?: string;
      ehloName?: string;
      /** More next hops (the other address family), looked up only when none of `hosts` answered. */
      more?: () => Promise<RouteDecision | undefined>;
      report?: Report;
    }
  /** The TLS policy leaves no host that may carry the mail: try again later, send nothing. */
  | { kind: "deferred"; site: string; enhanced: string; text: string; policy: string; report?: Report }
  | { kind: "permanent"; site: string; enhanced: string; reason: string }
  | { kind: "transient"; site: string; reason: string };

/** Per attempt: plan TLS for this message (RFC 8689: it may ask that recipient policies be ignored). */
export interface RouteOptions {
  tls?: { requiredNo: boolean };
}

interface Tables {
  routes: Config["delivery"]["routes"];
  domains: Config["delivery"]["domains"];
  /** Next hop -> the first `delivery.routes` key naming it (its policy entry when the hop has none). */
  routeKeyOf: Map<string, string>;
  rollups: boolean;
  families: (4 | 6)[];
  prefer: "ipv4" | "ipv6";
  port: number;
}

function tablesOf(config: Config): Tables {
  const routeKeyOf = new Map<string, string>();
  for (const [key, route] of Object.entries(config.delivery.routes)) {
    const hop = nextHopName(route);
    if (!routeKeyOf.has(hop)) routeKeyOf.set(hop, key);
  }
  return {
    routes: config.delivery.routes,
    domains: config.delivery.domains,
    routeKeyOf,
    rollups: hasRollups(config),
    families: config.dns.prefer === "ipv6" ? [6, 4] : [4, 6],
    prefer: config.dns.prefer,
    port: config.delivery.port,
  };
}

type Hosts = Extract<RouteDecision, { kind: "hosts" }>;

export class Router {
  private t: Tables;
  /** Domain -> rollup site, learned from MX answers (only with rollups configured). */
  private readonly learned = new Map<string, string>();
  /** Bumped by every reload: sites named before it may be stale. */
  version = 0;

  constructor(
    config: Config,
    private readonly resolver: Resolver,
    /** tlspolicy/'s planner; without one, hosts carry no TLS plan (the site policy's mode applies). */
    private readonly planner?: TlsPlanner,
  ) {
    this.t = tablesOf(config);
  }

  /** A new configuration: every later decision uses it (the resolver stays: DNS keys need a restart). */
  reload(config: Config): void {
    this.t = tablesOf(config);
    this.learned.clear();
    this.version++;
  }

  /** Whether a domain's site may depend on its MX (then `siteOf` waits for the first `route`). */
  get rollups(): boolean {
    return this.t.rollups;
  }

  /** The site of a domain when it is known without I/O; undefined: ask `route` first (MX rollup). */
  siteOf(domain: string): string | undefined {
    const route = findRoute(this.t.routes, domain);
    if (route) return nextHopName(route);
    if (!this.t.rollups) return domain;
    return this.learned.get(domain);
  }

  /**
   * A site's policy: its own `delivery.domains` entry; for a static route's next hop without one, the
   * entry of the route's key (`routes: { example.net: relay }` takes `domains: { example.net }`);
   * else `default`.
   */
  policyOf(site: string): DestinationPolicy {
    const { domains, routeKeyOf } = this.t;
    if (Object.hasOwn(domains, site)) return policyOf(domains, site);
    const key = routeKeyOf.get(site);
    return policyOf(domains, key !== undefined && Object.hasOwn(domains, key) ? key : site);
  }

  async route(domain: string, opts: RouteOptions = {}): Promise<RouteDecision> {
    const t = this.t;
    const route = findRoute(t.routes, domain);
    let d: RouteDecision;
    let more: (() => Promise<{ name: string; ip: string; port: number }[]>) | undefined;
    if (route) d = await this.staticRoute(domain, route, t);
    else {
      // The TLS step's first DNS question (MTA-STS) goes out with the MX question, not after it. The
      // mode is the domain's own or the default: an MX rollup's own mode is known only after the MX.
      if (opts.tls && !opts.tls.requiredNo && !domain.startsWith("["))
        this.planner?.prefetch?.(policyDomain(domain), tlsModeOf(t.domains, domain, []).mode);
      const r = await resolveDestination(this.resolver, domain, { prefer: t.prefer, port: t.port });
      if (r.kind !== "hosts") return { ...r, site: this.learned.get(domain) ?? domain };
      let site = domain;
      if (t.rollups && t === this.t) {
        site =
          siteFor(
            t.domains,
            domain,
            r.hosts.map((h) => h.name),
          ) ?? domain;
        this.learned.set(domain, site);
      }
      d = { kind: "hosts", site, hosts: r.hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port })) };
      more = r.more;
    }
    if (d.kind !== "hosts") return d;
    const planned = opts.tls && this.planner ? await this.plan(domain, route, d, opts.tls.requiredNo) : d;
    if (planned.kind === "hosts" && more) {
      const lookup = more;
      planned.more = async () => {
        const hosts = await lookup();
        if (hosts.length === 0) return undefined;
        const next: Hosts = { ...d, hosts: hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port })) };
        delete next.more;
        return opts.tls && this.planner ? this.plan(domain, route, next, opts.tls.requiredNo) : next;
      };
    }
    return planned;
  }

  /** The TLS step: tlspolicy/ plans the hosts (DANE, MTA-STS, the configured mode). */
  private async plan(
    domain: string,
    route: RouteConfig | undefined,
    d: Hosts,
    requiredNo: boolean,
  ): Promise<RouteDecision> {
    const own = tlsModeOf(
      this.t.domains,
      domain,
      d.hosts.map((h) => h.name),
    );
    const p = await planHosts(this.planner!, {
      domain,
      hosts: d.hosts,
      viaMx: !route && !domain.startsWith("["),
      mode: route?.tls ?? own.mode,
      verify: d.tlsVerify ?? this.policyOf(d.site).tlsVerify,
      tlsRequiredNo: requiredNo,
    });
    if (p.kind === "deferred")
      return {
        kind: "deferred",
        site: d.site,
        enhanced: p.enhanced,
        text: p.text,
        policy: p.policy,
        report: p.report,
      };
    return { ...d, hosts: p.hosts, report: p.report };
  }

  private async staticRoute(domain: string, route: RouteConfig, t: Tables): Promise<RouteDecision> {
    const site = nextHopName(route);
    const { hosts, problems } = await routeHosts(route, this.resolver, t.families);
    if (hosts.length === 0)
      return { kind: "transient", site, reason: `static route for ${domain}: ${problems.join(", ")}` };
    const d: RouteDecision = {
      kind: "hosts",
      site,
      hosts: hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port })),
    };
    if (route.auth) d.auth = route.auth;
    if (route.tls) d.tls = route.tls;
    return d;
  }
}
