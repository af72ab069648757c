/**
 * Outbound TLS policy: MTA-STS (RFC 8461), DANE (RFC 7672), TLS-RPT (RFC 8460).
 *
 * Owns: `TlsPolicies`, the module's one handle: `plan` (which MX hosts an attempt may use and what TLS
 * each requires), `record` (TLS-RPT counts from an attempt's result), the MTA-STS cache and the report
 * store under `<spool>/tls/`, `readCaBundle`.
 * Does not own: DNS transport (dns/), the SMTP client and its handshake (deliverer/), the routing of a
 * domain to hosts (app/ and the scheduler).
 * Invariants: see plan.ts (what is decided), stsCache.ts (what is cached and kept), rpt.ts (what is
 * counted and reported).
 */
import fs from "node:fs";
import { join } from "node:path";
import type { Resolver } from "../dns/index.ts";
import { type Clock, errorMessage, MtaError, systemClock, UnavailableError } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { type PlanInput, planTls, type TlsMode, type TlsPlan } from "./_plan.ts";
import { type MailReport, TlsReports } from "./_rpt.ts";
import { StsPolicies } from "./_stsCache.ts";

export type {
  PlanFailure,
  PlanInput,
  PlannedHost,
  PlannedHostTls,
  ReportPolicy,
  TlsMode,
  TlsPlan,
} from "./_plan.ts";
export type { MailReport } from "./_rpt.ts";
export { parseTlsRptRecord } from "./_rpt.ts";
export { reportMessage } from "./_rptReport.ts";
export type { StsLookup } from "./_stsCache.ts";
export type { StsPolicy, StsRecord } from "./_sts.ts";
export { parseStsPolicy, parseStsRecord, stsMxMatches } from "./_sts.ts";
export type { DaneVerdict } from "./_dane.ts";
export { checkDane, isUsableTlsa, splitTlsa, tlsaText } from "./_dane.ts";
export { checkPkix } from "./_pkix.ts";

/** Where the system's CA bundle usually is (Debian/Ubuntu, RHEL/Fedora, Alpine/BSD). */
const SYSTEM_BUNDLES = [
  "/etc/ssl/certs/ca-certificates.crt",
  "/etc/pki/tls/certs/ca-bundle.crt",
  "/etc/ssl/cert.pem",
];

/**
 * The PEM bundle certificates are validated against: `file` when given (read now; a problem throws),
 * else the system store, else undefined (the runtime's built-in Mozilla list).
 */
export function readCaBundle(file: string | undefined): string | undefined {
  if (file) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      throw new MtaError("config", `tls_policy.ca_file: cannot read ${file}: ${errorMessage(err)}`);
    }
    if (!text.includes("-----BEGIN CERTIFICATE-----"))
      throw new MtaError("config", `tls_policy.ca_file: ${file} holds no PEM certificate`);
    return text;
  }
  for (const f of SYSTEM_BUNDLES) {
    try {
      return fs.readFileSync(f, "utf8");
    } catch {}
  }
  return undefined;
}

export interface TlsPoliciesOptions {
  spoolDir: string;
  resolver: Resolver;
  prefer: "ipv4" | "ipv6";
  allowAddress?: (ip: string) => boolean;
  /** PEM bundle (see readCaBundle); undefined: the runtime's roots. */
  ca?: string;
  dane: { enabled: boolean };
  mtaSts: { enabled: boolean; port: number; fetchTimeoutMs: number; maxPolicyBytes: number };
  tlsRpt: {
    enabled: boolean;
    intervalMs: number;
    organization: string;
    contact: string;
    submitter: string;
    from: string;
    submitMail: (m: MailReport) => Promise<void>;
  };
  clock?: Clock;
  log: Logger;
  metrics?: Metrics;
}

/** The part of a deliverer's attempt result that TLS-RPT reads (deliverer/'s AttemptResult fits). */
export interface AttemptTlsOutcome {
  tls?: {
    policy: string;
    verified: boolean;
    failures?: { result: string; mx: string; ip: string }[];
  };
  tlsSessions?: { host: string; ip: string; policy: string; result: string; detail?: string }[];
}

export class TlsPolicies {
  readonly sts: StsPolicies;
  readonly reports: TlsReports | undefined;
  private readonly clock: Clock;
  private readonly m;

  private constructor(private readonly opts: TlsPoliciesOptions) {
    this.clock = opts.clock ?? systemClock;
    const https = {
      resolver: opts.resolver,
      prefer: opts.prefer,
      ...(opts.allowAddress ? { allowAddress: opts.allowAddress } : {}),
    };
    const dir = join(opts.spoolDir, "tls");
    this.sts = new StsPolicies({
      dir: join(dir, "sts"),
      resolver: opts.resolver,
      https,
      port: opts.mtaSts.port,
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      fetchTimeoutMs: opts.mtaSts.fetchTimeoutMs,
      maxPolicyBytes: opts.mtaSts.maxPolicyBytes,
      clock: this.clock,
      log: opts.log,
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
    });
    const r = opts.tlsRpt;
    this.reports = r.enabled
      ? new TlsReports({
          dir: join(dir, "rpt"),
          resolver: opts.resolver,
          https,
          ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
          intervalMs: r.intervalMs,
          organization: r.organization,
          contact: r.contact,
          submitter: r.submitter,
          from: r.from,
          submitMail: r.submitMail,
          clock: this.clock,
          log: opts.log,
          ...(opts.metrics ? { metrics: opts.metrics } : {}),
        })
      : undefined;
    this.m = opts.metrics
      ? {
          plans: opts.metrics.counter(
            "mta_tlspolicy_plans_total",
            "Delivery attempts planned, by the TLS mechanism that governs them",
          ),
        }
      : undefined;
  }

  /** Creates the state directories, loads the MTA-STS cache and unsent reports, starts the timers. */
  static open(opts: TlsPoliciesOptions): TlsPolicies {
    const t = new TlsPolicies(opts);
    let sts: { loaded: number; dropped: number };
    let rpt: { periods: number } | undefined;
    try {
      sts = t.sts.open();
      rpt = t.reports?.open();
    } catch (err) {
      t.sts.close();
      // An unreadable or unwritable state directory: the spool is not usable as configured.
      throw new UnavailableError(`TLS policy state in ${join(opts.spoolDir, "tls")}: ${errorMessage(err)}`);
    }
    opts.log.debug("tls policy state loaded", {
      stsPolicies: sts.loaded,
      stsDropped: sts.dropped,
      rptPeriods: rpt?.periods ?? 0,
    });
    return t;
  }

  async close(): Promise<void> {
    this.sts.close();
    await this.reports?.close();
  }

  /**
   * Starts the DNS questions `plan` will ask for a domain reached through its MX, before the MX answer
   * is in (MTA-STS's record, when `mode` may apply MTA-STS): they go out with the MX question.
   */
  prefetch(domain: string, mode: TlsMode): void {
    if (this.opts.mtaSts.enabled && (mode === "auto" || mode === "sts")) this.sts.prefetch(domain);
  }

  plan(input: PlanInput): Promise<TlsPlan> {
    return planTls(input, {
      resolver: this.opts.resolver,
      dane: this.opts.dane.enabled,
      sts: this.opts.mtaSts.enabled,
      stsLookup: (d) => this.sts.lookup(d),
      ...(this.opts.ca !== undefined ? { ca: this.opts.ca } : {}),
      now: () => this.clock.now(),
    }).then((plan) => {
      this.m?.plans.inc({ policy: plan.summary.split(" ")[0] ?? "none" });
      return plan;
    });
  }

  /**
   * Counts an attempt for TLS-RPT: the failures found while planning, and each new connection's TLS
   * result against the policy of its host. Plan failures are added to `result.tls.failures` so the
   * delivery log shows every failure TLS-RPT counts.
   */
  record(plan: TlsPlan, result: AttemptTlsOutcome, sendingIp?: string): void {
    const rpt = this.reports;
    const planned = new Map(plan.hosts.map((h) => [`${h.name}|${h.ip}`, h]));
    for (const f of plan.failures) {
      rpt?.count(f.report, f.result, {
        ...(f.mx ? { mx: f.mx } : {}),
        ...(f.ip ? { ip: f.ip } : {}),
        ...(sendingIp ? { sendingIp } : {}),
        reason: f.detail,
      });
    }
    if (plan.failures.length > 0) {
      const extra = plan.failures.map((f) => ({ result: f.result, mx: f.mx ?? "", ip: f.ip ?? "" }));
      const tls = result.tls ?? { policy: plan.summary, verified: false };
      result.tls = { ...tls, failures: [...extra, ...(tls.failures ?? [])] };
    }
    for (const s of result.tlsSessions ?? []) {
      const report = planned.get(`${s.host}|${s.ip}`)?.report;
      if (!report || s.result === "plain") continue;
      rpt?.count(report, s.result, {
        mx: s.host,
        ip: s.ip,
        ...(sendingIp ? { sendingIp } : {}),
        ...(s.detail ? { reason: s.detail } : {}),
      });
    }
  }
}
