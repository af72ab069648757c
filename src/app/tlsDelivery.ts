/**
 * Outbound TLS policy between the scheduler and the deliverer: every attempt is planned by tlspolicy/
 * (DANE, MTA-STS, overrides) before it reaches the deliverer, and counted for TLS-RPT after.
 *
 * Owns: `PolicyDeliverer` (the scheduler's `DeliveryEngine`), which destination mode applies (a static
 * route's `tls`, else the domain's policy entry, else its MX rollup's, else `default`), RFC 8689's
 * `TLS-Required: No` in the message header; opening `TlsPolicies` from the configuration (reports
 * mailed through the accept pipeline) and the configuration problems `mta check-config` reports.
 * Does not own: the decisions (tlspolicy/), the SMTP client (deliverer/), routing (route/).
 * Invariant: when no host can meet the policy the attempt is deferred with the plan's 4.7.x reason
 * and nothing is sent; the delivery log line of every attempt carries the policy that applied.
 * This sits here until the scheduler's routing step (next hop + policy) can carry the plan itself.
 */
import { domainToASCII } from "node:url";
import type { Config, DomainTlsMode } from "../config/index.ts";
import type { AttemptResult, AttemptTarget, Deliverer, OutboundMessage } from "../deliverer/index.ts";
import type { Resolver } from "../dns/index.ts";
import { errorMessage, isLoopback, latin1Decoder } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import type { DeliveryEngine } from "../scheduler/index.ts";
import { domainOf, reply } from "../smtp/index.ts";
import { readCaBundle, TlsPolicies } from "../tlspolicy/index.ts";
import type { AcceptPipeline } from "./accept.ts";
import { findRoute, siteFor } from "../route/index.ts";

/** RFC 8689 §5: `TLS-Required: No` in the header section. Only the first 64 KiB are looked at. */
export function asksTlsRequiredNo(body: Uint8Array): boolean {
  const head = latin1Decoder.decode(body.subarray(0, Math.min(body.length, 65_536)));
  const end = head.search(/\r?\n\r?\n/);
  const header = end < 0 ? head : head.slice(0, end + 1);
  return /(^|\n)tls-required[ \t]*:[ \t]*no[ \t]*\r?(\n|$)/i.test(header);
}

/** The TLS mode of a destination: its own entry, else the MX rollup it belongs to, else `default`. */
export function tlsModeFor(
  config: Config,
  domain: string,
  hostNames: readonly string[],
): { mode: DomainTlsMode; verify: boolean } {
  const domains = config.delivery.domains;
  const own =
    domains[domain] ??
    (() => {
      const site = siteFor(domains, domain, hostNames);
      return site ? domains[site] : undefined;
    })();
  return { mode: own?.tls ?? domains.default.tls, verify: own?.tlsVerify ?? domains.default.tlsVerify };
}

export class PolicyDeliverer implements DeliveryEngine {
  constructor(
    private readonly deliverer: Deliverer,
    private readonly tls: TlsPolicies,
    private readonly config: () => Config,
  ) {}

  async deliver(target: AttemptTarget, msg: OutboundMessage): Promise<AttemptResult> {
    const first = msg.recipients[0];
    if (!first) return this.deliverer.deliver(target, msg);
    const config = this.config();
    const domain = domainOf(first.address);
    // DNS names (_mta-sts, mta-sts., _smtp._tls) and TLS-RPT's policy-domain are A-labels (RFC 8461
    // §3.1, RFC 8460 §4.4), whatever form the address was written in.
    const aLabel = domain.startsWith("[") ? domain : domainToASCII(domain) || domain;
    const route = findRoute(config.delivery.routes, domain);
    const own = tlsModeFor(
      config,
      domain,
      target.hosts.map((h) => h.name),
    );
    const mode: DomainTlsMode = route?.tls ?? own.mode;
    const plan = await this.tls.plan({
      domain: aLabel,
      hosts: target.hosts,
      viaMx: !route && !domain.startsWith("["),
      mode,
      verify: target.tlsVerify,
      tlsRequiredNo: asksTlsRequiredNo(msg.body),
    });
    let result: AttemptResult;
    if (plan.defer) {
      const r = reply(451, plan.defer.enhanced, plan.defer.text);
      result = {
        recipients: msg.recipients.map((rc) => ({ index: rc.index, kind: "transient", reply: r })),
        connectionFailed: false,
        tls: { policy: plan.defer.policy, verified: false },
        durationMs: 0,
      };
    } else
      result = await this.deliverer.deliver(
        { ...target, hosts: plan.hosts.map((h) => ({ name: h.name, ip: h.ip, port: h.port, tls: h.tls })) },
        msg,
      );
    this.tls.record(plan, result, target.sourceAddress);
    return result;
  }
}

/**
 * What `mta check-config` and `mta serve` refuse in the TLS policy: an unreadable CA bundle, and a
 * destination that requires DANE or MTA-STS where it cannot happen (its mail would only be deferred).
 */
export function tlsPolicyProblems(config: Config): { path: (string | number)[]; message: string }[] {
  const problems: { path: (string | number)[]; message: string }[] = [];
  try {
    readCaBundle(config.tlsPolicy.caFile || undefined);
  } catch (err) {
    problems.push({
      path: ["tls_policy", "ca_file"],
      message: errorMessage(err).replace(/^tls_policy\.ca_file: /, ""),
    });
  }
  const daneWhy = !config.dns.dnssec
    ? "needs dns.dnssec: true (a validating resolver)"
    : !config.tlsPolicy.dane.enabled
      ? "needs tls_policy.dane.enabled: true"
      : undefined;
  for (const [name, p] of Object.entries(config.delivery.domains)) {
    if (p.tls === "dane" && daneWhy)
      problems.push({ path: ["delivery", "domains", name, "tls"], message: `tls: dane ${daneWhy}` });
    if (p.tls === "sts" && !config.tlsPolicy.mtaSts.enabled)
      problems.push({
        path: ["delivery", "domains", name, "tls"],
        message: "tls: sts needs tls_policy.mta_sts.enabled: true",
      });
  }
  return problems;
}

/** The outbound TLS policy handle: MTA-STS cache and TLS-RPT store in the spool directory. */
export function openTlsPolicies(
  config: Config,
  resolver: Resolver,
  opts: {
    ca: string | undefined;
    loopbackOnly: boolean;
    log: Logger;
    metrics: Metrics;
    submit: AcceptPipeline["submit"];
  },
): TlsPolicies {
  const t = config.tlsPolicy;
  const host = config.hostname;
  return TlsPolicies.open({
    spoolDir: config.spool.dir,
    resolver,
    prefer: config.dns.prefer,
    ...(opts.loopbackOnly ? { allowAddress: isLoopback } : {}),
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    dane: t.dane,
    mtaSts: t.mtaSts,
    tlsRpt: {
      enabled: t.tlsRpt.enabled,
      intervalMs: t.tlsRpt.intervalMs,
      organization: t.tlsRpt.organization || host,
      contact: t.tlsRpt.contact || `postmaster@${host}`,
      submitter: host,
      from: t.tlsRpt.from || `tlsrpt-noreply@${host}`,
      submitMail: async (m) => {
        const r = await opts.submit({
          sender: m.sender,
          recipients: [{ address: m.recipient }],
          attributes: { listener: "tls-rpt" },
          message: m.message,
        });
        if (!r.ok) throw new Error(`spool refused the report: ${r.reply.code}`);
      },
    },
    log: opts.log,
    metrics: opts.metrics,
  });
}
