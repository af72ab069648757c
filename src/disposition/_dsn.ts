/**
 * DSNs of one disposition: which recipients get one, and the one way a DSN is queued.
 *
 * Owns: `DsnInjector` (how a DSN enters the queue: through the accept pipeline, so it is DKIM-signed
 * and gets a `reception` line like any message) and `queueDsn`: build (bounce/), inject, log.
 * Does not own: the DSN text (bounce/'s `buildDsn`), when one is due (the disposer).
 * Invariant: never to the null sender; a DSN that cannot be queued is logged, never retried by
 * re-recording the outcome (the outcome is already on disk: losing the notice is the lesser harm
 * than delivering twice).
 */
import { buildDsn, type DsnRecipient, isNullSender } from "../bounce/index.ts";
import { errorMessage, hasEightBit } from "../lib/index.ts";
import type { Counter, Logger } from "../observe/index.ts";
import { domainOf } from "../smtp/index.ts";
import type { MessageEvent } from "./_types.ts";

export interface DsnInjector {
  /**
   * Queues `body` from the null sender to `recipient` with `attributes`, durably; resolves with the
   * new message's id, or rejects (spool trouble) with nothing queued.
   */
  injectDsn(dsn: {
    recipient: string;
    body: Uint8Array;
    attributes: Record<string, string>;
  }): Promise<string>;
}

export interface DsnSubject {
  id: string;
  sender: string;
  arrivalMs: number;
  attributes: Record<string, string>;
}

/** The DSN's action as one word: failed over delayed over delivered. */
export function dsnAction(recipients: readonly DsnRecipient[]): "failed" | "delayed" | "delivered" {
  if (recipients.some((r) => r.action === "failed")) return "failed";
  if (recipients.some((r) => r.action === "delayed")) return "delayed";
  return "delivered";
}

export async function queueDsn(
  deps: {
    injector: DsnInjector | undefined;
    hostname: string;
    maxOriginalBytes: number | undefined;
    onEvent: (e: MessageEvent) => void;
    log: Logger;
    counter: Counter | undefined;
  },
  m: DsnSubject,
  original: Uint8Array,
  recipients: DsnRecipient[],
  nowMs: number,
  reason?: string,
): Promise<boolean> {
  if (recipients.length === 0 || isNullSender(m.sender)) return false;
  const a = m.attributes;
  const bytes = buildDsn({
    reportingMta: deps.hostname,
    originalMessageId: m.id,
    ...(a.envid ? { envId: a.envid } : {}),
    ...(a.ret === "FULL" || a.ret === "HDRS" ? { ret: a.ret } : {}),
    arrivalMs: m.arrivalMs,
    nowMs,
    sender: m.sender,
    recipients,
    original,
    ...(deps.maxOriginalBytes !== undefined ? { maxOriginalBytes: deps.maxOriginalBytes } : {}),
  });
  const action = dsnAction(recipients);
  if (!deps.injector) {
    deps.log.error("could not queue a DSN: no injector (spool opened read-only)", { id: m.id });
    return false;
  }
  try {
    const dsnId = await deps.injector.injectDsn({
      recipient: m.sender,
      body: bytes,
      attributes: { dsn: m.id, body: hasEightBit(bytes) ? "8BITMIME" : "7BIT" },
    });
    deps.counter?.inc({ action });
    deps.onEvent({
      type: "dsn",
      id: m.id,
      destination: domainOf(m.sender),
      sender: "",
      recipient: m.sender,
      dsnId,
      action,
      ...(reason ? { reason } : {}),
      size: bytes.length,
    });
    return true;
  } catch (err) {
    deps.log.error("could not queue a DSN", { id: m.id, sender: m.sender, error: errorMessage(err) });
    return false;
  }
}
