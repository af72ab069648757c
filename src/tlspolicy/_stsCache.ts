/**
 * MTA-STS policies of recipient domains: discovery, fetch, a cache that survives restarts, and refresh.
 *
 * Owns: `StsPolicies`: `lookup(domain)` (what policy applies now), the cache in `<spool>/tls/sts/`
 * (one file per domain), the proactive refresh timer, the in-flight fetch per domain.
 * Does not own: the policy grammar (sts.ts), HTTPS (https.ts), what the policy makes delivery do (plan.ts).
 * Invariants (RFC 8461 §5.1):
 * - a cached policy is used until it expires, whatever DNS says meanwhile: a vanished or broken TXT
 *   record does not remove it (an attacker who can edit DNS answers must not switch protection off);
 * - a new id in the TXT record triggers a fetch; when that fetch fails, the cached policy stays;
 * - without a cached policy, a failed fetch means "no policy" for this delivery (reported to TLS-RPT);
 * - a policy in use is refetched when half of its max_age (at most a day) has passed, so it never
 *   expires while mail still flows to the domain, even when the policy host is down for a while.
 */
import { join } from "node:path";
import { type Clock, errorMessage, systemClock } from "../lib/index.ts";
import type { Resolver } from "../dns/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { domainFileName, ensureDir, readJsonFiles, removeFile, writeJsonAtomic } from "./_files.ts";
import { type HttpsDeps, httpsRequest } from "./_https.ts";
import { parseStsPolicy, parseStsRecord, type StsPolicy } from "./_sts.ts";

export type StsFailure = "sts-policy-fetch-error" | "sts-policy-invalid" | "sts-webpki-invalid";

export type StsLookup =
  /** No policy: no (valid) `_mta-sts` record and nothing cached, or a cached `mode: none`. */
  | { kind: "none"; detail: string }
  | { kind: "policy"; id: string; policy: StsPolicy; fetchedMs: number; expiresMs: number }
  /** A record announces a policy that could not be had, and nothing is cached: deliver without one. */
  | { kind: "failed"; failure: StsFailure; detail: string };

export interface StsOptions {
  /** `<spool>/tls/sts` */
  dir: string;
  resolver: Resolver;
  https: HttpsDeps;
  /** 443; tests point it at their loopback server. */
  port: number;
  ca?: string;
  fetchTimeoutMs: number;
  maxPolicyBytes: number;
  /** A failed fetch is not repeated for this long (the cached policy, if any, serves meanwhile). */
  retryAfterFailureMs?: number;
  clock?: Clock;
  log: Logger;
  metrics?: Metrics;
}

interface Entry {
  domain: string;
  id: string;
  policy: StsPolicy;
  fetchedMs: number;
  expiresMs: number;
  /** Used since it was fetched (refresh only what mail still goes to). Not persisted. */
  used: boolean;
  /** After a failed refresh, the next try is not before this. Not persisted. */
  retryAtMs?: number;
}

/** Refresh at half of max_age, and at least daily (RFC 8461 §10.2 suggests daily checks). */
const MAX_REFRESH_INTERVAL_MS = 86_400_000;

/** Where a domain publishes its MTA-STS record (RFC 8461 §3.1). */
function stsRecordName(domain: string): string {
  return `_mta-sts.${domain}`;
}

export class StsPolicies {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<StsLookup>>();
  /** When a fetch for the domain last failed (no retry before `retryAfterFailureMs`). */
  private readonly failedAt = new Map<string, { atMs: number; lookup: StsLookup }>();
  private readonly clock: Clock;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** While the refresh pass runs, fetches do not re-arm the timer (the pass does, once, at its end). */
  private refreshing = false;
  private closed = false;
  private readonly m;

  constructor(private readonly opts: StsOptions) {
    this.clock = opts.clock ?? systemClock;
    const mt = opts.metrics;
    this.m = mt
      ? {
          fetches: mt.counter("mta_tlspolicy_sts_fetches_total", "MTA-STS policy fetches, by outcome"),
          cached: mt.gauge("mta_tlspolicy_sts_policies", "MTA-STS policies in the cache", (set) =>
            set(this.entries.size),
          ),
        }
      : undefined;
  }

  /** Loads the cache from disk (expired and unreadable files are removed) and starts the refresh timer. */
  open(): { loaded: number; dropped: number } {
    ensureDir(this.opts.dir);
    const { files, bad } = readJsonFiles(this.opts.dir);
    let dropped = 0;
    const now = this.clock.now();
    for (const name of bad) {
      this.opts.log.warn("unreadable MTA-STS cache file removed", { file: join(this.opts.dir, name) });
      removeFile(this.opts.dir, name);
      dropped++;
    }
    for (const { name, value } of files) {
      const e = entryFrom(value);
      if (!e || e.expiresMs <= now || domainFileName(e.domain) !== name) {
        removeFile(this.opts.dir, name);
        dropped++;
        continue;
      }
      // Loaded policies count as used once: mail may be queued for them.
      this.entries.set(e.domain, { ...e, used: true });
    }
    this.arm();
    return { loaded: this.entries.size, dropped };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  /** The cached policy of a domain, if any (for `mta queue show` and tests). */
  cached(
    domain: string,
  ): { id: string; policy: StsPolicy; fetchedMs: number; expiresMs: number } | undefined {
    const e = this.entries.get(domain.toLowerCase());
    return e && e.expiresMs > this.clock.now()
      ? { id: e.id, policy: e.policy, fetchedMs: e.fetchedMs, expiresMs: e.expiresMs }
      : undefined;
  }

  /**
   * Asks for the domain's `_mta-sts` record now, so that `lookup` finds it answered or on its way
   * (the resolver shares one question in flight): routing calls this with the MX question, and the
   * two go out together instead of one round trip after the other.
   */
  prefetch(domain: string): void {
    void this.opts.resolver.txt(stsRecordName(domain.toLowerCase()));
  }

  /** The policy that applies to mail for `domain` now (RFC 8461 §5.1). */
  async lookup(domain: string): Promise<StsLookup> {
    const d = domain.toLowerCase();
    const now = this.clock.now();
    let e = this.entries.get(d);
    if (e && e.expiresMs <= now) {
      this.forget(d);
      e = undefined;
    }
    const txt = await this.opts.resolver.txt(stsRecordName(d));
    const record =
      txt.kind === "txt"
        ? parseStsRecord(txt.records)
        : { error: txt.kind === "error" ? `TXT lookup: ${txt.error}` : `no _mta-sts record (${txt.kind})` };
    if (e) {
      if (!e.used) {
        e.used = true;
        this.arm(); // its refresh is now due before its expiry
      }
      // A new id: fetch now, keep the cached policy if that fails (§5.1).
      if ("id" in record && record.id !== e.id) {
        const r = await this.fetchOnce(d, record.id);
        if (r.kind === "policy" || r.kind === "none") return r;
        this.opts.log.warn("MTA-STS policy refetch failed; the cached policy stays in force", {
          domain: d,
          reason: r.detail,
        });
      }
      return this.asLookup(e);
    }
    if ("error" in record) return { kind: "none", detail: record.error };
    return this.fetchOnce(d, record.id);
  }

  private asLookup(e: Entry): StsLookup {
    if (e.policy.mode === "none") return { kind: "none", detail: "policy mode is none" };
    return { kind: "policy", id: e.id, policy: e.policy, fetchedMs: e.fetchedMs, expiresMs: e.expiresMs };
  }

  /** One fetch per domain at a time; a recent failure is answered from memory. */
  private fetchOnce(domain: string, id: string): Promise<StsLookup> {
    const failed = this.failedAt.get(domain);
    if (failed && this.clock.now() - failed.atMs < (this.opts.retryAfterFailureMs ?? 60_000))
      return Promise.resolve(failed.lookup);
    const running = this.inflight.get(domain);
    if (running) return running;
    const p = this.fetch(domain, id).finally(() => this.inflight.delete(domain));
    this.inflight.set(domain, p);
    return p;
  }

  private async fetch(domain: string, id: string): Promise<StsLookup> {
    const host = `mta-sts.${domain}`;
    const r = await httpsRequest(this.opts.https, {
      method: "GET",
      host,
      port: this.opts.port,
      path: "/.well-known/mta-sts.txt",
      headers: { Accept: "text/plain" },
      ...(this.opts.ca !== undefined ? { ca: this.opts.ca } : {}),
      timeoutMs: this.opts.fetchTimeoutMs,
      maxBodyBytes: this.opts.maxPolicyBytes,
    });
    const fail = (failure: StsFailure, detail: string): StsLookup => {
      this.m?.fetches.inc({ outcome: failure });
      const lookup: StsLookup = {
        kind: "failed",
        failure,
        detail: `https://${host}/.well-known/mta-sts.txt: ${detail}`,
      };
      this.failedAt.set(domain, { atMs: this.clock.now(), lookup });
      return lookup;
    };
    if (!r.ok) return fail(r.stage === "tls" ? "sts-webpki-invalid" : "sts-policy-fetch-error", r.detail);
    // §3.3: only a 200 is a policy; a redirect is not followed.
    if (r.status !== 200) return fail("sts-policy-fetch-error", `HTTP ${r.status}`);
    const type = (r.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
    if (type !== "text/plain")
      return fail("sts-policy-invalid", `Content-Type ${JSON.stringify(type)} is not text/plain`);
    const policy = parseStsPolicy(r.body.toString("utf8"));
    if ("error" in policy) return fail("sts-policy-invalid", policy.error);
    this.m?.fetches.inc({ outcome: "ok" });
    this.failedAt.delete(domain);
    const now = this.clock.now();
    const e: Entry = {
      domain,
      id,
      policy,
      fetchedMs: now,
      expiresMs: now + policy.maxAgeS * 1000,
      used: false,
    };
    if (policy.maxAgeS > 0) {
      this.entries.set(domain, e);
      this.persist(e);
      if (!this.refreshing) this.arm();
    } else this.forget(domain);
    this.opts.log.info("MTA-STS policy fetched", {
      domain,
      id,
      mode: policy.mode,
      maxAgeS: policy.maxAgeS,
      mx: policy.mx,
    });
    return this.asLookup(e);
  }

  private persist(e: Entry): void {
    try {
      writeJsonAtomic(this.opts.dir, domainFileName(e.domain), {
        domain: e.domain,
        id: e.id,
        fetchedMs: e.fetchedMs,
        expiresMs: e.expiresMs,
        policy: e.policy,
      });
    } catch (err) {
      // The policy still applies from memory; it only would not survive a restart.
      this.opts.log.warn("MTA-STS policy not saved", { domain: e.domain, error: errorMessage(err) });
    }
  }

  private forget(domain: string): void {
    if (!this.entries.delete(domain)) return;
    try {
      removeFile(this.opts.dir, domainFileName(domain));
    } catch (err) {
      this.opts.log.warn("MTA-STS cache file not removed", { domain, error: errorMessage(err) });
    }
  }

  private refreshAt(e: Entry): number {
    const due = e.fetchedMs + Math.min((e.expiresMs - e.fetchedMs) / 2, MAX_REFRESH_INTERVAL_MS);
    return Math.max(due, e.retryAtMs ?? 0);
  }

  /** Sets the timer for the next refresh (or expiry) that is due. */
  private arm(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    let next = Number.POSITIVE_INFINITY;
    for (const e of this.entries.values()) next = Math.min(next, e.used ? this.refreshAt(e) : e.expiresMs);
    if (next === Number.POSITIVE_INFINITY) return;
    const delay = Math.max(1000, next - this.clock.now());
    this.timer = setTimeout(() => void this.refreshDue(), Math.min(delay, 2 ** 31 - 1));
    this.timer.unref?.();
  }

  private async refreshDue(): Promise<void> {
    this.refreshing = true;
    try {
      await this.refreshPass();
    } finally {
      this.refreshing = false;
    }
    this.arm();
  }

  private async refreshPass(): Promise<void> {
    const now = this.clock.now();
    for (const e of [...this.entries.values()]) {
      if (e.expiresMs <= now) {
        this.forget(e.domain);
        continue;
      }
      if (!e.used || this.refreshAt(e) > now) continue;
      const txt = await this.opts.resolver.txt(stsRecordName(e.domain));
      const record = txt.kind === "txt" ? parseStsRecord(txt.records) : undefined;
      if (!record || "error" in record) {
        // §5.1: without a record the cached policy stays until it expires; nothing to refresh from.
        e.used = false;
        continue;
      }
      const r = await this.fetchOnce(e.domain, record.id);
      if (r.kind === "failed") {
        e.retryAtMs = this.clock.now() + (this.opts.retryAfterFailureMs ?? 60_000);
        this.opts.log.warn("MTA-STS proactive refresh failed", { domain: e.domain, reason: r.detail });
      }
    }
  }
}

function entryFrom(v: unknown): Omit<Entry, "used"> | undefined {
  if (!v || typeof v !== "object") return undefined;
  const o = v as Record<string, unknown>;
  const p = o.policy as Record<string, unknown> | undefined;
  if (
    typeof o.domain !== "string" ||
    typeof o.id !== "string" ||
    typeof o.fetchedMs !== "number" ||
    typeof o.expiresMs !== "number" ||
    !p ||
    !Array.isArray(p.lines)
  )
    return undefined;
  // The stored lines are the policy as fetched: parse them again rather than trust the file's fields.
  const policy = parseStsPolicy((p.lines as unknown[]).map(String).join("\n"));
  if ("error" in policy) return undefined;
  return { domain: o.domain, id: o.id, policy, fetchedMs: o.fetchedMs, expiresMs: o.expiresMs };
}
