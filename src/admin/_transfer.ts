/**
 * Moving queued messages from one node of a cluster to another (a drain, or spreading a backlog).
 *
 * Owns: the transfer batch format (JSON, bodies in base64), the sending side (select, hold the
 * destinations still, read, send a batch, and only then mark each message moved here) and the
 * receiving side (check, append durably with the message's history, queue, answer).
 * Does not own: finding the other node (the cluster registry), HTTP (the control API).
 *
 * Invariants (at least once, never lost):
 * - the receiver answers only after every message it accepts is on stable storage (the spool's
 *   group commit); the sender marks a message moved (its pending recipients "delivered" with reply
 *   "250 2.0.0 transferred to node N as <id>", reason "transfer-out") only after that answer;
 * - a message keeps its arrival time (max_age counts from it), attempt count, next attempt time,
 *   and each pending recipient's DSN parameters and last reply; done recipients stay behind;
 * - the receiver remembers which (node, id) it accepted, so a batch sent again (the answer was lost,
 *   or the sender crashed before marking and the transfer is run again) is acknowledged without a
 *   second copy. A duplicate is possible only when the receiver restarted in between;
 * - a node refuses a transfer to itself, and a batch meant for another node.
 */
import { errorMessage } from "../lib/index.ts";
import type { DeliveryLog, Logger } from "../observe/index.ts";
import type { NewMessage, Spool } from "../spool/index.ts";
import type { QueueOps } from "./_ops.ts";
import { QueueError, type Selector } from "./_shapes.ts";

export interface TransferMessage {
  id: string;
  sender: string;
  destination: string;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  recipients: { address: string; notify?: string[]; orcpt?: string; lastReply?: string }[];
  attributes: Record<string, string>;
  /** The message bytes, base64. */
  body: string;
}

export interface TransferBatch {
  from: { node: string; instance: string };
  to: string;
  messages: TransferMessage[];
}

export interface TransferReply {
  /** Messages the receiver has durably (now, or from an earlier batch: `duplicate`). */
  accepted: { id: string; newId: string; duplicate: boolean }[];
  refused: { id: string; error: string }[];
}

export interface TransferResult {
  to: string;
  /** Messages the selector matched when the transfer began. */
  matched: number;
  /** Messages now on the other node and gone from this one. */
  moved: number;
  recipients: number;
  /** Of `moved`: the other node already had them (an earlier, interrupted transfer). */
  alreadyThere: number;
  batches: number;
  /** Messages still here, with why. */
  failed: { id: string; error: string }[];
}

export interface TransferPeer {
  node: string;
  send(batch: TransferBatch): Promise<TransferReply>;
}

const NOTIFY = new Set(["SUCCESS", "FAILURE", "DELAY", "NEVER"]);
const SEND_TRIES = 3;

/** Moves the messages matching `sel` to `peer`. Never throws for one message: it lands in `failed`. */
export async function transferOut(
  ops: QueueOps,
  sel: Selector,
  peer: TransferPeer,
  opts: {
    from: { node: string; instance: string };
    deliveryLog?: DeliveryLog;
    log?: Logger;
    batchMessages?: number;
    batchBytes?: number;
  },
): Promise<TransferResult> {
  const sp = ops.spool;
  const slots = ops.selectSlots(sel);
  const result: TransferResult = {
    to: peer.node,
    matched: slots.length,
    moved: 0,
    recipients: 0,
    alreadyThere: 0,
    batches: 0,
    failed: [],
  };
  if (slots.length === 0) return result;
  const ids = slots.map((s) => sp.idOf(s));
  const release = await ops.hold([...new Set(slots.map((s) => sp.destinationOf(s)))]);
  const maxMessages = opts.batchMessages ?? 100;
  const maxBytes = opts.batchBytes ?? 8 * 1024 * 1024;
  try {
    let batch: TransferMessage[] = [];
    let bytes = 0;
    let stopped: string | undefined;
    const flush = async () => {
      if (batch.length === 0) return;
      const messages = batch;
      batch = [];
      bytes = 0;
      if (stopped !== undefined) {
        for (const m of messages) result.failed.push({ id: m.id, error: stopped });
        return;
      }
      result.batches++;
      let reply: TransferReply | undefined;
      let lastError = "";
      for (let attempt = 1; attempt <= SEND_TRIES && !reply; attempt++) {
        try {
          reply = await peer.send({ from: opts.from, to: peer.node, messages });
        } catch (err) {
          lastError = errorMessage(err);
          // A refusal (4xx) will not change; a lost answer is safe to repeat (the receiver dedupes).
          if (err instanceof QueueError && err.status < 500) break;
          if (attempt < SEND_TRIES) await Bun.sleep(250 * attempt);
        }
      }
      if (!reply) {
        stopped = `node ${peer.node} did not take the batch: ${lastError}`;
        opts.log?.error("transfer stopped", { to: peer.node, error: lastError });
        for (const m of messages) result.failed.push({ id: m.id, error: stopped });
        return;
      }
      for (const r of reply.refused) result.failed.push({ id: r.id, error: `${peer.node}: ${r.error}` });
      const byId = new Map(messages.map((m) => [m.id, m]));
      await Promise.all(
        reply.accepted.map(async (a) => {
          const m = byId.get(a.id);
          if (!m) return;
          try {
            await markMoved(sp, m, a.newId, peer.node);
          } catch (err) {
            // It is on both nodes now: the receiver will not take it twice, this one may send it too.
            result.failed.push({ id: m.id, error: `moved, but not marked here: ${errorMessage(err)}` });
            return;
          }
          result.moved++;
          result.recipients += m.recipients.length;
          if (a.duplicate) result.alreadyThere++;
          opts.deliveryLog?.write({
            type: "transfer-out",
            id: m.id,
            destination: m.destination,
            sender: m.sender,
            to: peer.node,
            newId: a.newId,
            recipients: m.recipients.length,
            attempt: m.attempts,
            queueTimeMs: Date.now() - m.arrivalMs,
            ...(a.duplicate ? { duplicate: true } : {}),
          });
        }),
      );
    };
    for (const id of ids) {
      const slot = sp.slotOf(id);
      if (slot === undefined || !sp.isLive(slot) || sp.idOf(slot) !== id) continue;
      let m: TransferMessage;
      try {
        m = await readForTransfer(sp, slot);
      } catch (err) {
        result.failed.push({ id, error: `cannot read it: ${errorMessage(err)}` });
        continue;
      }
      if (m.recipients.length === 0) continue;
      if (batch.length > 0 && (batch.length >= maxMessages || bytes + m.body.length > maxBytes))
        await flush();
      batch.push(m);
      bytes += m.body.length;
    }
    await flush();
  } finally {
    release();
    opts.deliveryLog?.flush();
  }
  return result;
}

async function readForTransfer(sp: Spool, slot: number): Promise<TransferMessage> {
  const { message: m, body } = await sp.read(slot);
  return {
    id: m.id,
    sender: m.sender,
    destination: m.destination,
    arrivalMs: m.arrivalMs,
    attempts: m.attempts,
    nextAttemptMs: m.nextAttemptMs,
    recipients: m.recipients
      .filter((r) => r.state === "pending")
      .map((r) => ({
        address: r.address,
        ...(r.notify ? { notify: r.notify } : {}),
        ...(r.orcpt !== undefined ? { orcpt: r.orcpt } : {}),
        ...(r.lastReply !== undefined ? { lastReply: r.lastReply } : {}),
      })),
    attributes: m.attributes,
    body: Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("base64"),
  };
}

/** The pending recipients are done here: handed to the next hop, as a relay counts them. */
async function markMoved(sp: Spool, m: TransferMessage, newId: string, node: string): Promise<void> {
  const slot = sp.slotOf(m.id);
  if (slot === undefined || !sp.isLive(slot) || sp.idOf(slot) !== m.id) return;
  const env = sp.readEnvelope(slot);
  const reply = `250 2.0.0 transferred to node ${node} as ${newId}`;
  await sp.recordOutcome(slot, {
    recipients: env.recipients.flatMap((r, index) =>
      r.state === "pending" ? [{ index, state: "delivered" as const, reply }] : [],
    ),
    attempts: env.attempts,
    reason: "transfer-out",
  });
}

// ------------------------------------------------------------------ receiving side

function bad(message: string): QueueError {
  return new QueueError("usage", `transfer: ${message}`, 400);
}

function str(v: unknown, what: string): string {
  if (typeof v !== "string") throw bad(`${what} must be a string`);
  return v;
}

function num(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw bad(`${what} must be a number >= 0`);
  return v;
}

/** One transferred message as the spool takes it; throws QueueError (400) on anything malformed. */
function toNewMessage(x: unknown, i: number): { id: string; msg: NewMessage } {
  if (!x || typeof x !== "object") throw bad(`messages[${i}] must be an object`);
  const m = x as Record<string, unknown>;
  const id = str(m.id, `messages[${i}].id`);
  const rcpts = m.recipients;
  if (!Array.isArray(rcpts) || rcpts.length === 0)
    throw bad(`messages[${i}].recipients must be a non-empty list`);
  const attrs = m.attributes ?? {};
  if (!attrs || typeof attrs !== "object" || Array.isArray(attrs))
    throw bad(`messages[${i}].attributes must be an object`);
  for (const [k, v] of Object.entries(attrs)) str(v, `messages[${i}].attributes.${k}`);
  const body = str(m.body, `messages[${i}].body`);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body)) throw bad(`messages[${i}].body must be base64`);
  const msg: NewMessage = {
    sender: str(m.sender, `messages[${i}].sender`),
    destination: str(m.destination, `messages[${i}].destination`),
    arrivalMs: num(m.arrivalMs, `messages[${i}].arrivalMs`),
    attempts: Math.floor(num(m.attempts, `messages[${i}].attempts`)),
    nextAttemptMs: num(m.nextAttemptMs, `messages[${i}].nextAttemptMs`),
    attributes: attrs as Record<string, string>,
    body: new Uint8Array(Buffer.from(body, "base64")),
    recipients: rcpts.map((r: unknown, j) => {
      if (!r || typeof r !== "object") throw bad(`messages[${i}].recipients[${j}] must be an object`);
      const rr = r as Record<string, unknown>;
      const out: NewMessage["recipients"][number] = { address: str(rr.address, `recipient ${j}'s address`) };
      if (rr.notify !== undefined) {
        if (!Array.isArray(rr.notify) || !rr.notify.every((n) => NOTIFY.has(n as string)))
          throw bad(`messages[${i}].recipients[${j}].notify must list SUCCESS, FAILURE, DELAY or NEVER`);
        out.notify = rr.notify as ("SUCCESS" | "FAILURE" | "DELAY" | "NEVER")[];
      }
      if (rr.orcpt !== undefined) out.orcpt = str(rr.orcpt, `recipient ${j}'s orcpt`);
      if (rr.lastReply !== undefined) out.lastReply = str(rr.lastReply, `recipient ${j}'s lastReply`);
      return out;
    }),
  };
  if (!msg.destination) throw bad(`messages[${i}].destination is empty`);
  return { id, msg };
}

const MAX_REMEMBERED = 1_000_000;
const MAX_BATCH_MESSAGES = 1000;

export class TransferReceiver {
  /** "<node>/<id>" of every message accepted, oldest first, for batches sent twice. */
  private readonly seen = new Map<string, string>();
  private readonly appending = new Map<string, Promise<string | undefined>>();

  constructor(
    private readonly opts: {
      node: string;
      instance: string;
      ops: QueueOps;
      deliveryLog?: DeliveryLog;
      log?: Logger;
    },
  ) {}

  async receive(input: unknown): Promise<TransferReply> {
    if (!input || typeof input !== "object") throw bad("expected a JSON object");
    const b = input as Record<string, unknown>;
    const from = b.from as Record<string, unknown> | undefined;
    const fromNode = str(from?.node, "from.node");
    const fromInstance = str(from?.instance, "from.instance");
    const to = str(b.to, "to");
    if (fromInstance === this.opts.instance || fromNode === this.opts.node)
      throw new QueueError("usage", `node ${this.opts.node} refuses a transfer to itself`, 409);
    if (to !== this.opts.node)
      throw new QueueError("usage", `this is node ${this.opts.node}, not ${to}: transfer refused`, 409);
    if (!Array.isArray(b.messages)) throw bad("messages must be a list");
    // Senders send 100 a batch; a bound keeps one request from holding the spool and RAM hostage.
    if (b.messages.length > MAX_BATCH_MESSAGES)
      throw bad(`at most ${MAX_BATCH_MESSAGES} messages a batch, got ${b.messages.length}`);
    const parsed = b.messages.map((m, i) => toNewMessage(m, i));
    const reply: TransferReply = { accepted: [], refused: [] };
    const sp = this.opts.ops.spool;
    await Promise.all(
      parsed.map(async ({ id, msg }) => {
        const key = `${fromNode}/${id}`;
        const known = this.seen.get(key) ?? (await this.appending.get(key));
        if (known !== undefined) {
          reply.accepted.push({ id, newId: known, duplicate: true });
          return;
        }
        let stored: { id: string; slot: number };
        const appended = sp.append(msg);
        // The same message may come again before this append is durable (a sender that gave up waiting).
        this.appending.set(
          key,
          appended.then(
            (x) => x.id,
            () => undefined,
          ),
        );
        try {
          stored = await appended;
        } catch (err) {
          reply.refused.push({ id, error: errorMessage(err) });
          return;
        } finally {
          this.appending.delete(key);
        }
        this.remember(key, stored.id);
        reply.accepted.push({ id, newId: stored.id, duplicate: false });
        this.opts.ops.enqueue(stored.slot);
        this.opts.deliveryLog?.write({
          type: "transfer-in",
          id: stored.id,
          destination: msg.destination,
          sender: msg.sender,
          from: fromNode,
          originalId: id,
          recipients: msg.recipients.length,
          attempt: msg.attempts ?? 0,
          size: msg.body.length,
        });
      }),
    );
    if (reply.accepted.length > 0)
      this.opts.log?.info("transfer in", {
        from: fromNode,
        accepted: reply.accepted.length,
        refused: reply.refused.length,
      });
    return reply;
  }

  private remember(key: string, id: string): void {
    this.seen.set(key, id);
    if (this.seen.size > MAX_REMEMBERED) {
      const oldest = this.seen.keys().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
  }
}
