/**
 * The slot table: what the scheduler knows about each spool slot, in typed arrays.
 *
 * Owns: where a slot's message is (`where`), its generation, the site and pool queue holding it,
 * its pool, and its flags (overflow-deferred, delay warning sent, operator command pending).
 * Does not own: the message (spool/), the queues themselves (sites, the timer tier).
 * References. A queue entry is a `SlotRef`: the slot number and the slot's generation when the entry
 * was made. `renew` starts a new generation each time a slot enters a ready queue or changes hands,
 * so an older entry is recognisably stale (skipped), and an attempt that ends on a slot that no
 * longer holds its message fails `assertCurrent` instead of recording an outcome on another message.
 * Memory: 15 bytes per slot of the largest slot seen; no object per message.
 */
import { assert } from "../lib/index.ts";

export const NONE = 0;
export const SCHEDULED = 1;
export const READY = 2;
export const ACTIVE = 3;
/** Waiting for its domain's first route lookup (MX rollup). */
export const ROUTING = 4;
/** Taken out of its queue for an operator's command (the command lane). */
export const COMMAND = 5;

export const CMD_NONE = 0;
export const CMD_BOUNCE = 1;
export const CMD_DELETE = 2;

/** Slots are below 2^24; generations wrap at 2^28, so a reference stays an exact double. */
const SLOT_SPACE = 2 ** 24;
const GEN_MASK = 2 ** 28 - 1;

export type SlotRef = number;

export function slotOfRef(ref: SlotRef): number {
  return ref % SLOT_SPACE;
}

export class SlotTable {
  where = new Uint8Array(1024);
  gen = new Uint32Array(1024);
  /** The site number whose queue holds the slot (READY), or whose overflow it counts in. */
  site = new Int32Array(1024);
  /** The pool index + 1 of the ready queue holding the slot (READY). */
  queuedPool = new Uint16Array(1024);
  /** The message's own pool index + 1 (0 = not known yet: its site's pool). */
  pool = new Uint16Array(1024);
  /** Deferred because its site's ready queues were full (`site` names the site). */
  overflow = new Uint8Array(1024);
  /** A delay warning was sent for the message in this slot. */
  warned = new Uint8Array(1024);
  /** An operator's command waits for the message: CMD_BOUNCE or CMD_DELETE. */
  command = new Uint8Array(1024);
  /** The spool reused the slot while the old message was still ACTIVE: enqueue it after. */
  requeue = new Uint8Array(1024);

  ensure(slot: number): void {
    if (slot >= 0 && slot < this.where.length) return;
    assert(slot >= 0 && slot < SLOT_SPACE, () => `slot ${slot} out of range`);
    let n = this.where.length;
    while (n <= slot) n *= 2;
    const grow = <T extends Uint8Array | Uint16Array | Uint32Array | Int32Array>(
      a: T,
      make: (n: number) => T,
    ) => {
      const b = make(n);
      b.set(a);
      return b;
    };
    this.where = grow(this.where, (k) => new Uint8Array(k));
    this.gen = grow(this.gen, (k) => new Uint32Array(k));
    this.site = grow(this.site, (k) => new Int32Array(k));
    this.queuedPool = grow(this.queuedPool, (k) => new Uint16Array(k));
    this.pool = grow(this.pool, (k) => new Uint16Array(k));
    this.overflow = grow(this.overflow, (k) => new Uint8Array(k));
    this.warned = grow(this.warned, (k) => new Uint8Array(k));
    this.command = grow(this.command, (k) => new Uint8Array(k));
    this.requeue = grow(this.requeue, (k) => new Uint8Array(k));
  }

  whereOf(slot: number): number {
    return slot < this.where.length ? this.where[slot]! : NONE;
  }

  ref(slot: number): SlotRef {
    return this.gen[slot]! * SLOT_SPACE + slot;
  }

  /** A new generation for `slot`: every older reference to it is now stale. */
  renew(slot: number): SlotRef {
    this.gen[slot] = (this.gen[slot]! + 1) & GEN_MASK;
    return this.ref(slot);
  }

  isCurrent(ref: SlotRef): boolean {
    const slot = slotOfRef(ref);
    return slot < this.gen.length && this.ref(slot) === ref;
  }

  assertCurrent(ref: SlotRef, what: string): void {
    assert(this.isCurrent(ref), () => `${what}: stale reference to slot ${slotOfRef(ref)}`);
  }

  /** The message left the scheduler (done, deleted): the slot is free for the spool's next message. */
  release(slot: number): void {
    this.where[slot] = NONE;
    this.warned[slot] = 0;
    this.command[slot] = CMD_NONE;
    this.overflow[slot] = 0;
    this.renew(slot);
  }
}
