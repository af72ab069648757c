/**
 * A ready queue: a FIFO of slot references (see _slots.ts) in a growable ring buffer.
 *
 * Owns: the order in which a site's due messages are handed to its connections.
 * Does not own: whether an entry is still current (the slot table says; stale entries are skipped
 * by whoever shifts them).
 * Invariants: `shift` returns entries in the order they were pushed, except those put back at the
 * front with `unshift` (a message returned unattempted after a site failure goes first again).
 * Memory: 8 bytes per queued entry; no object per entry.
 */

export class SlotFifo {
  private ring = new Float64Array(16);
  private head = 0;
  private count = 0;

  get length(): number {
    return this.count;
  }

  push(ref: number): void {
    if (this.count === this.ring.length) this.grow();
    this.ring[(this.head + this.count) & (this.ring.length - 1)] = ref;
    this.count++;
  }

  unshift(ref: number): void {
    if (this.count === this.ring.length) this.grow();
    this.head = (this.head - 1) & (this.ring.length - 1);
    this.ring[this.head] = ref;
    this.count++;
  }

  shift(): number | undefined {
    if (this.count === 0) return undefined;
    const slot = this.ring[this.head]!;
    this.head = (this.head + 1) & (this.ring.length - 1);
    this.count--;
    return slot;
  }

  /** Every slot from the front to the back. */
  forEach(cb: (slot: number) => void): void {
    const mask = this.ring.length - 1;
    for (let i = 0; i < this.count; i++) cb(this.ring[(this.head + i) & mask]!);
  }

  /** Removes and returns every queued slot, front first. */
  drain(): number[] {
    const out: number[] = [];
    for (let s = this.shift(); s !== undefined; s = this.shift()) out.push(s);
    return out;
  }

  private grow(): void {
    const n = this.ring.length * 2;
    const next = new Float64Array(n);
    const mask = this.ring.length - 1;
    for (let i = 0; i < this.count; i++) next[i] = this.ring[(this.head + i) & mask]!;
    this.ring = next;
    this.head = 0;
  }
}
