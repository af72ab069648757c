/**
 * The in-RAM index of queued messages: compact typed-array columns addressed by slot number.
 *
 * Owns: slot allocation (a free-slot stack), the columns, interned destination strings, the
 * id -> slot hash table, per-recipient states of multi-recipient messages (a side table), and the
 * counts taken over the columns (recipients by state, messages per destination).
 * Does not own: the bytes on disk, durability, segment bookkeeping (_segments.ts).
 * Invariant: a slot is live iff `live[slot] === 1`; a live slot's id is in the hash table exactly once.
 * Memory: about 80 bytes per slot of capacity plus 8 per hash-table entry; columns grow by doubling,
 * so there is no object per message and nothing for the GC to trace at millions of messages.
 */

import { STATE_DELIVERED, STATE_FAILED } from "./_format.ts";

const EMPTY = 0;

function hashId(ms: number, counter: number): number {
  const lo = (ms % 0x1_0000_0000) | 0;
  const hi = Math.floor(ms / 0x1_0000_0000) | 0;
  let h = Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) ^ Math.imul(counter, 0xc2b2ae35);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 13;
  return h >>> 0;
}

export class SlotIndex {
  capacity = 0;
  /** Slots ever handed out; slots below this are either live or on the free stack. */
  highWater = 0;
  liveCount = 0;

  recSeg = new Uint32Array(0);
  recOff = new Uint32Array(0);
  recLen = new Uint32Array(0);
  outSeg = new Uint32Array(0);
  outOff = new Uint32Array(0);
  outLen = new Uint32Array(0);
  idMs = new Float64Array(0);
  idCounter = new Uint32Array(0);
  dest = new Uint32Array(0);
  nextAttempt = new Float64Array(0);
  arrival = new Float64Array(0);
  attempts = new Uint32Array(0);
  size = new Uint32Array(0);
  pending = new Uint32Array(0);
  rcptCount = new Uint32Array(0);
  live = new Uint8Array(0);
  /** State of the only recipient of single-recipient messages. */
  state0 = new Uint8Array(0);
  /** Recipient states of messages with more than one recipient. */
  states = new Map<number, Uint8Array>();

  private free = new Int32Array(0);
  private freeTop = 0;

  private table = new Int32Array(0);
  private tableMask = 0;

  readonly destNames: string[] = [];
  private destIds = new Map<string, number>();

  constructor(initialCapacity = 1024) {
    this.grow(initialCapacity);
  }

  internDestination(name: string): number {
    let id = this.destIds.get(name);
    if (id === undefined) {
      id = this.destNames.length;
      this.destNames.push(name);
      this.destIds.set(name, id);
    }
    return id;
  }

  private grow(capacity: number): void {
    const g = <T extends Uint32Array | Float64Array | Uint8Array | Int32Array>(a: T): T => {
      const b = new (a.constructor as new (n: number) => T)(capacity);
      b.set(a);
      return b;
    };
    this.recSeg = g(this.recSeg);
    this.recOff = g(this.recOff);
    this.recLen = g(this.recLen);
    this.outSeg = g(this.outSeg);
    this.outOff = g(this.outOff);
    this.outLen = g(this.outLen);
    this.idMs = g(this.idMs);
    this.idCounter = g(this.idCounter);
    this.dest = g(this.dest);
    this.nextAttempt = g(this.nextAttempt);
    this.arrival = g(this.arrival);
    this.attempts = g(this.attempts);
    this.size = g(this.size);
    this.pending = g(this.pending);
    this.rcptCount = g(this.rcptCount);
    this.live = g(this.live);
    this.state0 = g(this.state0);
    this.free = g(this.free);
    this.capacity = capacity;
    // Hash table at most half full.
    const tableSize = capacity * 2;
    const old = this.table;
    this.table = new Int32Array(tableSize);
    this.tableMask = tableSize - 1;
    for (let i = 0; i < old.length; i++) {
      const v = old[i]!;
      if (v !== EMPTY) this.tableInsert(v - 1);
    }
  }

  /** Allocates a slot and registers its id; the caller fills the other columns. */
  allocate(idMs: number, idCounter: number): number {
    let slot: number;
    if (this.freeTop > 0) slot = this.free[--this.freeTop]!;
    else {
      if (this.highWater === this.capacity) this.grow(this.capacity * 2);
      slot = this.highWater++;
    }
    this.idMs[slot] = idMs;
    this.idCounter[slot] = idCounter;
    this.live[slot] = 1;
    this.liveCount++;
    this.tableInsert(slot);
    return slot;
  }

  release(slot: number): void {
    if (this.live[slot] !== 1) return;
    this.tableDelete(slot);
    this.live[slot] = 0;
    this.liveCount--;
    this.states.delete(slot);
    this.outSeg[slot] = 0;
    this.free[this.freeTop++] = slot;
  }

  find(idMs: number, idCounter: number): number {
    const t = this.table;
    const mask = this.tableMask;
    for (let i = hashId(idMs, idCounter) & mask; ; i = (i + 1) & mask) {
      const v = t[i]!;
      if (v === EMPTY) return -1;
      const s = v - 1;
      if (this.idMs[s] === idMs && this.idCounter[s] === idCounter) return s;
    }
  }

  private tableInsert(slot: number): void {
    const t = this.table;
    const mask = this.tableMask;
    let i = hashId(this.idMs[slot]!, this.idCounter[slot]!) & mask;
    while (t[i] !== EMPTY) i = (i + 1) & mask;
    t[i] = slot + 1;
  }

  /** Linear-probing deletion with backward shift (no tombstones). */
  private tableDelete(slot: number): void {
    const t = this.table;
    const mask = this.tableMask;
    let i = hashId(this.idMs[slot]!, this.idCounter[slot]!) & mask;
    while (t[i] !== slot + 1) {
      if (t[i] === EMPTY) return;
      i = (i + 1) & mask;
    }
    let j = i;
    for (;;) {
      t[i] = EMPTY;
      for (;;) {
        j = (j + 1) & mask;
        const v = t[j]!;
        if (v === EMPTY) return;
        const home = hashId(this.idMs[v - 1]!, this.idCounter[v - 1]!) & mask;
        // Move v back to i unless its home lies cyclically in (i, j].
        if (i <= j ? home <= i || home > j : home <= i && home > j) {
          t[i] = v;
          i = j;
          break;
        }
      }
    }
  }

  stateOf(slot: number, index: number): number {
    if (this.rcptCount[slot] === 1) return index === 0 ? this.state0[slot]! : -1;
    const s = this.states.get(slot);
    return s ? (s[index] ?? -1) : -1;
  }

  setStates(slot: number, states: ArrayLike<number>, n = states.length): void {
    this.rcptCount[slot] = n;
    let pending = 0;
    for (let i = 0; i < n; i++) if (states[i] === 0) pending++;
    this.pending[slot] = pending;
    if (n === 1) {
      this.state0[slot] = states[0]!;
      this.states.delete(slot);
    } else {
      const a = new Uint8Array(n);
      for (let i = 0; i < n; i++) a[i] = states[i]!;
      this.states.set(slot, a);
    }
  }

  /** Recipients of live messages by state, from one pass over the columns. */
  countRecipients(): { pending: number; delivered: number; failed: number } {
    const out = { pending: 0, delivered: 0, failed: 0 };
    for (let slot = 0; slot < this.highWater; slot++) {
      if (this.live[slot] !== 1) continue;
      const n = this.rcptCount[slot]!;
      out.pending += this.pending[slot]!;
      if (n === 1) continue;
      const s = this.states.get(slot)!;
      for (let i = 0; i < n; i++) {
        if (s[i] === STATE_DELIVERED) out.delivered++;
        else if (s[i] === STATE_FAILED) out.failed++;
      }
    }
    return out;
  }

  /** Live messages, pending recipients, bytes and the oldest arrival per destination, from one pass. */
  countsByDestination(): Map<
    string,
    { messages: number; recipients: number; bytes: number; oldestMs: number }
  > {
    const byId = new Map<number, { messages: number; recipients: number; bytes: number; oldestMs: number }>();
    for (let slot = 0; slot < this.highWater; slot++) {
      if (this.live[slot] !== 1) continue;
      const d = this.dest[slot]!;
      let c = byId.get(d);
      if (!c) byId.set(d, (c = { messages: 0, recipients: 0, bytes: 0, oldestMs: Number.POSITIVE_INFINITY }));
      c.messages++;
      c.recipients += this.pending[slot]!;
      c.bytes += this.size[slot]!;
      if (this.arrival[slot]! < c.oldestMs) c.oldestMs = this.arrival[slot]!;
    }
    const out = new Map<string, { messages: number; recipients: number; bytes: number; oldestMs: number }>();
    for (const [d, c] of byId) out.set(this.destNames[d]!, c);
    return out;
  }

  /** Distinct destinations of live messages. */
  countDestinations(): number {
    const seen = new Set<number>();
    for (let slot = 0; slot < this.highWater; slot++) if (this.live[slot] === 1) seen.add(this.dest[slot]!);
    return seen.size;
  }
}
