/**
 * A site's connection slots on this node, with a synchronous face for the scheduler.
 *
 * Owns: the leases this node holds for one site (and source, if given), asking for more when the
 * site wants them (in the background), giving back those it no longer needs (after a linger, so
 * that a worker ending and the next one starting do not churn Redis, and so that a connection the
 * deliverer keeps idle for the next message still has its slot), and telling the site when the
 * count changed.
 * Does not own: leases themselves (_leases.ts), starting workers (the scheduler's site asks `count`).
 *
 * How the scheduler uses it: a site's connection limit becomes min(its own limit, `allowed()`), and
 * it calls `want(n, limit)` with how many it could use now (its limit, or fewer when little is
 * ready); when `onChange` fires it tries to start workers again. Leases are fungible within a site:
 * when one is lost (not renewed in time, or Redis gone and the share smaller), `count()` drops below
 * the workers running, and the scheduler's own check (more workers than the limit) ends one of them
 * after the message in hand, whichever lease it was started under.
 * Invariants: `count()` never counts a lease that is lost or past its local deadline; a surplus
 * lease is given back only while more are held than the site's connections open or closing
 * (`inUse`): when other nodes wait, `allowed()` falls to this node's fair part at once, the
 * connections beyond it end after the message in hand, and only then are their slots free for the
 * others, so that the limit is not exceeded while slots move between nodes.
 */
import type { Lease, LeaseManager } from "./_leases.ts";

/** A surplus lease is given back after this long unneeded, by default. */
const LINGER_MS = 250;

export class SiteSlots {
  private readonly held: Lease[] = [];
  private pending = 0;
  /** Refused by the cluster: ask again only when a slot may be free (onFree) or the limit changes. */
  private blocked = false;
  private target = 0;
  /** The `n` of the last `want`: a fall is a connection that may now be idle. */
  private lastWanted = 0;
  private limit = 1;
  private lingerTimer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;

  constructor(
    private readonly leases: LeaseManager,
    readonly site: string,
    private readonly source: { address: string; limit: number } | undefined,
    /** Called when `count()` may have changed (a lease granted, lost, or a slot free to ask for). */
    private readonly onChange: () => void,
    private readonly onClose: (s: SiteSlots) => void = () => {},
    /** How long a surplus lease is kept: at least as long as an idle connection may stay open. */
    private readonly lingerMs = LINGER_MS,
    /** The site's connections open or closing under these leases. */
    private readonly inUse: () => number = () => 0,
  ) {}

  /** Connections the site may have now: the usable leases, down to its fair part when others wait. */
  allowed(): number {
    return Math.min(this.count(), this.target);
  }

  /** Usable leases held now. */
  count(): number {
    let n = 0;
    for (let i = this.held.length - 1; i >= 0; i--) {
      const l = this.held[i]!;
      if (l.usable) n++;
      else if (l.lost || l.released) this.held.splice(i, 1);
    }
    return n;
  }

  /**
   * The site could use `n` connections now under a cluster-wide limit of `limit`: asks for the
   * missing leases in the background, and gives back a surplus after a short linger.
   */
  want(n: number, limit: number): void {
    if (this.closed) return;
    const lim = Math.max(1, limit);
    if (lim !== this.limit) {
      this.limit = lim;
      this.blocked = false; // a new limit may have room
    }
    // Other nodes waiting for this site: keep no more than this node's fair part.
    this.target = Math.max(0, Math.min(n, this.leases.fairShare(this.site, lim)));
    const have = this.count();
    if (have + this.pending < this.target && !this.blocked) {
      for (let k = have + this.pending; k < this.target; k++) void this.acquireOne();
    }
    // A connection that stopped being used (the count wanted fell) may stay open idle for the
    // linger: a surplus is given back a full linger after the last such change, or when needed again.
    const changed = n < this.lastWanted;
    this.lastWanted = n;
    if (have > this.target) {
      if (changed && this.lingerTimer) {
        clearTimeout(this.lingerTimer);
        this.lingerTimer = undefined;
      }
      this.armLinger();
    } else if (this.lingerTimer) {
      // Needed again: a later surplus waits a full linger from then.
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
  }

  /** A slot of this site may have come free somewhere (the lease manager's onFree). */
  freed(): void {
    if (!this.blocked) return;
    this.blocked = false;
    this.want(this.target, this.limit);
    this.onChange();
  }

  private async acquireOne(): Promise<void> {
    this.pending++;
    const lease = await this.leases.acquire({
      site: this.site,
      limit: this.limit,
      ...(this.source ? { source: this.source } : {}),
    });
    this.pending--;
    if (!lease) {
      this.blocked = true;
      return;
    }
    if (this.closed) {
      lease.release();
      return;
    }
    lease.onLost = () => this.onChange();
    this.held.push(lease);
    if (this.count() > this.target) this.armLinger();
    this.onChange();
  }

  private armLinger(): void {
    if (this.lingerTimer) return;
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = undefined;
      // Give back the newest first: the oldest have been renewed and are the safest to keep. Never
      // one a connection still needs: look again a linger later.
      const keep = Math.max(this.target, this.inUse());
      while (this.count() > keep) this.held.pop()?.release();
      if (this.count() > this.target) this.armLinger();
    }, this.lingerMs);
    (this.lingerTimer as { unref?: () => void }).unref?.();
  }

  /** Gives every lease back (the site is retired, or the node stops). */
  close(): void {
    this.closed = true;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    for (const l of this.held.splice(0)) l.release();
    this.onClose(this);
  }
}
