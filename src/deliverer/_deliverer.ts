/**
 * One delivery attempt: one message to one destination, over pooled or fresh connections.
 *
 * Owns: host order (next host on connection failure or 421), the opportunistic-TLS plain retry and
 * remembered broken TLS (a host whose handshake failed goes plain for `rememberBrokenTlsMs`, like
 * KumoMTA's remember_broken_tls, but never when its policy requires TLS), the retry of a dead reused
 * connection on a fresh one (once), the result of the attempt with each new connection's TLS report.
 * Does not own: DNS (dns/), retries over time and bounces (scheduler/, bounce/).
 * Invariants: `deliver` never throws for remote behaviour and returns one result per recipient.
 */
import { createHash } from "node:crypto";
import { type Clock, systemClock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { ConnectionPool } from "./_pool.ts";
import { reply, replyText, type SmtpReply } from "../smtp/index.ts";
import type { HostTlsPolicy, TlsSessionReport } from "./_tls.ts";
import {
  type AttemptTarget,
  type OpenSession,
  type OutboundMessage,
  openSession,
  type RecipientResult,
  type Timeouts,
} from "./_session.ts";
import { planContent, reset, transaction } from "./_transaction.ts";

/** The TLS of the connection that carried the message, as the delivery log shows it. */
export interface AttemptTls {
  /** The host policy's name: dane, sts-enforce, sts-testing, required, opportunistic, off, ... */
  policy: string;
  /** TLS version and cipher; absent when the message went in plain text. */
  version?: string;
  cipher?: string;
  /** The peer passed the policy's certificate check (DANE, MTA-STS, tls_verify). */
  verified: boolean;
  /** TLS failures on the way (other hosts, or reported-only under MTA-STS testing): RFC 8460 types. */
  failures?: { result: string; mx: string; ip: string }[];
}

export interface AttemptResult {
  /** One per recipient of the message, always. */
  recipients: RecipientResult[];
  /** No host could be reached / every greeting refused (a site-level failure). */
  connectionFailed: boolean;
  mx?: { name: string; ip: string; port: number };
  tls?: AttemptTls;
  /** Every new connection of this attempt that got as far as EHLO, with what became of its TLS. */
  tlsSessions?: TlsSessionReport[];
  durationMs: number;
  /**
   * The connection is being retired (QUIT sent, its 221 not yet read): resolves once the socket is
   * closed. The caller still counts it against the destination's limit until then.
   */
  closing?: Promise<void>;
}

export interface DelivererOptions {
  timeouts: Timeouts;
  maxMessagesPerConnection: number;
  idleTimeoutMs: number;
  maxIdlePerKey?: number;
  /** Which remote addresses may be connected to (default: any); a refused one is a site failure. */
  allowAddress?: (ip: string) => boolean;
  /** After a failed opportunistic handshake, connect to that host in plain text for this long (0: never). */
  rememberBrokenTlsMs?: number;
  log: Logger;
  metrics?: Metrics;
  clock?: Clock;
}

/** RFC 5321 §4.5.3.2 client timeouts (connect and EHLO are ours; the RFC leaves them open). */
export const RFC5321_TIMEOUTS: Timeouts = {
  connectMs: 30_000,
  greetingMs: 5 * 60_000,
  ehloMs: 5 * 60_000,
  mailMs: 5 * 60_000,
  rcptMs: 5 * 60_000,
  dataInitMs: 2 * 60_000,
  dataBlockMs: 3 * 60_000,
  dataDoneMs: 10 * 60_000,
  rsetMs: 60_000,
  quitMs: 10_000,
  idleMs: 5 * 60_000,
};

/**
 * A pooled session may carry a message only for a target with the same identity: the same source,
 * host, TLS policy (a host's own, from DANE or MTA-STS, by its key), EHLO name and credentials. The
 * password is part of it (as a digest, so the key never holds it in clear): a route with the right
 * user name and a wrong password must fail its own AUTH, not ride on a session another route
 * authenticated.
 */
function poolKey(target: AttemptTarget, host: AttemptTarget["hosts"][number]): string {
  const auth = target.auth
    ? `${target.auth.username}\0${createHash("sha256").update(target.auth.password).digest("base64")}`
    : "";
  return [
    target.sourceAddress ?? "*",
    host.ip,
    host.port,
    host.tls ? host.tls.key : target.tls,
    target.tlsVerify ? "v" : "nv",
    target.ehloName,
    auth,
  ].join("|");
}

export class Deliverer {
  private readonly pool: ConnectionPool;
  private readonly clock: Clock;
  private active = 0;
  private closed = false;
  /** ip:port → until when its TLS is remembered as broken. */
  private readonly brokenTls = new Map<string, number>();
  private readonly m;

  constructor(private readonly opts: DelivererOptions) {
    this.clock = opts.clock ?? systemClock;
    this.pool = new ConnectionPool(
      {
        maxMessagesPerConnection: Math.max(1, opts.maxMessagesPerConnection),
        idleTimeoutMs: opts.idleTimeoutMs,
        maxIdlePerKey: opts.maxIdlePerKey ?? 16,
      },
      opts.timeouts,
    );
    const mt = opts.metrics;
    this.m = mt
      ? {
          connections: mt.counter(
            "mta_deliverer_connections_total",
            "Outbound connections opened, by outcome",
          ),
          reused: mt.counter(
            "mta_deliverer_connections_reused_total",
            "Messages sent on a reused connection",
          ),
          recipients: mt.counter("mta_deliverer_recipients_total", "Recipient results, by kind"),
          tlsSessions: mt.counter(
            "mta_deliverer_tls_sessions_total",
            "New outbound connections by TLS policy and result (success, plain, or an RFC 8460 result type)",
          ),
          rememberedBroken: mt.counter(
            "mta_deliverer_tls_remembered_broken_total",
            "Connections sent in plain text because the host's TLS was remembered as broken",
          ),
        }
      : undefined;
    mt?.gauge("mta_deliverer_connections_active", "Outbound connections in use", (set) => set(this.active));
    mt?.gauge("mta_deliverer_connections_idle", "Idle pooled outbound connections", (set) =>
      set(this.pool.size()),
    );
  }

  activeConnections(): number {
    return this.active;
  }

  idleConnections(): number {
    return this.pool.size();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.pool.close();
  }

  /** One attempt = one message to one destination. Never throws for remote behaviour. */
  async deliver(target: AttemptTarget, msg: OutboundMessage): Promise<AttemptResult> {
    const started = this.clock.now();
    const result = await this.attempt(target, msg);
    result.durationMs = this.clock.now() - started;
    for (const r of result.recipients) this.m?.recipients.inc({ kind: r.kind });
    this.opts.log.debug("delivery attempt", {
      message: msg.id,
      mx: result.mx?.name,
      ip: result.mx?.ip,
      connectionFailed: result.connectionFailed,
      results: result.recipients.map((r) => `${r.index}:${r.kind}:${r.reply.code}`).join(" "),
    });
    return result;
  }

  private async attempt(
    target: AttemptTarget,
    msg: OutboundMessage,
  ): Promise<Omit<AttemptResult, "durationMs"> & { durationMs: number }> {
    const t = this.opts.timeouts;
    let siteFailure: SmtpReply = reply(421, "4.4.1", "no mail exchanger to try");
    let policyFailure: SmtpReply | undefined;
    const everyone = (kind: RecipientResult["kind"], r: SmtpReply) =>
      msg.recipients.map((rc) => ({ index: rc.index, kind, reply: r }));
    if (msg.recipients.length === 0) return { recipients: [], connectionFailed: false, durationMs: 0 };

    const sessions: TlsSessionReport[] = [];
    const failures: NonNullable<AttemptTls["failures"]> = [];
    const note = (r: TlsSessionReport | undefined) => {
      if (!r) return;
      sessions.push(r);
      this.m?.tlsSessions.inc({ policy: r.policy, result: r.result });
      if (r.result !== "success" && r.result !== "plain")
        failures.push({ result: r.result, mx: r.host, ip: r.ip });
    };
    const finish = (out: Omit<AttemptResult, "durationMs"> & { durationMs: number }) => {
      if (sessions.length > 0) out.tlsSessions = sessions;
      if (failures.length > 0) {
        const policy = out.tls?.policy ?? sessions[sessions.length - 1]!.policy;
        out.tls = { ...(out.tls ?? { policy, verified: false }), failures };
      }
      return out;
    };

    for (const host of target.hosts) {
      if (this.opts.allowAddress && !this.opts.allowAddress(host.ip)) {
        siteFailure = reply(421, "4.4.1", `${host.ip}: address not allowed by this process's policy`);
        continue;
      }
      const key = poolKey(target, host);
      // A pooled connection first; if it turns out dead (RSET fails, or it dies before MAIL's reply),
      // the message goes once more on a fresh connection to the same host.
      const pooled = this.pool.take(key);
      if (pooled) {
        this.active++;
        try {
          // After a complete transaction the server's state is already reset: no RSET round trip.
          if (pooled.clean || (await reset(pooled, t))) {
            this.m?.reused.inc();
            const out = await this.run(key, pooled, msg, target);
            if (out) return finish(out);
          }
        } finally {
          this.active--;
        }
      }

      const mayGoPlain =
        (host.tls?.starttls ?? (target.tls === "required" ? "require" : "try")) !== "require";
      const remembered = mayGoPlain && this.isBrokenTls(host);
      if (remembered) this.m?.rememberedBroken.inc();
      let opened = await this.openCounted(host, target, remembered);
      if (opened.kind === "tls-failed") {
        note(opened.tlsReport);
        this.opts.log.info("TLS handshake failed, retrying in plain text", {
          ip: host.ip,
          reason: replyText(opened.reply),
        });
        this.rememberBrokenTls(host);
        opened = await this.openCounted(host, target, true);
      }
      if (remembered && opened.kind === "open")
        opened.tlsReport = {
          host: host.name,
          ip: host.ip,
          policy: host.tls?.name ?? target.tls,
          result: "plain",
          detail: "TLS remembered as broken",
        };
      note(opened.tlsReport);
      if (opened.kind === "unreachable" || opened.kind === "tls-failed") {
        siteFailure = opened.reply;
        continue;
      }
      if (opened.kind === "policy") {
        policyFailure = opened.reply;
        continue;
      }
      this.active++;
      try {
        const out = await this.run(key, opened.session, msg, target);
        if (out) return finish(out);
        siteFailure = reply(421, "4.4.2", `${host.ip}: connection lost before MAIL was answered`);
      } finally {
        this.active--;
      }
    }
    if (policyFailure)
      return finish({
        recipients: everyone("transient", policyFailure),
        connectionFailed: false,
        durationMs: 0,
      });
    return finish({ recipients: everyone("transient", siteFailure), connectionFailed: true, durationMs: 0 });
  }

  private isBrokenTls(host: { ip: string; port: number }): boolean {
    const until = this.brokenTls.get(`${host.ip}:${host.port}`);
    if (until === undefined) return false;
    if (until > this.clock.now()) return true;
    this.brokenTls.delete(`${host.ip}:${host.port}`);
    return false;
  }

  private rememberBrokenTls(host: { ip: string; port: number }): void {
    const ms = this.opts.rememberBrokenTlsMs ?? 0;
    if (ms > 0) this.brokenTls.set(`${host.ip}:${host.port}`, this.clock.now() + ms);
  }

  private async openCounted(
    host: { name: string; ip: string; port: number; tls?: HostTlsPolicy },
    target: AttemptTarget,
    plainOnly: boolean,
  ) {
    const r = await openSession(host, target, this.opts.timeouts, { plainOnly });
    this.m?.connections.inc({ outcome: r.kind });
    return r;
  }

  /** Runs the transaction; undefined when the site failed before anything was accepted (try on). */
  private async run(key: string, s: OpenSession, msg: OutboundMessage, target: AttemptTarget) {
    const tls: AttemptTls | undefined = s.tlsPolicy
      ? {
          policy: s.tlsPolicy.name,
          ...(s.conn.tls ? { version: s.conn.tls.protocol, cipher: s.conn.tls.cipher } : {}),
          verified: s.tlsPolicy.verified,
        }
      : s.conn.tls
        ? {
            policy: "opportunistic",
            version: s.conn.tls.protocol,
            cipher: s.conn.tls.cipher,
            verified: false,
          }
        : undefined;
    const base = {
      mx: { name: s.host.name, ip: s.host.ip, port: s.host.port },
      ...(tls ? { tls } : {}),
      connectionFailed: false,
      durationMs: 0,
    };
    const plan = planContent(s.caps, msg);
    if (Array.isArray(plan)) {
      const { closing } = await this.keepOrQuit(key, s, target);
      return { ...base, recipients: plan, ...(closing ? { closing } : {}) };
    }
    const quitAfter = target.keepConnection && !this.closed ? () => !target.keepConnection!() : undefined;
    const out = await transaction(s, msg, plan, this.opts.timeouts, quitAfter);
    if (out.kind === "site") {
      s.conn.destroy();
      return undefined;
    }
    let closing: Promise<void> | undefined;
    if (out.quitting) {
      // QUIT went with the message: read its 221 (RFC 5321 §4.1.1.10) without holding the attempt.
      const c = s.conn;
      closing = c.read(this.opts.timeouts.quitMs).then(
        () => c.destroy(),
        () => c.destroy(),
      );
    } else if (out.reusable) closing = (await this.keepOrQuit(key, s, target)).closing;
    else s.conn.destroy();
    return { ...base, recipients: out.results, ...(closing ? { closing } : {}) };
  }

  /**
   * Pools the connection, or QUITs it. A QUIT because nothing more is coming for the destination
   * does not hold the attempt for the 221: the promise of its closing is returned, and the scheduler
   * counts the connection against the destination's limit until it resolves, so a destination never
   * has more connections open than its limit, not even while one is being retired.
   */
  private async keepOrQuit(
    key: string,
    s: OpenSession,
    target: AttemptTarget,
  ): Promise<{ closing?: Promise<void> }> {
    if (this.closed) {
      await s.conn.quit(this.opts.timeouts.quitMs);
      return {};
    }
    // Nothing more is coming for this destination: QUIT (RFC 5321 §4.1.1.10); the socket closes when
    // the 221 comes or after the QUIT timeout. (Wrapped: an async function would wait for it.)
    if (target.keepConnection && !target.keepConnection())
      return { closing: s.conn.quit(this.opts.timeouts.quitMs).catch(() => s.conn.destroy()) };
    await this.pool.release(key, s);
    return {};
  }
}
