/**
 * The one disposition path: what an attempt's results, an expiry, a failure without a reply, or an
 * operator's bounce or delete does to a message.
 *
 * Owns: `Disposer.dispose`, in this order and nowhere else: (1) the outcome recorded in the spool,
 * (2) one delivery-log event per recipient it changed, (3) the DSN recipients collected and the DSN
 * queued (through the accept pipeline, see _dsn.ts), (4) the verdict handed back: `retry` at a time
 * or `done`. The caller (the scheduler, or `mta queue` on a stopped spool) acts on the verdict.
 * Also owns the recipient and DSN counters and the delay-warning decision.
 * Does not own: when the next attempt is (the caller's `retryAtMs`, from the site's retry list),
 * reply-driven site rules (scheduler/), DSN text (bounce/).
 * Invariants: nothing is logged or notified before the spool has the outcome (a failed record throws
 * and nothing else happens); a null sender never gets a DSN; NOTIFY is honoured; the verdict is
 * `retry` exactly when a recipient is still pending afterwards.
 * Bounce classes and automatic suppression (feedback/, through `Classifying`) are step (2): every
 * changed recipient's event carries its class, and a permanent bounce is offered to the suppression
 * list, only after the spool has the outcome.
 */
import { type DsnRecipient, diagnosticFromReply, statusFromReply, wantsDsn } from "../bounce/index.ts";
import { type Clock, systemClock } from "../lib/index.ts";
import type { Counter, Logger, Metrics } from "../observe/index.ts";
import { parseStoredReply, replyLine, type SmtpReply } from "../smtp/index.ts";
import { type DsnInjector, queueDsn } from "./_dsn.ts";
import type {
  Classifying,
  DisposableMessage,
  DispositionSettings,
  DispositionSpool,
  MessageEvent,
  Outcome,
  RecipientTls,
  Verdict,
} from "./_types.ts";
import { RESULT, type ResultKind } from "./_vocabulary.ts";

export const ADMIN_BOUNCE_REPLY: SmtpReply = {
  code: 554,
  enhanced: "5.0.0",
  lines: ["message bounced by the administrator"],
};
const ADMIN_DELETE_REPLY: SmtpReply = {
  code: 554,
  enhanced: "5.0.0",
  lines: ["message deleted by the administrator"],
};

export interface DisposeInput {
  slot: number;
  message: DisposableMessage;
  body: Uint8Array;
  outcome: Outcome;
  /** When pending recipients are tried again after `attempts` attempts (results only). */
  retryAtMs?: (attempts: number) => number;
  /** A delay warning was already sent for this message. */
  warned?: boolean;
  /** The site's last error, for an expiry without a stored reply. */
  lastError?: string;
}

export interface Disposed {
  verdict: Verdict;
  /** Recipients whose state this outcome changed (0: nothing was pending). */
  recipients: number;
  /** A delay warning went out now. */
  warned: boolean;
  /** The DSN being queued: true when one was. Await it before calling the message handled. */
  dsn: Promise<boolean>;
}

export interface DisposerOptions {
  spool: DispositionSpool;
  /** How DSNs are queued; absent: they are logged as lost (read-only spool). */
  dsn?: DsnInjector;
  settings: DispositionSettings;
  onEvent?(e: MessageEvent): void;
  /** Bounce classes on events and suppression of permanent bounces; absent: events carry no class. */
  classifying?: Classifying;
  log: Logger;
  metrics?: Metrics;
  clock?: Clock;
}

interface Change {
  index: number;
  kind: ResultKind;
  reply: SmtpReply;
  /** What the spool keeps as the recipient's last reply. */
  stored: string;
}

export class Disposer {
  private settings: DispositionSettings;
  private readonly clock: Clock;
  private readonly m: { attempts: Counter; recipients: Counter; dsns: Counter; expired: Counter } | undefined;

  constructor(private readonly opts: DisposerOptions) {
    this.settings = opts.settings;
    this.clock = opts.clock ?? systemClock;
    const mt = opts.metrics;
    if (mt)
      this.m = {
        attempts: mt.counter("mta_scheduler_attempts_total", "Delivery attempts, by result"),
        recipients: mt.counter("mta_scheduler_recipients_total", "Recipient results, by result"),
        dsns: mt.counter("mta_scheduler_dsns_total", "DSNs queued, by action"),
        expired: mt.counter("mta_scheduler_expired_messages_total", "Messages expired after max age"),
      };
  }

  /** New settings (a reload): the next disposition uses them. */
  update(settings: DispositionSettings): void {
    this.settings = settings;
  }

  async dispose(input: DisposeInput): Promise<Disposed> {
    const { message: msg, outcome } = input;
    const now = this.clock.now();
    const changes = this.changesOf(input, now);
    if (changes.length === 0)
      return { verdict: { kind: "done" }, recipients: 0, warned: false, dsn: Promise.resolve(false) };
    const attempted = outcome.kind === "attempt" || outcome.kind === "failed";
    const attempts = attempted ? msg.attempts + 1 : msg.attempts;
    const byIndex = new Map(changes.map((c) => [c.index, c]));
    const stillPending = msg.recipients.some(
      (r, i) => r.state === "pending" && RESULT[byIndex.get(i)?.kind ?? "transient"].state === "pending",
    );
    let nextMs: number | undefined;
    if (stillPending) {
      if (!input.retryAtMs)
        throw new RangeError(`${outcome.kind} left recipients pending without a retry time`);
      nextMs = input.retryAtMs(attempts);
    }
    // An attempt's TLS goes with each recipient it touched: `mta queue show` names it (issue 17).
    const tls = outcome.kind === "attempt" ? recipientTls(outcome.result.tls) : undefined;
    // (1) The spool first: if this throws, nothing below happens.
    await this.opts.spool.recordOutcome(input.slot, {
      recipients: changes.map((c) => ({
        index: c.index,
        state: RESULT[c.kind].state,
        reply: c.stored,
        ...(tls ? { tls } : {}),
      })),
      attempts,
      ...(nextMs !== undefined ? { nextAttemptMs: nextMs } : {}),
      ...(outcome.kind === "attempt" ? {} : { reason: reasonOf(outcome) }),
    });
    // (2) The delivery log and counters.
    this.count(outcome, changes);
    const dsn: DsnRecipient[] = [];
    for (const c of changes) {
      const rc = msg.recipients[c.index]!;
      this.event(input, c, attempts, now);
      const action = RESULT[c.kind].dsn;
      if (action && wantsDsn(rc.notify, action, msg.sender)) dsn.push(this.dsnEntry(input, c, now));
    }
    let warned = false;
    if (nextMs !== undefined && this.delayWarningDue(input, now)) {
      warned = true;
      for (const c of changes) {
        const rc = msg.recipients[c.index]!;
        if (c.kind !== "transient" || !wantsDsn(rc.notify, "delayed", msg.sender)) continue;
        const entry: DsnRecipient = {
          address: rc.address,
          action: "delayed",
          status: statusFromReply(c.reply, "transient"),
          diagnostic: diagnosticFromReply(c.reply),
          lastAttemptMs: now,
          willRetryUntilMs: msg.arrivalMs + this.settings.maxAgeMs,
        };
        if (rc.orcpt) entry.orcpt = rc.orcpt;
        dsn.push(entry);
        this.emit({
          type: "delay-warning",
          id: msg.id,
          destination: msg.destination,
          sender: msg.sender,
          recipient: rc.address,
        });
      }
    }
    // (3) The DSN, through the accept pipeline.
    const s = this.settings;
    const queued =
      dsn.length === 0
        ? Promise.resolve(false)
        : queueDsn(
            {
              injector: this.opts.dsn,
              hostname: s.hostname,
              maxOriginalBytes: s.dsnMaxOriginalBytes,
              onEvent: (e) => this.emit(e),
              log: this.opts.log,
              counter: this.m?.dsns,
            },
            msg,
            input.body,
            dsn,
            now,
            outcome.kind === "bounced" ? "admin-bounce" : undefined,
          );
    // (4) The verdict.
    return {
      verdict: nextMs === undefined ? { kind: "done" } : { kind: "retry", atMs: nextMs },
      recipients: changes.length,
      warned,
      dsn: queued,
    };
  }

  /** The recipients this outcome changes, with their result and reply. */
  private changesOf(input: DisposeInput, now: number): Change[] {
    const { message: msg, outcome } = input;
    const pending = msg.recipients.flatMap((r, index) => (r.state === "pending" ? [{ r, index }] : []));
    switch (outcome.kind) {
      case "attempt":
        return outcome.result.recipients
          .filter((r) => msg.recipients[r.index]?.state === "pending")
          .map((r) => ({ index: r.index, kind: r.kind, reply: r.reply, stored: replyLine(r.reply) }));
      case "failed":
        return pending.map(({ index }) => ({
          index,
          kind: "permanent" as const,
          reply: outcome.reply,
          stored: replyLine(outcome.reply),
        }));
      case "expired": {
        const text = expiryText(now - msg.arrivalMs);
        return pending.map(({ r, index }) => {
          const last = parseStoredReply(r.lastReply) ?? parseStoredReply(input.lastError);
          return {
            index,
            kind: "expired" as const,
            reply: {
              code: last?.code ?? 421,
              enhanced: "4.4.7",
              lines: [last ? `${text}; last reply: ${replyLine(last)}` : text],
            },
            stored: r.lastReply ?? `421 4.4.7 ${text}`,
          };
        });
      }
      case "bounced":
        return pending.map(({ index }) => ({
          index,
          kind: "bounced" as const,
          reply: ADMIN_BOUNCE_REPLY,
          stored: replyLine(ADMIN_BOUNCE_REPLY),
        }));
      case "deleted":
        return pending.map(({ index }) => ({
          index,
          kind: "deleted" as const,
          reply: ADMIN_DELETE_REPLY,
          stored: replyLine(ADMIN_DELETE_REPLY),
        }));
    }
  }

  private count(outcome: Outcome, changes: Change[]): void {
    const m = this.m;
    if (!m) return;
    for (const c of changes) m.recipients.inc({ result: RESULT[c.kind].metric });
    if (outcome.kind === "attempt") {
      const kinds = new Set(changes.map((c) => c.kind));
      m.attempts.inc({ result: kinds.size === 1 ? [...kinds][0]! : "mixed" });
    } else if (outcome.kind === "expired") {
      m.expired.inc();
      m.attempts.inc({ result: "expired" });
    } else if (outcome.kind === "failed")
      m.attempts.inc({ result: outcome.reason === "route" ? "route-permanent" : "rule-bounce" });
  }

  private event(input: DisposeInput, c: Change, attempts: number, now: number): void {
    const { message: msg, outcome } = input;
    const rc = msg.recipients[c.index]!;
    const e: MessageEvent = {
      type: RESULT[c.kind].event,
      id: msg.id,
      destination: msg.destination,
      sender: msg.sender,
      recipient: rc.address,
    };
    if (outcome.kind === "attempt") {
      const r = outcome.result;
      if (r.mx) {
        e.mx = r.mx.name;
        e.ip = r.mx.ip;
      }
      if (r.tls) e.tls = r.tls;
    }
    if (c.kind !== "deleted") {
      e.code = c.reply.code;
      if (c.reply.enhanced) e.enhanced = c.reply.enhanced;
      e.text = c.reply.lines.join(" ");
      e.attempt = attempts;
    }
    e.queueTimeMs = now - msg.arrivalMs;
    e.size = msg.sizeBytes;
    if (outcome.kind === "failed") e.reason = outcome.reason;
    if (c.kind === "bounced" && rc.lastReply) e.lastReply = rc.lastReply;
    const cl = this.opts.classifying;
    if (cl && c.kind !== "delivered" && c.kind !== "deleted") {
      const cls = safely(this.opts.log, () =>
        cl.classOf(e.type, c.kind === "bounced" ? (rc.lastReply ?? c.reply) : c.reply),
      );
      if (cls !== undefined) {
        e.class = cls;
        if (c.kind === "permanent") cl.bounced(rc.address, msg.sender, cls);
      }
    }
    this.emit(e);
  }

  private dsnEntry(input: DisposeInput, c: Change, now: number): DsnRecipient {
    const { message: msg, outcome } = input;
    const rc = msg.recipients[c.index]!;
    let entry: DsnRecipient;
    switch (c.kind) {
      case "delivered":
        entry = {
          address: rc.address,
          action: "delivered",
          status: c.reply.enhanced ?? "2.0.0",
          diagnostic: diagnosticFromReply(c.reply),
          lastAttemptMs: now,
        };
        break;
      case "expired": {
        const last = parseStoredReply(rc.lastReply) ?? parseStoredReply(input.lastError);
        // RFC 3463 X.4.7: delivery time expired.
        entry = {
          address: rc.address,
          action: "failed",
          status: "5.4.7",
          diagnostic: last ? diagnosticFromReply(last) : `smtp; ${c.reply.lines[0]}`,
        };
        break;
      }
      case "bounced":
        entry = {
          address: rc.address,
          action: "failed",
          status: statusFromReply(c.reply, "permanent"),
          diagnostic: rc.lastReply ? `smtp; ${rc.lastReply}` : diagnosticFromReply(c.reply),
        };
        break;
      default:
        entry = {
          address: rc.address,
          action: "failed",
          status: statusFromReply(c.reply, "permanent"),
          diagnostic: diagnosticFromReply(c.reply),
          lastAttemptMs: now,
        };
    }
    if (rc.orcpt) entry.orcpt = rc.orcpt;
    if (outcome.kind === "attempt" && outcome.result.mx) entry.remoteMta = `dns; ${outcome.result.mx.name}`;
    return entry;
  }

  private delayWarningDue(input: DisposeInput, now: number): boolean {
    const w = this.settings.delayWarningMs;
    return w > 0 && !input.warned && now - input.message.arrivalMs >= w;
  }

  private emit(e: MessageEvent): void {
    if (!this.opts.onEvent) return;
    try {
      this.opts.onEvent(e);
    } catch (err) {
      this.opts.log.error("delivery event handler failed", { error: String(err) });
    }
  }
}

/** A classifier that throws (a bug) costs the event its class, never the disposition. */
function safely<T>(log: Logger, fn: () => T): T | undefined {
  try {
    return fn();
  } catch (err) {
    log.error("bounce classification failed", { error: String(err) });
    return undefined;
  }
}

function expiryText(ageMs: number): string {
  return `message expired after ${Math.round(ageMs / 60_000)} minutes in the queue`;
}

function reasonOf(o: Exclude<Outcome, { kind: "attempt" }>): string {
  switch (o.kind) {
    case "failed":
      return o.reason;
    case "expired":
      return "expired";
    case "bounced":
      return "admin-bounce";
    case "deleted":
      return "admin-delete";
  }
}

/** The part of an attempt's TLS the spool keeps per recipient (the failures stay the log's). */
function recipientTls(t: MessageEvent["tls"]): RecipientTls | undefined {
  if (!t) return undefined;
  return {
    policy: t.policy,
    ...(t.version !== undefined ? { version: t.version } : {}),
    ...(t.cipher !== undefined ? { cipher: t.cipher } : {}),
    verified: t.verified,
  };
}
