/**
 * Outbound TLS policy, the app's part: opening tlspolicy/'s `TlsPolicies` from the configuration (its
 * TLS-RPT reports mailed through the accept pipeline) and the TLS-policy problems `mta check-config`
 * and `mta serve` refuse.
 * Does not own: the decisions (tlspolicy/), planning each attempt (route/'s TLS step, asked by the
 * scheduler's attempt with the message's RFC 8689 header), the SMTP client (deliverer/).
 */
import type { Config } from "../config/index.ts";
import type { Resolver } from "../dns/index.ts";
import { errorMessage, isLoopback } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { readCaBundle, TlsPolicies } from "../tlspolicy/index.ts";
import type { AcceptPipeline } from "../accept/index.ts";

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
