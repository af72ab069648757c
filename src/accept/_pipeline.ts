/**
 * The accept pipeline: from an envelope and message bytes handed over by a listener (or the HTTP
 * inject API) to messages durably in the spool and queued for delivery.
 *
 * Owns: splitting recipients by destination (one spool message per recipient domain, as AsyncOS
 * splinters; one per recipient when the sender gets VERP return paths), de-duplicating recipients,
 * the content rules before signing (mime/: CRLF only, lines of at most 998 octets, no NUL outside
 * BINARYMIME), DKIM signing once before the append, the reception line in the delivery log, the
 * `X-MTA-Pool` header (taken out of the message, before signing, into the `pool` attribute), the
 * suppression check of every recipient (RCPT: `checkRecipient`; inject and `mta send`: refused
 * recipients in the result; otherwise dropped and logged as `suppressed`), and the one way DSNs are
 * queued (`injectDsn`: the same path, so they are signed and logged too).
 * Invariants: `ok: true` is returned only after every part's append resolved (its bytes are on
 * stable storage); a spool write failure gives `452 4.3.1` (RFC 3463: mail system storage), any
 * other failure `451 4.3.0` and an error log line with its cause, never `250`; content that cannot
 * be stored as the rules say gets a 554 and nothing is stored.
 */
import type { DsnInjector } from "../disposition/index.ts";
import type { AcceptResult, Acceptor, Envelope } from "../listener/index.ts";
import { errorMessage, newMessageId, testFault } from "../lib/index.ts";
import type { Counter, DeliveryLog, Logger, Metrics } from "../observe/index.ts";
import { takeField } from "../message/index.ts";
import { prepareForStorage } from "../mime/index.ts";
import { domainOf, reply, type SmtpReply } from "../smtp/index.ts";
import type { Feedback } from "../feedback/index.ts";
import { type NewMessage, type Spool, SpoolWriteError } from "../spool/index.ts";

export interface AcceptSink {
  enqueue(slot: number, hint?: { pool?: string }): void;
}

/**
 * Removes every `X-MTA-Pool` header field (with its folded lines) from the header section and
 * returns the first one's value; the message is returned unchanged when there is none.
 */
export function takePoolHeader(message: Uint8Array): { message: Uint8Array; pool?: string } {
  const taken = takeField(message, "x-mta-pool");
  return taken.value ? { message: taken.message, pool: taken.value } : { message: taken.message };
}

/**
 * The content rules of the spool, as a refusal: undefined when the message can be stored (after the
 * conversions `prepareForStorage` makes). NUL is a media error (RFC 2045 §2.7); the others are about
 * a line the transport cannot carry (RFC 5322 §2.1.1), hence 5.5.2 as for an overlong command.
 */
export function contentRefusal(message: Uint8Array, bodyType: string | undefined): SmtpReply | undefined {
  const p = prepareForStorage(message, { binary: bodyType === "BINARYMIME" });
  return p.ok ? undefined : refusalOf(p);
}

function refusalOf(p: { problem: string; reason: string }): SmtpReply {
  return reply(554, p.problem === "nul" ? "5.6.0" : "5.5.2", `Error: message not accepted: ${p.reason}`);
}

export interface AcceptDeps {
  spool: Spool;
  /** The scheduler; absent while it is not running (messages stay in the spool). */
  queue?: AcceptSink;
  deliveryLog: DeliveryLog;
  log: Logger;
  metrics: Metrics;
  /** Signs the message (DKIM) or returns it unchanged; may sign on another thread. */
  sign?: (message: Uint8Array) => Uint8Array | Promise<Uint8Array>;
  /** Suppression list and VERP; absent: every recipient is taken. */
  feedback?: Feedback;
}

/** A submission's result; `refused` lists recipients the suppression list turned away. */
export type SubmitResult = AcceptResult & { refused?: { address: string; reply: SmtpReply }[] };

export interface Submission {
  sender: string;
  recipients: Envelope["recipients"];
  attributes: Record<string, string>;
  message: Uint8Array;
  /** The `source` label of the counters (default: the `listener` attribute, else "api"). */
  source?: string;
}

export class AcceptPipeline implements Acceptor, DsnInjector {
  private readonly received: Counter;
  private readonly refused: Counter;
  /** The scheduler, once it exists (the engine wires it after both are built). */
  queue: AcceptSink | undefined;

  constructor(private readonly deps: AcceptDeps) {
    this.queue = deps.queue;
    this.received = deps.metrics.counter(
      "mta_accept_messages_total",
      "Messages accepted into the spool, by source",
    );
    this.refused = deps.metrics.counter(
      "mta_accept_refused_total",
      "Messages refused, by reason (spool: the spool failed; internal: a failure inside the MTA; else the content rule)",
    );
  }

  /** RCPT: refuses a suppressed recipient when the answer is "refuse" (relay clients only). */
  checkRecipient(r: { sender: string; recipient: string; relay: boolean }): SmtpReply | undefined {
    const f = this.deps.feedback;
    if (!f || !r.relay || f.answer !== "refuse") return undefined;
    const h = f.hit(r.sender, r.recipient);
    if (!h) return undefined;
    f.recordHit(h, {
      sender: r.sender,
      recipient: r.recipient,
      answer: "refused",
      attributes: { listener: "smtp" },
    });
    return f.refusalFor(r.recipient, h);
  }

  /** Listener entry point. */
  accept(envelope: Envelope, message: Uint8Array): Promise<AcceptResult> {
    const attributes: Record<string, string> = {
      listener: envelope.listener,
      client: envelope.clientAddress,
      helo: envelope.helo,
      body: envelope.body,
    };
    if (envelope.smtputf8) attributes.smtputf8 = "1";
    if (envelope.envId) attributes.envid = envelope.envId;
    if (envelope.ret) attributes.ret = envelope.ret;
    if (envelope.authUser) attributes.auth = envelope.authUser;
    return this.submit({ sender: envelope.sender, recipients: envelope.recipients, attributes, message });
  }

  /** The one way a DSN is queued: from the null sender, through signing, the append and the log. */
  async injectDsn(d: {
    recipient: string;
    body: Uint8Array;
    attributes: Record<string, string>;
  }): Promise<string> {
    const r = await this.submit({
      sender: "",
      recipients: [{ address: d.recipient }],
      attributes: d.attributes,
      message: d.body,
      source: "dsn",
    });
    if (!r.ok) throw new Error(`the accept pipeline refused the DSN: ${r.reply.lines.join(" ")}`);
    return r.ids[0]!;
  }

  /**
   * Shared by SMTP, the HTTP inject API and DSNs: append every part durably, then queue it. Never
   * throws: a failure is a reply (452 for the spool's writes, 451 for anything else). `refuse`:
   * suppressed recipients are refused (in `refused`) rather than accepted and dropped (inject and
   * `mta send` with suppression.answer refuse; SMTP refused them at RCPT already).
   */
  async submit(sub: Submission, opts: { refuse?: boolean } = {}): Promise<SubmitResult> {
    const source = sub.source ?? sub.attributes.listener ?? "api";
    try {
      const kept = this.suppressed(sub, opts.refuse === true);
      if (kept.done) return kept.done;
      const result = await this.store(kept.sub, source);
      return kept.refused ? { ...result, refused: kept.refused } : result;
    } catch (err) {
      if (err instanceof SpoolWriteError) {
        this.refused.inc({ source, reason: "spool" });
        this.deps.log.error("spool append failed; answering 452", { error: errorMessage(err) });
        return { ok: false, reply: reply(452, "4.3.1", "Insufficient system storage") };
      }
      // Not the disk: a bug or a broken part. Say so in the log; the client may try again later.
      this.refused.inc({ source, reason: "internal" });
      this.deps.log.error("accept failed inside the MTA; answering 451", {
        error: errorMessage(err),
        ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
      });
      return { ok: false, reply: reply(451, "4.3.0", "Local error in processing") };
    }
  }

  /**
   * The suppression list's part: the recipients to store, those refused, or the whole answer when no
   * recipient is left (refused, or accepted and recorded as `suppression.answer: record` asks).
   */
  private suppressed(
    sub: Submission,
    refuseAsked: boolean,
  ): { sub: Submission; refused?: { address: string; reply: SmtpReply }[]; done?: SubmitResult } {
    const f = this.deps.feedback;
    if (!f) return { sub };
    let refused: { address: string; reply: SmtpReply }[] | undefined;
    const keep: Submission["recipients"] = [];
    const refuse = refuseAsked && f.answer === "refuse";
    let recordedId: string | undefined;
    for (const r of sub.recipients) {
      const h = f.hit(sub.sender, r.address);
      if (!h) {
        keep.push(r);
        continue;
      }
      if (refuse) {
        (refused ??= []).push({ address: r.address, reply: f.refusalFor(r.address, h) });
        f.recordHit(h, {
          sender: sub.sender,
          recipient: r.address,
          answer: "refused",
          attributes: sub.attributes,
        });
      } else {
        recordedId ??= newMessageId();
        f.recordHit(h, {
          id: recordedId,
          sender: sub.sender,
          recipient: r.address,
          answer: "recorded",
          attributes: sub.attributes,
        });
      }
    }
    if (keep.length === 0) {
      // Refused, or accepted as asked (suppression.answer: record) with nothing to deliver.
      const done: SubmitResult = refused
        ? { ok: false, reply: refused[0]!.reply, refused }
        : { ok: true, ids: [recordedId!] };
      return { sub, done };
    }
    const kept = keep.length === sub.recipients.length ? sub : { ...sub, recipients: keep };
    return refused ? { sub: kept, refused } : { sub: kept };
  }

  private async store(sub: Submission, source: string): Promise<AcceptResult> {
    testFault("accept");
    const taken = takePoolHeader(sub.message);
    if (taken.pool !== undefined) sub = { ...sub, attributes: { ...sub.attributes, pool: taken.pool } };
    // Converted before signing, so that the signature covers the bytes that travel.
    const prepared = prepareForStorage(taken.message, { binary: sub.attributes.body === "BINARYMIME" });
    if (!prepared.ok) {
      this.refused.inc({ source, reason: prepared.problem });
      this.deps.log.info("message refused for its content", { reason: prepared.reason });
      return { ok: false, reply: refusalOf(prepared) };
    }
    const body = this.deps.sign ? await this.deps.sign(prepared.message) : prepared.message;
    // VERP return paths name one recipient each, so such a message is split per recipient.
    const perRecipient = this.deps.feedback?.verpApplies(sub.sender) === true;
    const byDestination = new Map<string, Submission["recipients"]>();
    // One copy per recipient, as Postfix's cleanup does: the same address given twice (in RCPT or in
    // the inject API) is delivered once, with the first one's DSN parameters. The domain compares
    // case-insensitively, the local part exactly (RFC 5321 §2.4: only the receiving host may fold it).
    const seen = new Set<string>();
    for (const r of sub.recipients) {
      const d = domainOf(r.address);
      const at = r.address.lastIndexOf("@");
      const id = `${at >= 0 ? r.address.slice(0, at) : r.address}@${d}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const key = perRecipient ? `${d}\0${r.address}` : d;
      const list = byDestination.get(key);
      if (list) list.push(r);
      else byDestination.set(key, [r]);
    }
    const parts: NewMessage[] = [...byDestination].map(([key, recipients]) => ({
      sender: sub.sender,
      destination: key.split("\0")[0]!,
      recipients,
      attributes: sub.attributes,
      body,
    }));
    const stored = await Promise.all(parts.map((p) => this.deps.spool.append(p)));
    for (let i = 0; i < stored.length; i++) {
      const { id, slot } = stored[i]!;
      const part = parts[i]!;
      this.queue?.enqueue(slot, sub.attributes.pool ? { pool: sub.attributes.pool } : undefined);
      this.deps.deliveryLog.write({
        type: "reception",
        id,
        // A message to several domains is several queue entries; the SMTP reply may name only the
        // first ones (its line is limited to 512 octets), so every entry says which transaction it was.
        ...(stored.length > 1 ? { transaction: stored[0]!.id } : {}),
        sender: part.sender,
        recipients: part.recipients.map((r) => r.address),
        destination: part.destination,
        size: body.byteLength,
        ...sub.attributes,
      });
    }
    this.received.inc({ source }, stored.length);
    return { ok: true, ids: stored.map((s) => s.id) };
  }
}
