/**
 * Event webhooks: delivery-log events POSTed as signed JSON batches, at least once, in log order.
 *
 * Owns: `WebhookDispatcher` (one per configured endpoint): the loop read → filter → POST → commit,
 * the HMAC signature, retries with exponential backoff and jitter, its metrics and health.
 * Does not own: the events (the delivery log file is the source: observe/deliveryLog.ts writes it),
 * the position on disk and rotation (_follow.ts).
 * Invariants: one batch in flight per endpoint, so events arrive in the order they were logged (and
 * so in order per message); the position is committed only after a 2xx, so a crash or a failed POST
 * sends the same events again (duplicates only then), never skips one; memory holds one batch at
 * most whatever the endpoint does (a dead endpoint only makes the lag on disk grow, visible in
 * `mta_webhook_lag_bytes` and /healthz); the dispatcher never runs inside a delivery's path, so a
 * slow endpoint cannot slow mail.
 *
 * Request: POST <url>, content-type application/json, body
 *   {"webhook":"<name>","events":[<delivery-log line>, ...]}
 * headers X-MTA-Webhook: <name>, X-MTA-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
 * "<t>.<body>")> (verify it over the raw body; refuse a t far from your clock to stop replays).
 */
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { errorMessage } from "../lib/index.ts";
import type { Counter, Logger, Metrics } from "../observe/index.ts";
import { LogFollower } from "./_follow.ts";

export interface WebhookOptions {
  name: string;
  url: string;
  secret: string;
  /** Event types to send; ["*"] = all. */
  events: readonly string[];
  batchSize: number;
  timeoutMs: number;
  maxRetryDelayMs: number;
  tlsVerify: boolean;
  caFile?: string;
}

export interface WebhookHealth {
  state: "idle" | "sending" | "retrying";
  lagBytes: number;
  consecutiveFailures: number;
  lastError?: string;
  lastSuccess?: string;
  nextRetryInMs?: number;
}

const MAX_BATCH_BYTES = 4 * 1024 * 1024;
const FIRST_RETRY_MS = 1000;
const POLL_MS = 1000;
/**
 * A batch that is not full waits this long for more events before it is sent: under load batches
 * fill up (a few POSTs a second instead of one per event-loop turn), when quiet an event waits at
 * most this long.
 */
const LINGER_MS = 200;

/** t=<unix>,v1=<hex>: what the receiver recomputes over the raw body. */
export function signature(secret: string, body: string, nowSec = Math.floor(Date.now() / 1000)): string {
  const mac = createHmac("sha256", secret).update(`${nowSec}.${body}`).digest("hex");
  return `t=${nowSec},v1=${mac}`;
}

/** The event type of a delivery-log line, read without parsing the whole line (it comes second). */
function typeOf(line: string): string | undefined {
  const m = /^\{"time":"[^"]*","type":"([a-z-]+)"/.exec(line);
  if (m) return m[1];
  try {
    const v = JSON.parse(line) as { type?: unknown };
    return typeof v.type === "string" ? v.type : undefined;
  } catch {
    return undefined;
  }
}

export class WebhookDispatcher {
  private readonly follower: LogFollower;
  private readonly wanted: Set<string> | undefined;
  private running = false;
  private stopped = false;
  private lingered = false;
  private lingerTimer: { timer: ReturnType<typeof setTimeout>; resolve: () => void } | undefined;
  private wake: (() => void) | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private inFlight: AbortController | undefined;
  private readonly tls: { rejectUnauthorized: boolean; ca?: string } | undefined;
  readonly health: WebhookHealth = { state: "idle", lagBytes: 0, consecutiveFailures: 0 };
  private readonly sent: Counter;
  private readonly batches: Counter;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly opts: WebhookOptions,
    deps: { logFile: string; stateDir: string; log: Logger; metrics: Metrics; random?: () => number },
  ) {
    this.log = deps.log;
    this.random = deps.random ?? Math.random;
    this.follower = new LogFollower(deps.logFile, join(deps.stateDir, `${opts.name}.pos`), (m, f) =>
      this.log.warn(m, { webhook: opts.name, ...f }),
    );
    this.wanted = opts.events.includes("*") ? undefined : new Set(opts.events);
    if (opts.url.startsWith("https:") && (!opts.tlsVerify || opts.caFile))
      this.tls = {
        rejectUnauthorized: opts.tlsVerify,
        ...(opts.caFile ? { ca: readFileSync(opts.caFile, "utf8") } : {}),
      };
    const m = deps.metrics;
    this.sent = m.counter(
      "mta_webhook_events_sent_total",
      "Events delivered to a webhook endpoint (2xx), by webhook",
    );
    this.batches = m.counter(
      "mta_webhook_batches_total",
      "POSTs to a webhook endpoint, by webhook and result (ok, error)",
    );
    m.gauge(
      "mta_webhook_lag_bytes",
      "Delivery-log bytes not yet delivered to a webhook endpoint, by webhook",
      (set) => set(this.health.lagBytes, { webhook: opts.name }),
    );
    m.gauge(
      "mta_webhook_consecutive_failures",
      "Failed POSTs in a row to a webhook endpoint, by webhook",
      (set) => set(this.health.consecutiveFailures, { webhook: opts.name }),
    );
  }

  private readonly log: Logger;
  private readonly random: () => number;

  get name(): string {
    return this.opts.name;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /** More lines may be in the file (the delivery log flushed). */
  poke(): void {
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        this.wake = undefined;
        if (this.timer) clearTimeout(this.timer);
        resolve();
      };
      this.timer = setTimeout(() => this.wake?.(), ms);
    });
  }

  /** A wait that only stop() cuts short (new lines do not: it is for them to gather). */
  private linger(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.lingerTimer = undefined;
        resolve();
      }, ms);
      this.lingerTimer = { timer, resolve };
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let batch: ReturnType<LogFollower["read"]>;
      try {
        batch = this.follower.read(this.opts.batchSize * 4, MAX_BATCH_BYTES);
      } catch (err) {
        this.log.error("webhook: cannot read the delivery log", {
          webhook: this.opts.name,
          error: errorMessage(err),
        });
        await this.sleep(POLL_MS);
        continue;
      }
      this.health.lagBytes = this.follower.lagBytes;
      // Filter; cut at batchSize events so that a batch never outgrows the endpoint's limit.
      const events: string[] = [];
      let next = batch.next;
      let consumed = 0;
      // A blank line, or one that is not an object, is passed over, never sent: a batch must stay JSON.
      for (const line of batch.lines) {
        const take =
          line.startsWith("{") &&
          line.endsWith("}") &&
          (this.wanted === undefined || this.wanted.has(typeOf(line) ?? ""));
        if (take && events.length === this.opts.batchSize) break;
        consumed++;
        if (take) events.push(line);
      }
      // Commit only what the batch covers: the lines after it are read again next time.
      if (consumed < batch.lines.length)
        next = { inode: batch.next.inode, offset: batch.ends[consumed - 1]! };
      if (batch.lines.length === 0) {
        this.health.state = this.health.consecutiveFailures > 0 ? "retrying" : "idle";
        await this.sleep(POLL_MS);
        continue;
      }
      if (events.length === 0) {
        this.follower.commit(next);
        continue;
      }
      if (events.length < this.opts.batchSize && !this.lingered && this.health.consecutiveFailures === 0) {
        this.lingered = true;
        await this.linger(LINGER_MS);
        continue;
      }
      this.lingered = false;
      this.health.state = "sending";
      const ok = await this.post(events);
      if (this.stopped && !ok) break;
      if (ok) {
        this.follower.commit(next);
        this.health.lagBytes = this.follower.lagBytes;
        this.sent.inc({ webhook: this.opts.name }, events.length);
        this.health.consecutiveFailures = 0;
        this.health.lastSuccess = new Date().toISOString();
        delete this.health.nextRetryInMs;
        continue;
      }
      const n = ++this.health.consecutiveFailures;
      const base = Math.min(this.opts.maxRetryDelayMs, FIRST_RETRY_MS * 2 ** Math.min(n - 1, 30));
      const delay = Math.round(base * (0.8 + 0.4 * this.random()));
      this.health.state = "retrying";
      this.health.nextRetryInMs = delay;
      await this.sleep(delay);
    }
  }

  /** One POST of `events`; true on a 2xx answer. */
  private async post(events: string[]): Promise<boolean> {
    const body = `{"webhook":${JSON.stringify(this.opts.name)},"events":[${events.join(",")}]}`;
    const ac = new AbortController();
    this.inFlight = ac;
    const timer = setTimeout(
      () => ac.abort(new Error(`no answer within ${this.opts.timeoutMs} ms`)),
      this.opts.timeoutMs,
    );
    try {
      const res = await fetch(this.opts.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "mta-webhook",
          "x-mta-webhook": this.opts.name,
          "x-mta-signature": signature(this.opts.secret, body),
        },
        body,
        signal: ac.signal,
        redirect: "manual",
        ...(this.tls ? { tls: this.tls } : {}),
      } as RequestInit);
      await res.arrayBuffer().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) {
        this.batches.inc({ webhook: this.opts.name, result: "ok" });
        return true;
      }
      this.fail(`HTTP ${res.status}`);
      return false;
    } catch (err) {
      this.fail(errorMessage(err));
      return false;
    } finally {
      clearTimeout(timer);
      this.inFlight = undefined;
    }
  }

  private fail(why: string): void {
    this.batches.inc({ webhook: this.opts.name, result: "error" });
    if (this.health.consecutiveFailures === 0 || this.health.lastError !== why)
      this.log.warn("webhook POST failed; will retry", {
        webhook: this.opts.name,
        url: this.opts.url,
        error: why,
      });
    this.health.lastError = why;
  }

  /** Stops after the batch in flight (its answer is awaited up to `graceMs`, else it is abandoned: sent again next start). */
  async stop(graceMs = 1000): Promise<void> {
    this.stopped = true;
    this.wake?.();
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer.timer);
      this.lingerTimer.resolve();
    }
    if (this.loop) {
      const t = setTimeout(() => this.inFlight?.abort(new Error("stopping")), graceMs);
      await this.loop;
      clearTimeout(t);
    }
    this.follower.close();
  }
}
