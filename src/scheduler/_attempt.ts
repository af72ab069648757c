/**
 * One delivery attempt of one message by a connection worker, from taking it to acting on the verdict.
 *
 * Owns: the checks before an attempt (expiry, a bounce rule in force, the route now), assembling the
 * deliverer's `OutboundMessage` and `AttemptTarget` (SMTPUTF8 need, 8BITMIME, the return path
 * (VERP), EHLO name, source address, TLS), a whole-site failure (nothing recorded, the site backs off), handing every other
 * outcome to the disposer, and acting on its verdict (schedule the retry, or finish the message).
 * Does not own: which message comes next (_workers.ts), what an outcome records (disposition/).
 * Invariants: the outcome is recorded before anything acts on it; a whole-site failure never burns an
 * attempt (the message goes back to the front of its ready queue); an attempt whose slot no longer
 * holds its message fails an assert instead of recording on another message.
 */
import type { OutboundMessage, AttemptResult, AttemptTarget } from "../deliverer/index.ts";
import type { DisposableMessage, Disposed, Outcome } from "../disposition/index.ts";
import { AssertionError, assert, errorMessage } from "../lib/index.ts";
import { fieldValues, headerHasEightBit, headerText } from "../message/index.ts";
import type { RouteDecision } from "../route/index.ts";
import { reply, type SmtpReply } from "../smtp/index.ts";
import type { SchedulerCore } from "./_core.ts";
import type { Site } from "./_site.ts";
import { ACTIVE, NONE, type SlotRef, slotOfRef } from "./_slots.ts";
import type { EgressSource } from "./_types.ts";

/** A spool error while recording an outcome: try the message again after this long (nothing was recorded). */
const SPOOL_ERROR_RETRY_MS = 60_000;

/** done: the message was handled; site-failure: nothing happened, the site backs off; requeued: not attempted here. */
export type AttemptEnd = "done" | "site-failure" | "requeued";

/** A connection worker: the site's pool queue it serves and the source it is bound to (null: none). */
export interface WorkerCtx {
  q: { pool: number; ready: { shift(): number | undefined } };
  source: EgressSource | null;
  /** The last attempt's connection is being retired (QUIT sent): the worker counts it until closed. */
  closing?: Promise<void>;
}

function hasNonAscii(text: string): boolean {
  return /[^\x00-\x7f]/.test(text);
}

/** RFC 8689 §5: the message asks that recipient TLS policies be ignored (`TLS-Required: No`). */
export function asksTlsRequiredNo(body: Uint8Array): boolean {
  return fieldValues(headerText(body), "tls-required").some((v) => v.toLowerCase() === "no");
}

/** The deliverer's view of a stored message: its pending recipients and how its content must travel. */
export function outboundOf(id: string, message: DisposableMessage, body: Uint8Array): OutboundMessage {
  const a = message.attributes;
  const pending = message.recipients.flatMap((r, index) => (r.state === "pending" ? [{ r, index }] : []));
  const smtputf8 = a.smtputf8 === "1" || a.smtputf8 === "true";
  const out: OutboundMessage = {
    id,
    sender: message.sender,
    recipients: pending.map(({ r, index }) => {
      const rc: OutboundMessage["recipients"][number] = { index, address: r.address };
      if (r.notify) rc.notify = r.notify;
      if (r.orcpt) rc.orcpt = r.orcpt;
      return rc;
    }),
    body,
    // SMTPUTF8 is needed only when the envelope or the header really holds UTF-8 (RFC 6531 §3.2).
    needsSmtputf8:
      smtputf8 &&
      (hasNonAscii(message.sender) ||
        pending.some(({ r }) => hasNonAscii(r.address)) ||
        headerHasEightBit(body)),
    eightBit: (a.body ?? "").toUpperCase() === "8BITMIME",
    binary: (a.body ?? "").toUpperCase() === "BINARYMIME",
  };
  if (a.envid) out.envId = a.envid;
  if (a.ret === "FULL" || a.ret === "HDRS") out.ret = a.ret;
  return out;
}

/** Where and how to connect: the route's hosts, the site policy's TLS unless the route says, the source. */
export function targetOf(
  route: Extract<RouteDecision, { kind: "hosts" }>,
  site: Site,
  source: EgressSource | null,
  hostname: string,
): AttemptTarget {
  const p = site.policy;
  const target: AttemptTarget = {
    hosts: route.hosts,
    // A source's EHLO name goes with its address (it should match the address's PTR).
    ehloName: (route.sourceAddress ? undefined : source?.ehloName) ?? route.ehloName ?? hostname,
    tls: route.tls ?? p.tls,
    tlsVerify: route.tlsVerify ?? p.tlsVerify,
  };
  const address = route.sourceAddress ?? source?.address;
  if (address) target.sourceAddress = address;
  if (route.auth) target.auth = route.auth;
  target.keepConnection = () => site.wantsConnection();
  return target;
}

export class Attempts {
  /** Attempts in flight. */
  inFlight = 0;

  constructor(private readonly core: SchedulerCore) {}

  /** One attempt, never throwing: a failure inside the MTA holds the message in RAM and retries later. */
  async run(site: Site, w: WorkerCtx, ref: SlotRef): Promise<AttemptEnd> {
    const core = this.core;
    const sp = core.opts.spool;
    const slot = slotOfRef(ref);
    const id = sp.idOf(slot);
    const domain = sp.destinationOf(slot);
    this.inFlight++;
    core.inFlightByDomain.set(domain, (core.inFlightByDomain.get(domain) ?? 0) + 1);
    try {
      return await this.attempt(site, w, ref, id, domain);
    } catch (err) {
      // A broken invariant crashes loudly: never limp on over a spool.
      if (err instanceof AssertionError) throw err;
      // Nothing was recorded (or the record failed): hold the message in RAM and try again later.
      core.log.error("delivery attempt failed inside the MTA; will retry", {
        id,
        destination: site.name,
        error: errorMessage(err),
      });
      if (core.slots.isCurrent(ref) && sp.isLive(slot) && sp.idOf(slot) === id) {
        // An operator's command waiting for it takes it now; else it is tried again in a while.
        if (core.slots.command[slot] !== 0) {
          core.slots.where[slot] = NONE;
          core.starter.toCommandLane(slot);
        } else core.schedule(slot, core.clock.now() + SPOOL_ERROR_RETRY_MS);
      }
      return "done";
    } finally {
      this.inFlight--;
      const n = (core.inFlightByDomain.get(domain) ?? 1) - 1;
      if (n > 0) core.inFlightByDomain.set(domain, n);
      else core.inFlightByDomain.delete(domain);
      // A current reference still ACTIVE here was not handed on (e.g. its message had nothing pending).
      if (core.slots.isCurrent(ref) && core.slots.where[slot] === ACTIVE) core.finish(slot);
    }
  }

  private async attempt(
    site: Site,
    w: WorkerCtx,
    ref: SlotRef,
    id: string,
    domain: string,
  ): Promise<AttemptEnd> {
    const core = this.core;
    const sp = core.opts.spool;
    const slot = slotOfRef(ref);
    const now = core.clock.now();
    if (now >= sp.arrivalOf(slot) + core.live.maxAgeMs)
      return this.dispose(site, ref, id, { kind: "expired" });
    const bouncing = site.bouncing(now);
    if (bouncing)
      return this.dispose(site, ref, id, {
        kind: "failed",
        reply: bouncing,
        reason: `rule:${site.bounce!.rule}`,
      });
    // The message first: its header may ask that recipient TLS policies be ignored (RFC 8689).
    const { message, body } = await sp.read(slot);
    if (!message.recipients.some((r) => r.state === "pending")) return "done";
    const route = await core.opts.router.route(domain, { tls: { requiredNo: asksTlsRequiredNo(body) } });
    if (route.kind === "transient") {
      this.siteFailure(site, ref, reply(451, "4.4.3", `DNS: ${route.reason}`));
      return "site-failure";
    }
    if (route.kind === "permanent")
      return this.dispose(
        site,
        ref,
        id,
        { kind: "failed", reply: reply(550, route.enhanced, route.reason), reason: "route" },
        message,
        body,
      );
    if (route.site !== site.name) {
      // Its site changed under it (a reload changed the routes, or the MX named a rollup): over there.
      core.slots.where[slot] = NONE;
      const d = core.makeReady(slot);
      if (d) core.starter.tryStart(d);
      return "requeued";
    }
    if (route.kind === "deferred") {
      // The TLS policy leaves no host: a transient result for every recipient, nothing sent.
      const r = reply(451, route.enhanced, route.text);
      const result: AttemptResult = {
        recipients: outboundOf(id, message, body).recipients.map((rc) => ({
          index: rc.index,
          kind: "transient",
          reply: r,
        })),
        connectionFailed: false,
        tls: { policy: route.policy, verified: false },
        durationMs: 0,
      };
      route.report?.(result);
      const end = await this.dispose(site, ref, id, { kind: "attempt", result }, message, body);
      site.onReplies([r]); // the queue view's last error says why
      return end;
    }
    const pool = message.attributes.pool
      ? (core.egress.indexOf(message.attributes.pool) ?? core.egress.poolOf(site.policy))
      : core.egress.poolOf(site.policy);
    core.slots.pool[slot] = pool + 1;
    if (pool !== w.q.pool) {
      // Its pool was not known when it was queued (e.g. after a restart): over to the right queue.
      core.putBack(site, ref);
      return "requeued";
    }
    site.noteAttempt(core.clock.now());
    const target = targetOf(route, site, w.source, core.opts.hostname);
    const outbound = outboundOf(id, message, body);
    const only = outbound.recipients.length === 1 ? outbound.recipients[0]! : undefined;
    const returnPath = only && core.opts.returnPath?.(id, outbound.sender, only.address);
    if (returnPath) outbound.sender = returnPath;
    let result = await core.opts.deliverer.deliver(target, outbound);
    if (result.closing) w.closing = result.closing;
    route.report?.(result, target.sourceAddress);
    if (result.connectionFailed && route.more) {
      // None of the preferred family's addresses answered: the other family's, in the same attempt.
      const second = await route.more();
      if (second?.kind === "hosts" && second.hosts.length > 0) {
        result = await core.opts.deliverer.deliver({ ...target, hosts: second.hosts }, outbound);
        second.report?.(result, target.sourceAddress);
      }
    }
    if (result.connectionFailed) {
      this.siteFailure(
        site,
        ref,
        result.recipients[0]?.reply ?? reply(421, "4.4.1", "no host could be reached"),
      );
      return "site-failure";
    }
    site.onSuccess();
    const end = await this.dispose(site, ref, id, { kind: "attempt", result }, message, body);
    site.onReplies(failedReplies(result));
    return end;
  }

  private siteFailure(site: Site, ref: SlotRef, r: SmtpReply): void {
    const core = this.core;
    core.counters?.attempts.inc({ result: "site-failure" });
    core.putBack(site, ref);
    site.onSiteFailure(r, core.live.siteBackoffMs, core.jitter);
  }

  /** The disposer records the outcome; then the verdict is acted on and the DSN awaited. */
  private async dispose(
    site: Site,
    ref: SlotRef,
    id: string,
    outcome: Outcome,
    read?: DisposableMessage,
    readBody?: Uint8Array,
  ): Promise<AttemptEnd> {
    const core = this.core;
    const sp = core.opts.spool;
    const slot = slotOfRef(ref);
    const { message, body } = read && readBody ? { message: read, body: readBody } : await sp.read(slot);
    core.slots.assertCurrent(ref, "attempt outcome");
    assert(sp.idOf(slot) === id, () => `slot ${slot} holds ${sp.idOf(slot)}, not ${id}`);
    const done: Disposed = await core.disposer.dispose({
      slot,
      message,
      body,
      outcome,
      retryAtMs: (attempts) => core.retryAt(site, attempts, message.arrivalMs),
      warned: core.slots.warned[slot] === 1,
      ...(site.lastError !== undefined ? { lastError: site.lastError } : {}),
    });
    this.act(slot, done);
    await done.dsn;
    return "done";
  }

  /** The verdict: retry at its time (or hand to a pending operator command), or the message is done. */
  act(slot: number, d: Disposed): void {
    const core = this.core;
    if (d.verdict.kind === "retry") {
      if (d.warned) core.slots.warned[slot] = 1;
      if (core.slots.command[slot] !== 0) {
        core.slots.where[slot] = NONE;
        core.starter.toCommandLane(slot);
      } else core.schedule(slot, d.verdict.atMs);
    } else core.finish(slot);
  }
}

function failedReplies(result: AttemptResult): SmtpReply[] {
  return result.recipients.filter((r) => r.kind !== "delivered").map((r) => r.reply);
}
