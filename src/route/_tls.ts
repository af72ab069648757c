/**
 * The TLS step of routing: which of a destination's next hops may carry its mail, and with what TLS
 * each (DANE, MTA-STS, a domain's `tls:` mode), planned by tlspolicy/ once the hosts are known.
 *
 * Owns: the destination's TLS mode as configured (a static route's `tls`, else the domain's own
 * entry, else its MX rollup's, else `default`), asking the planner, and the hook that hands an
 * attempt's result back to it (TLS-RPT counts).
 * Does not own: the decisions (tlspolicy/), the handshake (deliverer/), RFC 8689's header (the
 * caller reads `TLS-Required: No` from the message and says so).
 * Invariant: when the plan leaves no host, the decision is `deferred` with the plan's 4.7.x reason
 * and nothing is sent.
 */
import { domainToASCII } from "node:url";
import type { Config, DomainTlsMode } from "../config/index.ts";
import type { AttemptTlsOutcome, PlanInput, PlannedHostTls, TlsPlan } from "../tlspolicy/index.ts";
import { siteFor } from "./_rollup.ts";

/** What the routing step needs of tlspolicy/'s `TlsPolicies`. */
export interface TlsPlanner {
  plan(input: PlanInput): Promise<TlsPlan>;
  /** Starts what `plan` will ask of DNS for a domain reached through its MX (asked with the MX). */
  prefetch?(domain: string, mode: DomainTlsMode): void;
  record(plan: TlsPlan, result: AttemptTlsOutcome, sendingIp?: string): void;
}

/** A next hop with the TLS the plan requires of it. */
export interface PlannedNextHop {
  name: string;
  ip: string;
  port: number;
  tls?: PlannedHostTls;
}

/** The TLS mode of a destination: its own entry, else the MX rollup it belongs to, else `default`. */
export function tlsModeOf(
  domains: Config["delivery"]["domains"],
  domain: string,
  hostNames: readonly string[],
): { mode: DomainTlsMode; verify: boolean } {
  const own =
    domains[domain] ??
    (() => {
      const site = siteFor(domains, domain, hostNames);
      return site ? domains[site] : undefined;
    })();
  return { mode: own?.tls ?? domains.default.tls, verify: own?.tlsVerify ?? domains.default.tlsVerify };
}

/** The DNS form of a domain for policy lookups: A-labels (RFC 8461 §3.1, RFC 8460 §4.4). */
export function policyDomain(domain: string): string {
  return domain.startsWith("[") ? domain : domainToASCII(domain) || domain;
}

export type Planned =
  | {
      kind: "hosts";
      hosts: PlannedNextHop[];
      report: (result: AttemptTlsOutcome, sendingIp?: string) => void;
    }
  | {
      kind: "deferred";
      enhanced: string;
      text: string;
      policy: string;
      report: (result: AttemptTlsOutcome, sendingIp?: string) => void;
    };

export async function planHosts(
  planner: TlsPlanner,
  input: {
    domain: string;
    hosts: readonly { name: string; ip: string; port: number }[];
    viaMx: boolean;
    mode: DomainTlsMode;
    verify: boolean;
    tlsRequiredNo: boolean;
  },
): Promise<Planned> {
  const plan = await planner.plan({ ...input, domain: policyDomain(input.domain) });
  const report = (result: AttemptTlsOutcome, sendingIp?: string) => planner.record(plan, result, sendingIp);
  if (plan.defer) return { kind: "deferred", ...plan.defer, report };
  return {
    kind: "hosts",
    hosts: plan.hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port, tls: h.tls })),
    report,
  };
}
