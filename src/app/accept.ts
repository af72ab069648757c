/**
 * The accept pipeline: from an envelope and message bytes handed over by a listener (or the HTTP
 * inject API) to messages durably in the spool and queued for delivery.
 *
 * Owns: splitting recipients by destination (one spool message per recipient domain, as AsyncOS
 * splinters), DKIM signing once before the append, the reception line in the delivery log, the
 * `X-MTA-Pool` header (taken out of the message, before signing, into the `pool` attribute), and the
 * one way DSNs are queued (`injectDsn`: the same path, so they are signed and logged too).
 * Invariants: `ok: true` is returned only after every part's append resolved (its bytes are on
 * stable storage); a spool write failure gives `452 4.3.1` (RFC 3463: mail system storage), any
 * other failure `451 4.3.0` and an error log line with its cause, never `250`.
 */
import type { DsnInjector } from "../disposition/index.ts";
import type { AcceptResult, Acceptor, Envelope } from "../listener/index.ts";
import { errorMessage, testFault } from "../lib/index.ts";
import type { Counter, DeliveryLog, Logger, Metrics } from "../observe/index.ts";
import { domainOf, reply } from "../smtp/index.ts";
import { type NewMessage, type Spool, SpoolWriteError } from "../spool/index.ts";

export interface AcceptSink {
  enqueue(slot: number, hint?: { pool?: string }): void;
}

const LATIN1 = new TextDecoder("latin1");

/**
 * Removes every `X-MTA-Pool` header field (with its folded lines) from the header section and
 * returns the first one's value; the message is returned unchanged when there is none.
 */
export function takePoolHeader(message: Uint8Array): { message: Uint8Array; pool?: string } {
  // The header section ends at the first empty line; only it is decoded (latin1: byte offsets hold).
  const limit = Math.min(message.length, 256 * 1024);
  const head = LATIN1.decode(message.subarray(0, limit));
  const end = head.search(/\r?\n\r?\n/);
  const header = end < 0 ? head : head.slice(0, end + 1);
  if (!/(^|\n)x-mta-pool[ \t]*:/i.test(header)) return { message };
  const field = /(^|\n)(x-mta-pool[ \t]*:([^\n]*\n?(?:[ \t][^\n]*\n?)*))/gi;
  let pool: string | undefined;
  const cuts: [number, number][] = [];
  for (let m = field.exec(header); m; m = field.exec(header)) {
    const start = m.index + m[1]!.length;
    pool ??= m[3]!.replace(/\r?\n[ \t]*/g, " ").trim();
    cuts.push([start, start + m[2]!.length]);
    field.lastIndex = start + m[2]!.length - 1;
  }
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const [a, b] of cuts) {
    parts.push(message.subarray(at, a));
    at = b;
  }
  parts.push(message.subarray(at));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return pool ? { message: out, pool } : { message: out };
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
      "Messages refused because the spool or the accept pipeline failed",
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
      this.refused.inc({ source });
      if (err instanceof SpoolWriteError) {
        this.deps.log.error("spool append failed; answering 452", { error: errorMessage(err) });
        return { ok: false, reply: reply(452, "4.3.1", "Insufficient system storage") };
      }
      // Not the disk: a bug or a broken part. Say so in the log; the client may try again later.
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
    const body = this.deps.sign ? await this.deps.sign(taken.message) : taken.message;
    const byDestination = new Map<string, Submission["recipients"]>();
    for (const r of sub.recipients) {
      const d = domainOf(r.address);
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
