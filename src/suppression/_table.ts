/**
 * The suppression list in RAM: an open-addressing hash table of 64-bit key hashes in typed arrays.
 *
 * Owns: slots, probing, growth, backward-shift deletion, the per-slot expiry / log ordinal / reason;
 * `lastOfEachKey` (the table used as a set of keys over a batch of records).
 * Does not own: the addresses themselves (they stay in the log file on disk: `list` and `export` read
 * them back from there), durability (_log.ts, _store.ts).
 * Design: a key is `<scope> NUL <address>` (scope "" = global), hashed by MurmurHash3 with two seeds
 * (keyHash) into (h1, h2), never (0, 0), which marks an empty slot. A slot is four u32 words side by side (h1, h2, expiry in seconds since
 * the epoch or 0, ordinal of the log record that set it) plus one reason byte: 17 bytes, one cache line
 * per probe. Linear probing at a load factor of at most 0.75; capacity is a power of two, so an entry
 * costs 17 / load bytes: 22.7 to 45.3 B. Two different keys collide with probability 2^-64 per pair.
 * Invariant: `count` is the number of occupied slots; an expired entry still occupies its slot until
 * it is deleted (lookups report it absent).
 */
import type { LogRecord } from "./_log.ts";

const WORDS = 4;
const MIN_CAPACITY = 1024;
const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;
const SEED_1 = 0x9e3779b1 | 0;
const SEED_2 = 0x85ebca77 | 0;

function mix(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The two hashes of the last `keyHash` call (one shared pair: no allocation per lookup). */
export const HASH = new Uint32Array(2);

/**
 * Hashes the key `scope NUL address`, the address lower-cased, into HASH[0], HASH[1]: MurmurHash3
 * (x86, 32-bit) over UTF-16 code units two at a time, with two seeds in one pass. Plain JavaScript on
 * purpose: no string is built or encoded per lookup (Bun.hash over a concatenated string costs ~5x
 * more). ASCII is lower-cased inline; an address with anything else is lower-cased by
 * String.prototype.toLowerCase first, as the stored address was.
 */
export function keyHash(scope: string, address: string): void {
  if (!hashRun(scope, address, true)) hashRun(scope, address.toLowerCase(), false);
}

/** One pass; with `lower`, gives up (false) at the first non-ASCII code unit of the address. */
function hashRun(scope: string, address: string, lower: boolean): boolean {
  let h1 = SEED_1;
  let h2 = SEED_2;
  let pend = -1;
  const sl = scope.length;
  const total = sl + 1 + address.length;
  for (let i = 0; i < total; i++) {
    let c: number;
    if (i < sl) c = scope.charCodeAt(i);
    else if (i === sl) c = 0;
    else {
      c = address.charCodeAt(i - sl - 1);
      if (lower) {
        if (c >= 128) return false;
        if (c >= 65 && c <= 90) c += 32;
      }
    }
    if (pend < 0) pend = c;
    else {
      const k = pend | (c << 16);
      h1 = mix(h1, k);
      h2 = mix(h2, k);
      pend = -1;
    }
  }
  finish(h1, h2, pend, total);
  return true;
}

/** MurmurHash3's tail (a last odd code unit) and finalization of both lanes, into HASH. */
function finish(h1: number, h2: number, pend: number, total: number): void {
  if (pend >= 0) {
    let k = Math.imul(pend, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h1 ^= k;
    h2 ^= k;
  }
  h1 = fmix(h1 ^ (total * 2));
  h2 = fmix(h2 ^ (total * 2));
  if (h1 === 0 && h2 === 0) h2 = 1;
  HASH[0] = h1;
  HASH[1] = h2;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * keyHash of a stored key, `buf[start, end)` = `scope NUL address` in UTF-8 and already lower case,
 * without making a string when it is ASCII (a code unit is then its byte).
 */
export function keyHashBytes(buf: Uint8Array, start: number, end: number, scopeBytes: number): void {
  for (let i = start; i < end; i++) {
    if (buf[i]! >= 128) {
      keyHash(
        utf8.decode(buf.subarray(start, start + scopeBytes)),
        utf8.decode(buf.subarray(start + scopeBytes + 1, end)),
      );
      return;
    }
  }
  let h1 = SEED_1;
  let h2 = SEED_2;
  let pend = -1;
  const total = end - start;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (pend < 0) pend = c;
    else {
      const k = pend | (c << 16);
      h1 = mix(h1, k);
      h2 = mix(h2, k);
      pend = -1;
    }
  }
  finish(h1, h2, pend, total);
}

export class HashTable {
  private words: Uint32Array;
  private reasons: Uint8Array;
  private mask: number;
  count = 0;

  constructor(expected = 0) {
    let cap = MIN_CAPACITY;
    while (cap * 0.75 < expected) cap *= 2;
    this.words = new Uint32Array(cap * WORDS);
    this.reasons = new Uint8Array(cap);
    this.mask = cap - 1;
  }

  get capacity(): number {
    return this.mask + 1;
  }

  /** Bytes of the typed arrays. */
  get bytes(): number {
    return this.words.byteLength + this.reasons.byteLength;
  }

  /** The slot holding (h1, h2), or -1. */
  find(h1: number, h2: number): number {
    const w = this.words;
    const mask = this.mask;
    let i = h1 & mask;
    for (;;) {
      const b = i * WORDS;
      const a = w[b]!;
      const c = w[b + 1]!;
      if (a === h1 && c === h2) return i;
      if (a === 0 && c === 0) return -1;
      i = (i + 1) & mask;
    }
  }

  occupied(slot: number): boolean {
    const b = slot * WORDS;
    return this.words[b] !== 0 || this.words[b + 1] !== 0;
  }

  expiryAt(slot: number): number {
    return this.words[slot * WORDS + 2]!;
  }

  ordinalAt(slot: number): number {
    return this.words[slot * WORDS + 3]!;
  }

  reasonAt(slot: number): number {
    return this.reasons[slot]!;
  }

  setOrdinal(slot: number, ordinal: number): void {
    this.words[slot * WORDS + 3] = ordinal;
  }

  /** Inserts or replaces; returns the slot. */
  set(h1: number, h2: number, expirySec: number, ordinal: number, reason: number): number {
    if (this.count + 1 > this.capacity * 0.75) this.grow();
    const w = this.words;
    const mask = this.mask;
    let i = h1 & mask;
    for (;;) {
      const b = i * WORDS;
      const a = w[b]!;
      const c = w[b + 1]!;
      if (a === 0 && c === 0) {
        this.count++;
        break;
      }
      if (a === h1 && c === h2) break;
      i = (i + 1) & mask;
    }
    const b = i * WORDS;
    w[b] = h1;
    w[b + 1] = h2;
    w[b + 2] = expirySec;
    w[b + 3] = ordinal;
    this.reasons[i] = reason;
    return i;
  }

  /** Removes the entry in `slot`, shifting later entries of its probe run back (no tombstones). */
  deleteSlot(slot: number): void {
    const w = this.words;
    const mask = this.mask;
    let i = slot;
    let j = slot;
    for (;;) {
      j = (j + 1) & mask;
      const bj = j * WORDS;
      if (w[bj] === 0 && w[bj + 1] === 0) break;
      const home = w[bj]! & mask;
      // Move j into the hole at i unless j's home lies cyclically in (i, j].
      const inRange = i <= j ? home > i && home <= j : home > i || home <= j;
      if (inRange) continue;
      const bi = i * WORDS;
      w[bi] = w[bj]!;
      w[bi + 1] = w[bj + 1]!;
      w[bi + 2] = w[bj + 2]!;
      w[bi + 3] = w[bj + 3]!;
      this.reasons[i] = this.reasons[j]!;
      i = j;
    }
    const bi = i * WORDS;
    w[bi] = 0;
    w[bi + 1] = 0;
    w[bi + 2] = 0;
    w[bi + 3] = 0;
    this.reasons[i] = 0;
    this.count--;
  }

  /** Calls `fn(slot)` for every occupied slot. */
  forEach(fn: (slot: number) => void): void {
    const w = this.words;
    for (let i = 0; i <= this.mask; i++) {
      const b = i * WORDS;
      if (w[b] !== 0 || w[b + 1] !== 0) fn(i);
    }
  }

  private grow(): void {
    const old = this.words;
    const oldReasons = this.reasons;
    const oldCap = this.capacity;
    const cap = oldCap * 2;
    this.words = new Uint32Array(cap * WORDS);
    this.reasons = new Uint8Array(cap);
    this.mask = cap - 1;
    this.count = 0;
    for (let i = 0; i < oldCap; i++) {
      const b = i * WORDS;
      const a = old[b]!;
      const c = old[b + 1]!;
      if (a === 0 && c === 0) continue;
      this.set(a, c, old[b + 2]!, old[b + 3]!, oldReasons[i]!);
    }
  }
}

/** Indexes of `records` that are the last change of their key, in order (a typed-array set, no strings). */
export function lastOfEachKey(records: readonly LogRecord[]): number[] {
  if (records.length === 1) return [0];
  const seen = new HashTable(records.length);
  const last: number[] = new Array(records.length);
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    keyHash(r.scope, r.address);
    const slot = seen.find(HASH[0]!, HASH[1]!);
    if (slot >= 0) last[seen.ordinalAt(slot)] = -1;
    seen.set(HASH[0]!, HASH[1]!, 0, i, 0);
    last[i] = i;
  }
  return last.filter((i) => i >= 0);
}
