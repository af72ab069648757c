/**
 * Connection workers: how many run, where, and the loop each one runs.
 *
 * Owns: starting workers for a site while it has ready mail and every limit allows one more (its
 * limit and window, its rates, a free source, the global cap), each worker's loop (ready messages one
 * after another over one connection, up to `maxMessagesPerConnection`, under the message rate), the
 * global count, and the sites waiting for the global cap (oldest first).
 * Does not own: the attempt itself (_attempt.ts), source choice (_egress.ts), limits (_site.ts).
 * Invariants: a site never has more workers than its limit, nor more than `maxConnections` on one
 * source address, nor all sites more than the global cap, nor one source more than its cap.
 */
import type { Attempts, WorkerCtx } from "./_attempt.ts";
import type { SchedulerCore } from "./_core.ts";
import type { PoolQueue, Site } from "./_site.ts";
import type { SlotRef } from "./_slots.ts";

export class Workers {
  /** Connection workers running, all sites together. */
  active = 0;
  /** Connections being retired (QUIT sent, not yet closed), all sites together. */
  closing = 0;
  /** Sites with ready messages held back only by the global connection cap, oldest first. */
  private readonly waitingGlobal = new Set<Site>();
  private readonly running = new Set<Promise<void>>();

  constructor(
    private readonly core: SchedulerCore,
    private readonly attempts: Attempts,
    private readonly onEnd: () => void,
  ) {}

  /** Starts connection workers for `site` while it has ready mail and every limit allows one more. */
  tryStart(site: Site): void {
    const core = this.core;
    if (core.stopping || site.readyLength === 0) return;
    const now = core.clock.now();
    if (site.isSuspended(now)) return;
    if (site.suspendedUntilMs > 0) site.lift("suspension ended");
    const cap = core.live.maxConnections;
    while (site.readyLength > 0 && site.connections < site.limit(now, cap)) {
      if (this.active + this.closing >= cap) {
        this.waitingGlobal.add(site);
        return;
      }
      const rateWait = site.messageWait(now);
      if (rateWait > 0) {
        core.timers.wakeAt(site.num, now + rateWait);
        return;
      }
      let ctx: WorkerCtx | undefined;
      const n = site.queues.length;
      for (let k = 0; k < n && !ctx; k++) {
        const q = site.queues[(site.rr + k) % n]!;
        if (q.ready.length === 0) continue;
        const source = core.egress.pick(site, q.pool);
        if (source === undefined) continue;
        site.rr = (site.rr + k + 1) % n;
        ctx = { q, source };
      }
      if (!ctx) {
        // Every source is at a cap. The site's own workers retry when they end; with none running,
        // the cap is another site's use of the source: wait for any worker to end.
        if (site.active === 0) this.waitingGlobal.add(site);
        return;
      }
      const ref = core.takeReady(site, ctx.q);
      if (ref === undefined) continue;
      const connWait = site.takeConnection(now);
      if (connWait > 0) {
        core.putBack(site, ref);
        core.timers.wakeAt(site.num, now + connWait);
        return;
      }
      const p = this.worker(site, ctx, ref);
      this.running.add(p);
      void p.finally(() => this.running.delete(p));
    }
  }

  /** Resolves when every running worker has ended, or after `graceMs`. */
  async drain(graceMs: number): Promise<void> {
    const all = Promise.all([...this.running]);
    let t: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([all, new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
    if (t) clearTimeout(t);
  }

  /** One connection worker: ready messages one after another, up to maxMessagesPerConnection. */
  private async worker(site: Site, w: WorkerCtx, first: SlotRef): Promise<void> {
    const core = this.core;
    this.active++;
    site.active++;
    core.egress.acquire(site, w.source);
    let ref: SlotRef | undefined = first;
    let sent = 0;
    try {
      while (ref !== undefined) {
        const now = core.clock.now();
        const wait = site.takeMessageToken(now);
        if (wait > 0) {
          core.putBack(site, ref);
          core.timers.wakeAt(site.num, now + wait);
          break;
        }
        const end = await this.attempts.run(site, w, ref);
        this.retire(site, w);
        if (end !== "requeued") sent++;
        if (end === "site-failure" || core.stopping) break;
        // Another queue's message went back, or a success opened the window (slow start): more
        // workers may start now, not only when this one ends.
        if (site.readyLength > 0 && site.connections < site.limit(core.clock.now(), core.live.maxConnections))
          this.tryStart(site);
        const after = core.clock.now();
        if (site.isSuspended(after) || sent >= Math.max(1, site.policy.maxMessagesPerConnection)) break;
        // The window shrank, a throttle began, or its last connection is still closing.
        if (site.connections > site.limit(after, core.live.maxConnections)) break;
        ref = core.takeReady(site, w.q as PoolQueue);
      }
    } finally {
      this.retire(site, w);
      this.active--;
      site.active--;
      site.lastActiveMs = core.clock.now();
      core.egress.release(site, w.source);
      this.pumpWaiting();
      this.tryStart(site);
      this.onEnd();
    }
  }

  /**
   * The worker's last connection is being retired (QUIT sent behind the message): until it is closed
   * it still counts against the site's limit, its source's and the global cap, so the remote never
   * sees more connections than the limit, but the worker is free for the next message.
   */
  private retire(site: Site, w: WorkerCtx): void {
    const closing = w.closing;
    if (!closing) return;
    w.closing = undefined;
    const core = this.core;
    site.closing++;
    this.closing++;
    core.egress.acquire(site, w.source);
    void closing.finally(() => {
      site.closing--;
      this.closing--;
      core.egress.release(site, w.source);
      this.pumpWaiting();
      this.tryStart(site);
    });
  }

  /** Lets sites held back by the global cap start, oldest waiter first. */
  pumpWaiting(): void {
    for (const s of this.waitingGlobal) {
      if (this.active + this.closing >= this.core.live.maxConnections) return;
      this.waitingGlobal.delete(s);
      this.tryStart(s);
    }
  }
}
