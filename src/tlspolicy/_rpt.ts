/**
 * TLS-RPT (RFC 8460): counting TLS sessions per policy domain and reporting period, keeping the counts
 * in the spool directory, and sending each domain its aggregate report.
 *
 * Owns: `TlsReports`: `count` (one session's result), the period files in `<spool>/tls/rpt/`, the
 * report's gzip and its delivery to `mailto:` (through the caller's `submitMail`, i.e. mta's own queue,
 * DKIM-signed like any other message) and `https:` (POST, §5.4) addresses, retries;
 * `parseTlsRptRecord` (§3).
 * Does not own: which sessions count against which policy (plan.ts / index.ts), the report JSON
 * (§4.4) and message (§5.3) (rptReport.ts), SMTP or the spool.
 * Invariants:
 * - counts reach the disk within `flushMs` (1 s) of the session and at `close()`: a restart loses
 *   nothing, a crash at most the last second;
 * - a period is reported once it has ended; its file is removed only after every domain's report was
 *   handed over (or given up after `giveUpMs`, RFC 8460 §5.4's "up to 24 hours");
 * - a report goes only to what the domain's own `_smtp._tls` record names at report time.
 */
import { gzipSync } from "node:zlib";
import type { Resolver } from "../dns/index.ts";
import { type Clock, errorMessage, systemClock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { ensureDir, readJsonFiles, removeFile, writeJsonAtomic } from "./_files.ts";
import { type HttpsDeps, httpsRequest } from "./_https.ts";
import type { ReportPolicy } from "./_plan.ts";
import {
  ADDR_SPEC,
  buildReport,
  type DomainState,
  type Period,
  reportMessage,
  type SessionDetail,
} from "./_rptReport.ts";

export type { SessionDetail } from "./_rptReport.ts";

export interface MailReport {
  sender: string;
  recipient: string;
  message: Uint8Array;
}

export interface TlsReportsOptions {
  /** `<spool>/tls/rpt` */
  dir: string;
  resolver: Resolver;
  https: HttpsDeps;
  ca?: string;
  /** Reporting period (RFC 8460 §4.1: a day, from 00:00 UTC); shorter in tests. */
  intervalMs: number;
  organization: string;
  contact: string;
  /** The submitter domain: report filename and `TLS-Report-Submitter` (the host name). */
  submitter: string;
  /** From: and envelope sender of mailed reports. */
  from: string;
  /** Hands a mailed report to mta's accept pipeline; resolves once it is in the spool. */
  submitMail: (m: MailReport) => Promise<void>;
  postTimeoutMs?: number;
  /** Give up on a period's undelivered reports this long after it ended; default 24 h. */
  giveUpMs?: number;
  flushMs?: number;
  clock?: Clock;
  log: Logger;
  metrics?: Metrics;
}

/** Distinct failure details kept per policy; beyond this, new ones are merged without their reason. */
const MAX_DETAILS = 100;
/** Sessions held per domain while its first TLS-RPT lookup runs; policy domains remembered. */
const MAX_WAITING = 10_000;
const MAX_KNOWN_DOMAINS = 100_000;
/** Report addresses served per domain (RFC 8460 §7: a record must not make us flood a victim). */
const MAX_RUA = 5;
const MAX_REPORT_BYTES = 10 * 1024 * 1024;

/** `_smtp._tls` TXT (RFC 8460 §3): exactly one `v=TLSRPTv1` record, with a comma-separated `rua`. */
export function parseTlsRptRecord(records: readonly string[]): { rua: string[] } | { error: string } {
  const candidates = records.filter((r) => /^v=TLSRPTv1[ \t]*(?:;|$)/.test(r));
  if (candidates.length !== 1)
    return { error: `${candidates.length} v=TLSRPTv1 records (exactly one allowed)` };
  for (const field of candidates[0]!.split(";").slice(1)) {
    const m = /^[ \t]*rua[ \t]*=[ \t]*(.*?)[ \t]*$/.exec(field);
    if (!m) continue;
    const rua = m[1]!
      .split(",")
      .map((u) => u.trim())
      .filter((u) => /^(mailto:[^\s]+@[^\s]+|https:\/\/[^\s]+)$/i.test(u));
    return rua.length > 0 ? { rua } : { error: "rua has no mailto: or https: URI" };
  }
  return { error: "no rua field" };
}

function policyKey(p: ReportPolicy): string {
  return JSON.stringify([p.type, p.strings, p.mxHost]);
}

export class TlsReports {
  private readonly periods = new Map<number, Period>();
  /** Policy domain → whether it publishes a TLS-RPT record, until when that is trusted. */
  private readonly publishes = new Map<string, { yes: boolean; untilMs: number }>();
  /** Sessions of domains whose first lookup is running. */
  private readonly waiting = new Map<
    string,
    { policy: ReportPolicy; result: string; detail: SessionDetail; atMs: number }[]
  >();
  private readonly dirty = new Set<number>();
  private readonly clock: Clock;
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private reportTimer: ReturnType<typeof setTimeout> | undefined;
  private reportAtMs = Number.POSITIVE_INFINITY;
  private reporting: Promise<void> | undefined;
  private closed = false;
  private readonly m;

  constructor(private readonly opts: TlsReportsOptions) {
    this.clock = opts.clock ?? systemClock;
    const mt = opts.metrics;
    this.m = mt
      ? {
          sessions: mt.counter(
            "mta_tlspolicy_rpt_sessions_total",
            "Sessions counted for TLS-RPT, by policy type and result",
          ),
          reports: mt.counter(
            "mta_tlspolicy_rpt_reports_total",
            "TLS-RPT reports handed over, by method and outcome",
          ),
        }
      : undefined;
  }

  /** Loads unsent periods and starts the report timer; an ended period is reported right away. */
  open(): { periods: number } {
    ensureDir(this.opts.dir);
    const { files, bad } = readJsonFiles(this.opts.dir);
    for (const name of bad) {
      this.opts.log.warn("unreadable TLS-RPT period file removed", { file: name });
      removeFile(this.opts.dir, name);
    }
    for (const { value } of files) {
      const p = value as Period;
      if (
        typeof p?.startMs === "number" &&
        typeof p.endMs === "number" &&
        p.domains &&
        typeof p.domains === "object"
      )
        this.periods.set(p.startMs, p);
    }
    this.armReport(0);
    return { periods: this.periods.size };
  }

  /** Writes what is not yet on disk and stops the timers. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.flushTimer);
    clearTimeout(this.reportTimer);
    await this.reporting;
    this.flush();
  }

  /**
   * Counts one session. Only domains that publish a `_smtp._tls` record are counted (looked up once
   * an hour per domain, through the resolver's cache): sending to 100,000 domains a day must not
   * keep 100,000 sets of counts that nobody asked for. Sessions wait while the first lookup runs; a
   * failed lookup counts them anyway (the report step looks again).
   */
  count(policy: ReportPolicy, result: string, detail: SessionDetail = {}): void {
    const d = policy.policyDomain;
    const now = this.clock.now();
    const known = this.publishes.get(d);
    if (known && known.untilMs > now) {
      if (known.yes) this.add(policy, result, detail, now);
      return;
    }
    const waiting = this.waiting.get(d);
    if (waiting) {
      if (waiting.length < MAX_WAITING) waiting.push({ policy, result, detail, atMs: now });
      return;
    }
    this.waiting.set(d, [{ policy, result, detail, atMs: now }]);
    void this.opts.resolver.txt(`_smtp._tls.${d}`).then((r) => {
      const yes = r.kind === "error" || (r.kind === "txt" && !("error" in parseTlsRptRecord(r.records)));
      if (this.publishes.size >= MAX_KNOWN_DOMAINS) {
        const oldest = this.publishes.keys().next();
        if (!oldest.done) this.publishes.delete(oldest.value);
      }
      this.publishes.set(d, { yes, untilMs: this.clock.now() + (r.kind === "error" ? 60_000 : 3_600_000) });
      const list = this.waiting.get(d) ?? [];
      this.waiting.delete(d);
      if (yes) for (const x of list) this.add(x.policy, x.result, x.detail, x.atMs);
    });
  }

  private add(policy: ReportPolicy, result: string, detail: SessionDetail, atMs: number): void {
    const now = this.clock.now();
    const startMs = Math.floor(atMs / this.opts.intervalMs) * this.opts.intervalMs;
    let period = this.periods.get(startMs);
    if (!period) {
      period = { startMs, endMs: startMs + this.opts.intervalMs, domains: {} };
      this.periods.set(startMs, period);
      // A little after the end, so that the last second's sessions are in.
      this.armReport(period.endMs - now + 100);
    }
    const domain = (period.domains[policy.policyDomain] ??= { policies: {} });
    const key = policyKey(policy);
    const counts = (domain.policies[key] ??= { policy, success: 0, failure: 0, details: {} });
    this.m?.sessions.inc({ type: policy.type, result });
    if (result === "success") counts.success++;
    else {
      counts.failure++;
      let d: SessionDetail = detail;
      let dk = JSON.stringify([result, d.mx, d.ip, d.sendingIp, d.reason]);
      if (!counts.details[dk] && Object.keys(counts.details).length >= MAX_DETAILS) {
        d = { ...detail, reason: undefined };
        dk = JSON.stringify([result, d.mx, d.ip, d.sendingIp, undefined]);
      }
      const entry = (counts.details[dk] ??= { result, ...clean(d), count: 0 });
      entry.count++;
    }
    this.dirty.add(startMs);
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = undefined;
      this.flush();
    }, this.opts.flushMs ?? 1000);
    this.flushTimer.unref?.();
  }

  /** Counts of the current and unreported periods (for tests and `mta queue`). */
  snapshot(): Period[] {
    return [...this.periods.values()].map((p) => structuredClone(p));
  }

  private flush(): void {
    for (const startMs of this.dirty) {
      const p = this.periods.get(startMs);
      if (!p) continue;
      try {
        writeJsonAtomic(this.opts.dir, `${startMs}.json`, p);
      } catch (err) {
        this.opts.log.warn("TLS-RPT counts not saved", { error: errorMessage(err) });
        continue;
      }
      this.dirty.delete(startMs);
    }
  }

  /** Runs `reportDue` in `delayMs`, unless it is due sooner already. */
  private armReport(delayMs: number): void {
    if (this.closed) return;
    const next = Math.max(0, delayMs);
    const at = this.clock.now() + next;
    if (this.reportTimer && at >= this.reportAtMs) return;
    clearTimeout(this.reportTimer);
    this.reportAtMs = at;
    this.reportTimer = setTimeout(
      () => {
        this.reportTimer = undefined;
        this.reportAtMs = Number.POSITIVE_INFINITY;
        const run = (this.reporting ?? Promise.resolve()).then(() => this.reportDue());
        this.reporting = run.finally(() => {
          if (this.reporting === run) this.reporting = undefined;
        });
      },
      Math.min(next, 2 ** 31 - 1),
    );
    this.reportTimer.unref?.();
  }

  /** Reports every ended period; re-arms for the next period end or retry. */
  private async reportDue(): Promise<void> {
    const now = this.clock.now();
    let nextMs = Number.POSITIVE_INFINITY;
    for (const p of [...this.periods.values()].sort((a, b) => a.startMs - b.startMs)) {
      if (p.endMs > now) {
        nextMs = Math.min(nextMs, p.endMs - now);
        continue;
      }
      let pending = false;
      for (const [domain, state] of Object.entries(p.domains)) {
        if (state.done || this.closed) continue;
        await this.reportDomain(p, domain, state);
        if (!state.done) pending = true;
        this.dirty.add(p.startMs);
      }
      if (!pending && !this.closed) {
        this.periods.delete(p.startMs);
        this.dirty.delete(p.startMs);
        removeFile(this.opts.dir, `${p.startMs}.json`);
      } else nextMs = Math.min(nextMs, 5 * 60_000);
    }
    this.flush();
    if (nextMs !== Number.POSITIVE_INFINITY) this.armReport(nextMs);
  }

  private async reportDomain(p: Period, domain: string, state: DomainState): Promise<void> {
    const now = this.clock.now();
    state.firstTryMs ??= now;
    if (now - state.firstTryMs > (this.opts.giveUpMs ?? 86_400_000)) {
      this.opts.log.warn("TLS-RPT report given up", { domain, period: new Date(p.startMs).toISOString() });
      state.done = true;
      return;
    }
    const txt = await this.opts.resolver.txt(`_smtp._tls.${domain}`);
    if (txt.kind === "error") return; // retried later
    const record = txt.kind === "txt" ? parseTlsRptRecord(txt.records) : { error: "no _smtp._tls record" };
    if ("error" in record) {
      this.opts.log.debug("no TLS-RPT report for domain", { domain, reason: record.error });
      state.done = true;
      return;
    }
    const report = buildReport(p, domain, state, this.opts);
    const gz = gzipSync(Buffer.from(JSON.stringify(report)));
    if (gz.length > MAX_REPORT_BYTES)
      this.opts.log.warn("TLS-RPT report is large", { domain, bytes: gz.length });
    const sent = new Set(state.sent ?? []);
    if (record.rua.length > MAX_RUA)
      this.opts.log.warn("TLS-RPT record lists more addresses than are served", {
        domain,
        rua: record.rua.length,
        served: MAX_RUA,
      });
    const rua = record.rua.slice(0, MAX_RUA);
    for (const uri of rua) {
      if (sent.has(uri)) continue;
      const ok = uri.toLowerCase().startsWith("mailto:")
        ? await this.mail(uri, domain, p, report["report-id"], gz)
        : await this.post(uri, domain, gz);
      if (ok) sent.add(uri);
    }
    state.sent = [...sent];
    if (rua.every((u) => sent.has(u))) state.done = true;
  }

  private async mail(uri: string, domain: string, p: Period, reportId: string, gz: Buffer): Promise<boolean> {
    let recipient = "";
    try {
      recipient = decodeURIComponent(uri.slice("mailto:".length).split("?")[0]!);
    } catch {}
    // What DNS says becomes a To: header and an envelope recipient: only a plain addr-spec will do
    // (a percent-encoded CR LF would otherwise write headers of its own).
    if (!ADDR_SPEC.test(recipient)) {
      this.opts.log.warn("TLS-RPT rua is not a usable mailto URI", { domain, uri });
      return true; // nothing to retry
    }
    const message = reportMessage({
      from: this.opts.from,
      to: recipient,
      domain,
      submitter: this.opts.submitter,
      reportId,
      beginS: Math.floor(p.startMs / 1000),
      endS: Math.floor(p.endMs / 1000),
      gz,
      nowMs: this.clock.now(),
    });
    try {
      await this.opts.submitMail({ sender: this.opts.from, recipient, message });
      this.m?.reports.inc({ method: "mailto", outcome: "queued" });
      this.opts.log.info("TLS-RPT report queued", { domain, to: recipient, reportId });
      return true;
    } catch (err) {
      this.m?.reports.inc({ method: "mailto", outcome: "error" });
      this.opts.log.warn("TLS-RPT report not queued; will retry", {
        domain,
        to: recipient,
        error: errorMessage(err),
      });
      return false;
    }
  }

  private async post(uri: string, domain: string, gz: Buffer): Promise<boolean> {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      this.opts.log.warn("TLS-RPT rua is not a valid https URI", { domain, uri });
      return true;
    }
    const r = await httpsRequest(this.opts.https, {
      method: "POST",
      host: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port ? Number(url.port) : 443,
      path: `${url.pathname}${url.search}`,
      headers: { "Content-Type": "application/tlsrpt+gzip" },
      body: gz,
      ...(this.opts.ca !== undefined ? { ca: this.opts.ca } : {}),
      timeoutMs: this.opts.postTimeoutMs ?? 30_000,
      maxBodyBytes: 64 * 1024,
    });
    const ok = r.ok && r.status >= 200 && r.status < 300;
    this.m?.reports.inc({ method: "https", outcome: ok ? "accepted" : "error" });
    if (ok) this.opts.log.info("TLS-RPT report posted", { domain, uri, status: r.ok ? r.status : 0 });
    else
      this.opts.log.warn("TLS-RPT report POST failed; will retry", {
        domain,
        uri,
        reason: r.ok ? `HTTP ${r.status}` : r.detail,
      });
    return ok;
  }
}

function clean(d: SessionDetail): SessionDetail {
  const out: SessionDetail = {};
  if (d.mx) out.mx = d.mx;
  if (d.ip) out.ip = d.ip;
  if (d.sendingIp) out.sendingIp = d.sendingIp;
  if (d.reason) out.reason = d.reason;
  return out;
}
