/**
 * A routing step for scheduler tests and benchmarks: routes from a function instead of DNS and
 * configuration, with the real route/ semantics for sites (a route may name a site, as MX rollup does).
 *
 * Owns: `testRouter`. With `rollup`, a domain's site is unknown until its first route (the scheduler
 * stages its mail); without, a domain is its own site until a route names another one.
 */
import type { DestinationPolicy, RouteDecision } from "../../src/route/index.ts";
import type { SchedulerRouter } from "../../src/scheduler/index.ts";

/** A route as tests write it: `site` is optional (default: the domain). */
export type TestRoute =
  | (Omit<Extract<RouteDecision, { kind: "hosts" }>, "site"> & { site?: string })
  | { kind: "permanent"; enhanced: string; reason: string; site?: string }
  | { kind: "transient"; reason: string; site?: string };

export interface TestRouter extends SchedulerRouter {
  version: number;
}

export function testRouter(opts: {
  route: (domain: string) => TestRoute | Promise<TestRoute>;
  policy: (site: string) => DestinationPolicy;
  rollup?: boolean;
}): TestRouter {
  const learned = new Map<string, string>();
  return {
    version: 0,
    siteOf: (domain) => learned.get(domain) ?? (opts.rollup ? undefined : domain),
    policyOf: (site) => opts.policy(site),
    async route(domain) {
      const r = await opts.route(domain);
      const site = r.site ?? learned.get(domain) ?? domain;
      if (r.kind === "hosts" && (site !== domain || opts.rollup)) learned.set(domain, site);
      return { ...r, site } as RouteDecision;
    },
  };
}
