/**
 * Operator bounce and delete on a stopped spool (`mta queue bounce|delete` with no daemon running).
 *
 * Owns: carrying the command out through disposition/'s `Disposer` over the spool, a few messages at
 * a time, and the bounce classes of its events.
 * Does not own: choosing the messages (_ops.ts), what a bounce or delete records (disposition/), the
 * live path (the scheduler's commands).
 * Invariants: the same disposition path as live (recorded in the spool, then logged, then a DSN);
 * the suppression list is not open offline, so an admin bounce gets its class and nothing is added to
 * the list; a message that fails is reported in `failed`, the others go on.
 */
import { type Classifying, Disposer, type DsnInjector } from "../disposition/index.ts";
import { type Clock, errorMessage } from "../lib/index.ts";
import type { DeliveryLog, Logger } from "../observe/index.ts";
import type { CommandResult } from "../scheduler/index.ts";
import { replyLine } from "../smtp/index.ts";
import type { Spool } from "../spool/index.ts";

export interface OfflineActionOptions {
  spool: Spool;
  dsn?: DsnInjector;
  /** Reporting-MTA of the DSNs. */
  hostname: string;
  /** The bounce class of a stored reply line. */
  classify: (replyLine: string) => string;
  deliveryLog?: DeliveryLog;
  log: Logger;
  clock: Clock;
}

/** Bounce or delete on a stopped spool: the disposer, up to 64 messages at a time. */
export async function offlineAction(
  o: OfflineActionOptions,
  action: "bounce" | "delete",
  ids: string[],
): Promise<CommandResult> {
  const sp = o.spool;
  // Classes for the events of an offline bounce (the suppression list is not open offline).
  const classifying: Classifying = {
    classOf: (event, r) =>
      event === "expiration" ? "message-expired" : o.classify(typeof r === "string" ? r : replyLine(r)),
    bounced: () => {},
  };
  const deliveryLog = o.deliveryLog;
  const disposer = new Disposer({
    spool: sp,
    ...(o.dsn ? { dsn: o.dsn } : {}),
    settings: { hostname: o.hostname, maxAgeMs: Number.POSITIVE_INFINITY, delayWarningMs: 0 },
    classifying,
    ...(deliveryLog ? { onEvent: (e) => deliveryLog.write({ ...e }) } : {}),
    log: o.log,
    clock: o.clock,
  });
  const out: CommandResult = { affected: 0, recipients: 0, dsns: 0, failed: [] };
  const queue = [...ids];
  const workers = Array.from({ length: Math.min(64, queue.length) }, async () => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      try {
        const slot = sp.slotOf(id);
        if (slot === undefined || !sp.isLive(slot)) continue;
        const { message, body } = await sp.read(slot);
        const d = await disposer.dispose({
          slot,
          message,
          body,
          outcome: action === "bounce" ? { kind: "bounced" } : { kind: "deleted" },
        });
        if (d.recipients === 0) continue;
        out.affected++;
        out.recipients += d.recipients;
        if (await d.dsn) out.dsns++;
      } catch (err) {
        out.failed.push({ id, error: errorMessage(err) });
      }
    }
  });
  await Promise.all(workers);
  return out;
}
