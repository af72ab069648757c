/**
 * The accept pipeline: from an envelope and message bytes handed over by a listener (or the HTTP
 * inject API) to messages durably in the spool and queued for delivery.
 *
 * Owns: splitting recipients by destination (one spool message per recipient domain, as AsyncOS
 * splinters), de-duplicating recipients, the content rules before signing (mime/: CRLF only, lines of
 * at most 998 octets, no NUL outside BINARYMIME), DKIM signing once before the append, the reception
 * line in the delivery log, the `X-MTA-Pool` header (taken out of the message, before signing, into
 * the `pool` attribute), and the one way DSNs are queued (`injectDsn`: the same path, so they are
 * signed and logged too).
 * Invariants: `ok: true` is returned only after every part's append resolved (its bytes are on
 * stable storage); a spool write failure gives `452 4.3.1` (RFC 3463: mail system storage), any
 * other failure `451 4.3.0` and an error log line with its cause, never `250`; content that cannot
 * be stored as the rules say gets a 554 and nothing is stored.
 */
import type { DsnInjector } from "../disposition/index.ts";
import type { AcceptResult, Acceptor, Envelope } from "../listener/index.ts";
import { errorMessage, testFault } from "../lib/index.ts";
import type { Counter, DeliveryLog, Logger, Metrics } from "../observe/index.ts";
import { takeField } from "../message/index.ts";
import { prepareForStorage } from "../mime/index.ts";
import { domainOf, reply, type SmtpReply } from "../smtp/index.ts";
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
}

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
   * throws: a failure is a reply (452 for the spool's writes, 451 for anything else).
   */
  async submit(sub: Submission): Promise<AcceptResult> {
    const source = sub.source ?? sub.attributes.listener ?? "api";
    try {
      return await this.store(sub, source);
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
    const byDestination = new Map<string, Submission["recipients"]>();
    // One copy per recipient, as Postfix's cleanup does: the same address given twice (in RCPT or in
    // the inject API) is delivered once, with the first one's DSN parameters. The domain compares
    // case-insensitively, the local part exactly (RFC 5321 §2.4: only the receiving host may fold it).
    const seen = new Set<string>();
    for (const r of sub.recipients) {
      const d = domainOf(r.address);
      const at = r.address.lastIndexOf("@");
      const key = `${at >= 0 ? r.address.slice(0, at) : r.address}@${d}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const list = byDestination.get(d);
      if (list) list.push(r);
      else byDestination.set(d, [r]);
    }
    const parts: NewMessage[] = [...byDestination].map(([destination, recipients]) => ({
      sender: sub.sender,
      destination,
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
