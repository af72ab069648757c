/**
 * Reading a queued message back: from its slot to its records on disk and to the envelope callers see.
 *
 * Owns: decoding a slot's MESSAGE record, each recipient's last reply and TLS (its latest OUTCOME
 * record, else its MESSAGE record), building a `StoredMessage`, the names and codes of recipient
 * states.
 * Does not own: positioned reads and checksums (_segments.ts `readRecord`), the byte layout
 * (_format.ts), the body cache (_cache.ts), which slots are live (_index.ts).
 * Invariant: nothing here writes; what it returns is rebuilt from the disk and the index columns, so a
 * caller may change it freely.
 */
import { joinMessageId } from "../lib/index.ts";
import {
  decodeMessage,
  decodeOutcome,
  type MessageRecord,
  STATE_DELIVERED,
  STATE_FAILED,
  STATE_PENDING,
} from "./_format.ts";
import type { SlotIndex } from "./_index.ts";
import type { Segments } from "./_segments.ts";
import type { LastTls, RecipientState, StoredMessage, StoredRecipient } from "./types.ts";

/** Recipient states by their code on disk. */
export const STATE_NAMES: RecipientState[] = ["pending", "delivered", "failed"];

export const STATE_CODES: Record<RecipientState, number> = {
  pending: STATE_PENDING,
  delivered: STATE_DELIVERED,
  failed: STATE_FAILED,
};

/** What the last attempt left on a recipient: its reply and its TLS. */
export interface LastOutcome {
  lastReply?: string;
  lastTls?: LastTls;
}

export function readMessageRecord(segs: Segments, idx: SlotIndex, slot: number): MessageRecord {
  const buf = segs.readRecord(idx.recSeg[slot]!, idx.recOff[slot]!, idx.recLen[slot]!);
  return decodeMessage(buf, 0, buf.length);
}

/** Each recipient's last reply and TLS: from the latest OUTCOME record, else the MESSAGE record. */
export function lastOutcomes(segs: Segments, idx: SlotIndex, slot: number, m: MessageRecord): LastOutcome[] {
  const os = idx.outSeg[slot]!;
  const pick = (r: LastOutcome): LastOutcome => ({
    ...(r.lastReply !== undefined ? { lastReply: r.lastReply } : {}),
    ...(r.lastTls !== undefined ? { lastTls: r.lastTls } : {}),
  });
  if (os === 0) return m.recipients.map(pick);
  const buf = segs.readRecord(os, idx.outOff[slot]!, idx.outLen[slot]!);
  return decodeOutcome(buf, 0, buf.length).recipients.map(pick);
}

/** The envelope of the live message in `slot`, from its MESSAGE record `m` and the index. */
export function envelopeOf(segs: Segments, idx: SlotIndex, slot: number, m: MessageRecord): StoredMessage {
  const last = lastOutcomes(segs, idx, slot, m);
  const recipients: StoredRecipient[] = m.recipients.map((r, i) => {
    const out: StoredRecipient = {
      address: r.address,
      state: STATE_NAMES[idx.stateOf(slot, i)] ?? "pending",
    };
    if (r.notify) out.notify = r.notify;
    if (r.orcpt !== undefined) out.orcpt = r.orcpt;
    const { lastReply, lastTls } = last[i] ?? {};
    if (lastReply !== undefined) out.lastReply = lastReply;
    if (lastTls !== undefined) out.lastTls = lastTls;
    return out;
  });
  return {
    id: joinMessageId(idx.idMs[slot]!, idx.idCounter[slot]!),
    slot,
    sender: m.sender,
    destination: m.destination,
    arrivalMs: idx.arrival[slot]!,
    attempts: idx.attempts[slot]!,
    nextAttemptMs: idx.nextAttempt[slot]!,
    sizeBytes: idx.size[slot]!,
    recipients,
    attributes: m.attributes,
  };
}
