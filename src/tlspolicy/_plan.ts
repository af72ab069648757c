/**
 * The TLS policy of one delivery attempt: for a destination and its MX hosts, which hosts may be used
 * and what each requires (RFC 8461 MTA-STS, RFC 7672 DANE), plus what TLS-RPT must count.
 *
 * Owns: `planTls`: the order of mechanisms (DANE over MTA-STS, RFC 8461 §2, decided per MX host),
 * per-destination overrides (`tls: auto | dane | sts | required | opportunistic | off`), the global
 * switches, RFC 8689's `TLS-Required: No`, and the report context of each host.
 * Does not own: DNS (the resolver), the MTA-STS cache (stsCache.ts), DANE matching (dane.ts), the
 * handshake (deliverer/).
 * Decisions, per MX host (mode `auto`):
 * 1. DANE when the resolver validates, the host's address records are authenticated (or it is an
 *    alias whose own CNAME record is) and its TLSA RRset (`_<port>._tcp.<base>`, the base domain
 *    being the CNAME-expanded name of a secure alias first, then the host name: RFC 7672 §2.2.2) is
 *    authenticated and not empty: TLS is mandatory; with usable
 *    records the chain must match one, with only unusable ones any certificate will do (RFC 7672 §2.2).
 *    A bogus or failed TLSA lookup removes the host (it must not be used at all, §2.2); an insecure or
 *    authenticated-empty answer means no DANE for that host.
 * 2. Otherwise MTA-STS when the domain has a policy: `enforce` keeps only hosts matching its `mx`
 *    patterns, and they need TLS with a WebPKI certificate naming the host; `testing` uses every
 *    host, tries TLS, checks the same things and only reports what fails.
 * 3. Otherwise opportunistic STARTTLS.
 * A static route (no MX) gets neither DANE nor MTA-STS: the route names its hosts.
 */
import type { AddressLookup, Resolver, TlsaRecord } from "../dns/index.ts";
import { checkDane, splitTlsa, tlsaText } from "./_dane.ts";
import { checkPkix } from "./_pkix.ts";
import type { StsLookup } from "./_stsCache.ts";
import { stsMxMatches } from "./_sts.ts";

export type TlsMode = "auto" | "dane" | "sts" | "required" | "opportunistic" | "off";

/** The shape the deliverer takes per host (deliverer's HostTlsPolicy; kept structural here). */
export interface PlannedHostTls {
  name: string;
  starttls: "off" | "try" | "require";
  verify?: (peer: {
    chain: Uint8Array[];
    authorizationError?: { code: string; message: string };
  }) => { ok: true } | { ok: false; resultType: string; detail: string };
  onVerifyFailure: "defer" | "plain" | "report";
  servername?: string;
  ca?: string;
  key: string;
}

/** What TLS-RPT files a host's sessions under (RFC 8460 §4.4 `policy`). */
export interface ReportPolicy {
  policyDomain: string;
  type: "sts" | "tlsa" | "no-policy-found";
  strings: string[];
  mxHost: string[];
}

export interface PlannedHost {
  name: string;
  ip: string;
  port: number;
  tls: PlannedHostTls;
  /** Undefined: sessions to this host are not reported (overrides, static routes). */
  report?: ReportPolicy;
}

export interface PlanFailure {
  report: ReportPolicy;
  result: string;
  mx?: string;
  ip?: string;
  detail: string;
}

export interface TlsPlan {
  hosts: PlannedHost[];
  /** Failures found before any connection (lookups, policy mismatches): TLS-RPT counts them. */
  failures: PlanFailure[];
  /** No host is left: defer the attempt with this (4.7.x) reason; `policy` is what refused. */
  defer?: { enhanced: string; text: string; policy: string };
  /** For logs and `mta queue show`: the mechanism that governs the destination. */
  summary: string;
}

export interface PlanInput {
  domain: string;
  hosts: readonly { name: string; ip: string; port: number }[];
  /** The hosts came from the domain's MX records (false: a static route or an address literal). */
  viaMx: boolean;
  mode: TlsMode;
  /** With `required`: the certificate must chain to the CA bundle and name the host. */
  verify: boolean;
  /** RFC 8689 §4.1: the message asked that recipient TLS policies be ignored. */
  tlsRequiredNo?: boolean;
}

export interface PlanDeps {
  resolver: Resolver;
  dane: boolean;
  sts: boolean;
  stsLookup: (domain: string) => Promise<StsLookup>;
  ca?: string;
  now: () => number;
}

function servernameOf(host: string): string | undefined {
  return /^[\d.]+$|:/.test(host) ? undefined : host;
}

function opportunistic(host: string, name = "opportunistic"): PlannedHostTls {
  const servername = servernameOf(host);
  return {
    name,
    starttls: "try",
    onVerifyFailure: "report",
    ...(servername ? { servername } : {}),
    key: name,
  };
}

type DaneHost =
  | {
      kind: "dane";
      records: TlsaRecord[];
      usable: TlsaRecord[];
      /** Where the TLSA RRset was found: the SNI name (RFC 7672 §8.1) and a reference identifier. */
      baseDomain: string;
      /** DANE-TA reference identifiers (RFC 7672 §3.2.2), TLSA base domain first. */
      names: string[];
    }
  | { kind: "none"; why: string }
  | { kind: "failed"; why: string };

/**
 * The candidate TLSA base domains of an MX host (RFC 7672 §2.2.2, as Postfix reads it):
 * - its address records are authenticated: the fully CNAME-expanded name first (when it is an
 *   alias), then the name itself;
 * - they are not, but the host's own CNAME record is (a signed alias into an unsigned zone): the
 *   original name only, the expanded name came from data nobody vouched for;
 * - otherwise none: the host is not in a signed zone (no DANE, RFC 7672 §2.2.3).
 */
function tlsaCandidates(
  name: string,
  a: Extract<AddressLookup, { kind: "ok" }>,
): { candidates: string[]; secureExpansion: boolean } | undefined {
  const canonical = a.canonicalName;
  if (a.authenticated)
    return canonical && canonical !== name
      ? { candidates: [canonical, name], secureExpansion: true }
      : { candidates: [name], secureExpansion: false };
  if (a.aliases?.[0]?.authenticated) return { candidates: [name], secureExpansion: false };
  return undefined;
}

/** The DANE state of one MX host: its address records must be authenticated, then its TLSA RRset. */
async function daneHost(
  resolver: Resolver,
  host: { name: string; ip: string; port: number },
  domain: string,
): Promise<DaneHost> {
  const family = host.ip.includes(":") ? 6 : 4;
  const a = await resolver.addresses(host.name, family);
  if (a.kind === "error") return { kind: "failed", why: `${host.name} address lookup: ${a.error}` };
  // RFC 7672 §2.2.2: TLSA records are looked up only for hosts whose address records are secure.
  const ok = a.kind === "ok" ? a : undefined;
  const c = ok && tlsaCandidates(host.name, ok);
  if (!ok || !c) return { kind: "none", why: `address records of ${host.name} are not DNSSEC-signed` };
  const tried: string[] = [];
  for (const base of c.candidates) {
    const qname = `_${host.port}._tcp.${base}`;
    const t = await resolver.tlsa(qname);
    // A failed lookup is not "no records": the next candidate is not tried (RFC 7672 §2.1.1).
    if (t.kind === "error")
      return {
        kind: "failed",
        why: `TLSA lookup for ${qname}: ${t.error === "bogus" ? "DNSSEC validation failed" : t.error}`,
      };
    // RFC 7672 §2.2.3: an insecure or empty answer sends us on to the next candidate.
    if (t.kind !== "tlsa" || !t.authenticated) {
      tried.push(t.kind === "tlsa" ? `${qname} not DNSSEC-signed` : `no TLSA records at ${qname}`);
      continue;
    }
    // RFC 7672 §3.2.2: with a secure expansion both the expanded and the original name identify
    // the server; the next-hop domain too (kept from before: MX hosts sharing the domain's certificate).
    const expanded = c.secureExpansion && ok.canonicalName ? [ok.canonicalName] : [];
    const names = [base, ...expanded, host.name, domain];
    return {
      kind: "dane",
      records: t.records,
      usable: splitTlsa(t.records).usable,
      baseDomain: base,
      names: [...new Set(names)],
    };
  }
  return { kind: "none", why: tried.join("; ") };
}

export async function planTls(input: PlanInput, deps: PlanDeps): Promise<TlsPlan> {
  const { domain, mode } = input;
  const ca = deps.ca !== undefined ? { ca: deps.ca } : {};
  const fixed = (tls: (h: { name: string }) => PlannedHostTls, summary: string): TlsPlan => ({
    hosts: input.hosts.map((h) => ({ ...h, tls: tls(h) })),
    failures: [],
    summary,
  });
  if (mode === "off")
    return fixed(() => ({ name: "off", starttls: "off", onVerifyFailure: "report", key: "off" }), "off");
  if (mode === "required")
    return fixed((h) => {
      const servername = servernameOf(h.name);
      return {
        name: "required",
        starttls: "require",
        ...(input.verify
          ? {
              verify: (peer: Parameters<NonNullable<PlannedHostTls["verify"]>>[0]) => checkPkix(peer, h.name),
            }
          : {}),
        onVerifyFailure: "defer",
        ...(servername ? { servername } : {}),
        ...ca,
        key: input.verify ? "required/v" : "required",
      };
    }, "required");
  const relaxed = input.tlsRequiredNo === true && mode === "auto";
  // `auto` applies the recipient domain's published policies, which name MX hosts: a static route
  // (a smarthost) is outside them. An explicit `dane` or `sts` is applied to the route's hosts as given.
  if (mode === "opportunistic" || (mode === "auto" && !input.viaMx) || relaxed)
    return fixed(
      (h) => opportunistic(h.name),
      relaxed ? "opportunistic (TLS-Required: No)" : "opportunistic",
    );

  const hosts: PlannedHost[] = [];
  const failures: PlanFailure[] = [];
  const noPolicy: ReportPolicy = { policyDomain: domain, type: "no-policy-found", strings: [], mxHost: [] };
  let sts: StsLookup | undefined;
  const stsOf = async () => {
    sts ??= deps.sts ? await deps.stsLookup(domain) : { kind: "none", detail: "MTA-STS is switched off" };
    return sts;
  };
  const daneOn = deps.dane && deps.resolver.dnssec;
  const mechanisms = new Set<string>();
  let lastReason = "";
  /** The mechanism that refused the last host: named in the deferral (and so in `mta queue show`). */
  let lastPolicy = "";

  for (const h of input.hosts) {
    if (daneOn && mode !== "sts") {
      const d = await daneHost(deps.resolver, h, domain);
      const report: ReportPolicy = {
        policyDomain: domain,
        type: "tlsa",
        strings: d.kind === "dane" ? d.records.map(tlsaText) : [],
        mxHost: [h.name],
      };
      if (d.kind === "failed") {
        // RFC 7672 §2.2: a host whose TLSA records cannot be had securely is not used at all.
        failures.push({ report, result: "dnssec-invalid", mx: h.name, ip: h.ip, detail: d.why });
        lastReason = d.why;
        lastPolicy = "dane";
        continue;
      }
      if (d.kind === "dane") {
        const { usable, names } = d;
        // RFC 7672 §8.1: the SNI name is the TLSA base domain (the expanded name of a secure alias).
        const servername = servernameOf(d.baseDomain);
        hosts.push({
          ...h,
          tls: {
            name: "dane",
            starttls: "require",
            ...(usable.length > 0
              ? {
                  verify: (peer: Parameters<NonNullable<PlannedHostTls["verify"]>>[0]) =>
                    checkDane(peer.chain, usable, names, deps.now()),
                }
              : {}),
            onVerifyFailure: "defer",
            ...(servername ? { servername } : {}),
            // No CA bundle: DANE ignores the WebPKI verdict, and a custom bundle costs a TLS context.
            // Connections verified against one RRset are not reused once the records change.
            key: `dane/${d.records.map(tlsaText).sort().join(",")}`,
          },
          report,
        });
        mechanisms.add(usable.length > 0 ? "dane" : "dane (no usable TLSA records: unauthenticated TLS)");
        continue;
      }
      if (mode === "dane") {
        failures.push({
          report: { ...report, type: "no-policy-found" },
          result: "dane-required",
          mx: h.name,
          ip: h.ip,
          detail: d.why,
        });
        lastReason = `DANE required: ${d.why}`;
        lastPolicy = "dane";
        continue;
      }
    } else if (mode === "dane") {
      const why = deps.resolver.dnssec
        ? "DANE is switched off"
        : "the resolver is not DNSSEC-validating (dns.dnssec)";
      failures.push({ report: noPolicy, result: "dane-required", mx: h.name, ip: h.ip, detail: why });
      lastReason = `DANE required: ${why}`;
      lastPolicy = "dane";
      continue;
    }

    const s = await stsOf();
    if (s.kind === "policy") {
      const p = s.policy;
      const report: ReportPolicy = { policyDomain: domain, type: "sts", strings: p.lines, mxHost: p.mx };
      const matched = p.mx.some((pat) => stsMxMatches(pat, h.name));
      const enforce = p.mode === "enforce" || mode === "sts";
      const mismatch = `MX host ${h.name} does not match the MTA-STS policy (mx: ${p.mx.join(", ")})`;
      if (!matched && enforce) {
        // Never connected to (it could be an attacker's MX): one failure per attempt that skips it.
        // RFC 8460 has no result type for this; validation-failure with the reason is its catch-all.
        failures.push({ report, result: "validation-failure", mx: h.name, ip: h.ip, detail: mismatch });
        lastReason = mismatch;
        lastPolicy = "sts-enforce";
        continue;
      }
      const servername = servernameOf(h.name);
      hosts.push({
        ...h,
        tls: {
          name: enforce ? "sts-enforce" : "sts-testing",
          starttls: enforce ? "require" : "try",
          // testing: a host outside the policy is used, and each session with it reported.
          verify: matched
            ? (peer) => checkPkix(peer, h.name)
            : () => ({ ok: false, resultType: "validation-failure", detail: mismatch }),
          onVerifyFailure: enforce ? "defer" : "report",
          ...(servername ? { servername } : {}),
          ...ca,
          key: `sts-${enforce ? "enforce" : "testing"}/${s.id}`,
        },
        report,
      });
      mechanisms.add(`mta-sts ${enforce ? "enforce" : "testing"} (id ${s.id})`);
      continue;
    }
    if (mode === "sts") {
      // The operator requires MTA-STS here; a failed fetch is counted once below.
      lastReason = `MTA-STS required: ${s.kind === "failed" ? s.detail : `no MTA-STS policy (${s.detail})`}`;
      lastPolicy = "sts";
      continue;
    }
    // RFC 8461 §5: a policy that cannot be fetched (and is not cached) means delivery as without one.
    const report: ReportPolicy =
      s.kind === "failed" ? { policyDomain: domain, type: "sts", strings: [], mxHost: [] } : noPolicy;
    hosts.push({ ...h, tls: opportunistic(h.name), report });
    mechanisms.add("opportunistic");
  }
  // A policy fetch that failed is one failure per attempt, not one per MX host.
  if (sts?.kind === "failed")
    failures.push({
      report: { policyDomain: domain, type: "sts", strings: [], mxHost: [] },
      result: sts.failure,
      detail: sts.detail,
    });
  const plan: TlsPlan = { hosts, failures, summary: [...mechanisms].join(", ") || "none" };
  if (hosts.length === 0) {
    const dnssec = failures.some((f) => f.result === "dnssec-invalid");
    plan.defer = {
      policy: lastPolicy || "none",
      enhanced: dnssec ? "4.7.5" : "4.7.4",
      text: `no MX host of ${domain} can be used under its TLS policy${lastPolicy ? ` (${lastPolicy})` : ""}: ${lastReason || "no host"}`,
    };
    plan.summary = "none usable";
  }
  return plan;
}
