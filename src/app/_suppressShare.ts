/**
 * The suppression list in cluster mode: every node keeps its own durable copy, and the copies are
 * kept in step through one shared log in Redis (cluster/_journal.ts).
 *
 * Owns: publishing this node's own changes (the list's outbox) to the log, applying every other
 * node's from it in stream order, the node's durable position in it, and the two resynchronisations:
 * `replace` (the stream was trimmed past this node: the list becomes the cluster's copy) and `merge`
 * (the cluster has no copy this node followed: a new cluster, a new node, or a Redis that lost its
 * data: the union of both, and this node's whole list is published).
 * Does not own: the list (suppression/), the stream (cluster/), when the daemon starts or stops it.
 * Imported only by app/cluster.ts, so a node without `cluster:` runs none of it.
 *
 * Why a replicated copy and not a lookup in Redis: a recipient is checked in RAM (≤ 1 µs), mail is
 * not stopped or slowed by Redis, and a node keeps its list when Redis is down.
 *
 * Invariants: every node applies the same changes in the same order (the stream's), so every copy
 * ends the same; an own change is applied at once where it was made, and a change from another node
 * that the stream places before a pending own change of the same key is not applied (the own one
 * comes later and wins, as on every other node); nothing is republished that came from another node
 * (no echo); the position is saved only after what it covers is durable in the list (a crash reads
 * again, harmless: changes are idempotent).
 */
import { RedisDownError, type SharedLog, type SharedLogStatus } from "../cluster/index.ts";
import { errorMessage } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import {
  CHANGE_REMOVE,
  decodeChanges,
  encodeChanges,
  type SuppressionChange,
  type SuppressionList,
} from "../suppression/index.ts";

/** Entries read per XRANGE, changes per published entry. */
const READ_PAGE = 500;
const PUBLISH_PAGE = 1000;
/** A poll in case a notification was missed (pub/sub has no memory). */
const POLL_MS = 2000;
/** The stream keeps about this many entries (each up to PUBLISH_PAGE changes); older ones: full resync. */
export const SUPPRESSION_STREAM_MAX_ENTRIES = 100_000;

const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");

/** The state hash's field for a change: scope and address (neither holds a space). */
function fieldOf(c: SuppressionChange): string {
  return `${c.scope} ${c.address}`;
}

export interface SharingHealth {
  /** Own changes not yet seen back in the stream. */
  pending: number;
  position: string;
  lastError?: string;
}

export class SuppressionSharing {
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** Own changes published in this link session (re-published after a reconnection: duplicates are harmless). */
  private published = 0;
  private lastError: string | undefined;
  private readonly m;

  constructor(
    private readonly list: SuppressionList,
    private readonly shared: SharedLog,
    private readonly opts: { node: string; log: Logger; metrics?: Metrics },
  ) {
    const mt = opts.metrics;
    this.m = {
      applied: mt?.counter(
        "mta_suppression_shared_applied_total",
        "Suppression changes from other nodes written to this node's list",
      ),
      published: mt?.counter("mta_suppression_shared_published_total", "Own suppression changes published"),
      resyncs: mt?.counter("mta_suppression_shared_resyncs_total", "Full resynchronisations, by kind"),
      bad: mt?.counter(
        "mta_suppression_shared_bad_entries_total",
        "Stream entries that could not be decoded",
      ),
    };
    mt?.gauge("mta_suppression_shared_pending", "Own suppression changes not yet seen in the stream", (set) =>
      set(this.list.ownPendingCount),
    );
  }

  start(): void {
    this.list.onOwnChange = () => this.kick();
    this.shared.onNotify(() => this.kick());
    this.timer = setInterval(() => this.kick(), POLL_MS);
    this.kick();
  }

  /** Waits for the run in progress; nothing runs after. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.list.onOwnChange = undefined;
    await this.running;
  }

  health(): SharingHealth {
    return {
      pending: this.list.ownPendingCount,
      position: this.list.sharedPosition.id,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  /**
   * Runs a synchronisation now, or once more after the one in progress. No request is lost: one that
   * comes while a run is ending is seen by the run's own `finally`.
   */
  kick(): void {
    if (this.stopped) return;
    this.again = true;
    if (this.running) return;
    this.running = (async () => {
      while (this.again && !this.stopped) {
        this.again = false;
        try {
          await this.sync();
          this.lastError = undefined;
        } catch (err) {
          this.published = 0;
          if (err instanceof RedisDownError) break;
          const text = errorMessage(err);
          if (text !== this.lastError)
            this.opts.log.error("suppression list: sharing failed", { error: text });
          this.lastError = text;
          break; // the next change, message or poll tries again
        }
      }
    })().finally(() => {
      this.running = undefined;
      if (this.again && !this.stopped && this.lastError === undefined) this.kick();
    });
  }

  private async sync(): Promise<void> {
    if (!this.shared.up) {
      this.published = 0;
      return;
    }
    const st = await this.shared.status();
    const pos = this.list.sharedPosition;
    if (pos.epoch !== st.epoch) await this.merge(st);
    // Entries this node never read were trimmed (or Redis went back to an older copy of itself).
    else if (st.trimmed > pos.read || pos.read > st.added) await this.replace(st);
    await this.catchUp(st.epoch);
    await this.publish();
  }

  /** The state hash, decoded, a page at a time (an entry that does not decode is counted and left out). */
  private async *statePages(): AsyncGenerator<SuppressionChange[]> {
    for await (const pairs of this.shared.state()) {
      const page: SuppressionChange[] = [];
      for (const [field, value] of pairs) {
        try {
          page.push(...decodeChanges(Buffer.from(value, "base64")));
        } catch (err) {
          this.m.bad?.inc();
          this.opts.log.warn("suppression list: undecodable shared entry", {
            field,
            error: errorMessage(err),
          });
        }
      }
      yield page;
    }
  }

  /** The stream was trimmed past this node: the list becomes the cluster's copy (own pending changes kept). */
  private async replace(st: SharedLogStatus): Promise<void> {
    const r = await this.list.resyncShared(this.statePages(), true);
    await this.list.advanceShared({ epoch: st.epoch, id: st.lastId, read: st.added });
    this.m.resyncs?.inc({ kind: "replace" });
    this.opts.log.warn("suppression list: missed changes were trimmed from the stream; resynchronised", {
      from: st.epoch,
      written: r.applied,
      removed: r.removed,
    });
  }

  /**
   * Redis holds no copy this node followed (first start in cluster mode, or Redis lost its data):
   * take what the cluster has, and publish this node's whole list so that the others get it too.
   */
  private async merge(st: SharedLogStatus): Promise<void> {
    const was = this.list.sharedPosition.epoch;
    const r = await this.list.resyncShared(this.statePages(), false);
    let seeded = 0;
    await this.list.forEachChangePage(PUBLISH_PAGE, async (page) => {
      await this.append("seed", page);
      seeded += page.length;
    });
    await this.list.advanceShared({ epoch: st.epoch, id: st.lastId, read: st.added });
    this.m.resyncs?.inc({ kind: "merge" });
    (was ? this.opts.log.warn : this.opts.log.info)(
      was
        ? "suppression list: Redis no longer has the shared list this node followed; merged and republished"
        : "suppression list: joined the cluster's shared list",
      { written: r.applied, published: seeded },
    );
  }

  /**
   * Reads the stream from this node's position. Records from other nodes are applied in runs; an own
   * entry read back moves `ownSeen` (the changes it carries are no longer pending from there on).
   */
  private async catchUp(epoch: string): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      const entries = await this.shared.read(this.list.sharedPosition.id, READ_PAGE);
      if (entries.length === 0) return;
      let ownSeen = this.list.sharedPosition.confirmed;
      let run: SuppressionChange[] = [];
      const flush = async () => {
        if (run.length === 0) return;
        // Not inside `applied?.inc(...)`: without metrics that call, and the await, would be skipped.
        const written = await this.list.applyShared(run, ownSeen);
        this.m.applied?.inc(undefined, written);
        run = [];
      };
      for (const e of entries) {
        let changes: SuppressionChange[];
        try {
          changes = decodeChanges(Buffer.from(e.payload, "base64"));
        } catch (err) {
          this.m.bad?.inc();
          this.opts.log.error("suppression list: undecodable stream entry, left out", {
            id: e.id,
            node: e.node,
            error: errorMessage(err),
          });
          continue;
        }
        const own = e.node === this.opts.node ? /^(\d+)-(\d+)$/.exec(e.tag) : null;
        if (own) {
          await flush();
          ownSeen = Math.max(ownSeen, Number(own[2]));
        }
        run.push(...changes);
      }
      await flush();
      const pos = this.list.sharedPosition;
      await this.list.advanceShared(
        { epoch, id: entries[entries.length - 1]!.id, read: pos.read + entries.length },
        ownSeen,
      );
    }
  }

  /** Publishes own changes not published in this link session, oldest first. */
  private async publish(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      const { firstSeq, changes } = this.list.ownChanges(this.published + 1, PUBLISH_PAGE);
      if (changes.length === 0) return;
      const last = firstSeq + changes.length - 1;
      await this.append(`${firstSeq}-${last}`, changes);
      this.published = last;
      this.m.published?.inc(undefined, changes.length);
    }
  }

  private append(tag: string, changes: readonly SuppressionChange[]): Promise<string> {
    return this.shared.append(
      tag,
      b64(encodeChanges(changes)),
      changes.map((c) => [fieldOf(c), c.type === CHANGE_REMOVE ? "" : b64(encodeChanges([c]))] as const),
    );
  }
}
