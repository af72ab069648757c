/**
 * The scheduled queue: a binary min-heap of (time, key) pairs over typed arrays.
 *
 * Owns: ordering of integer keys (spool slots, or destination numbers) by a due time in ms.
 * Does not own: what a key means, or what happens when it falls due (scheduler.ts).
 * Invariants: a key is in the heap at most once (`position[key]` is its index + 1, 0 when absent);
 * push, remove, update and pop are O(log n); nothing here ever scans the whole heap, except
 * `forEach` for administrative calls (flush by destination, summaries).
 * Ties are broken by insertion sequence, so keys due at the same time leave in the order they came.
 * Memory: 20 bytes per entry plus 4 bytes per key of the largest key seen; no object per entry.
 */

export class TimerHeap {
  private times = new Float64Array(64);
  private seqs = new Float64Array(64);
  private keys = new Int32Array(64);
  /** index + 1 of each key in the heap arrays, 0 when absent; indexed by key. */
  private position = new Int32Array(64);
  private length = 0;
  private seq = 0;

  get size(): number {
    return this.length;
  }

  has(key: number): boolean {
    return key < this.position.length && this.position[key]! !== 0;
  }

  /** The due time of `key`, or undefined when it is not in the heap. */
  timeOf(key: number): number | undefined {
    if (!this.has(key)) return undefined;
    return this.times[this.position[key]! - 1];
  }

  /** The earliest due time, or undefined when empty. */
  peekTime(): number | undefined {
    return this.length === 0 ? undefined : this.times[0];
  }

  peekKey(): number | undefined {
    return this.length === 0 ? undefined : this.keys[0];
  }

  /** Adds `key` due at `timeMs`, or moves it there when it is already queued. */
  push(key: number, timeMs: number): void {
    if (key < 0 || !Number.isInteger(key))
      throw new RangeError(`heap key must be a non-negative integer: ${key}`);
    if (this.has(key)) {
      this.update(key, timeMs);
      return;
    }
    this.ensureKey(key);
    if (this.length === this.times.length) this.growEntries();
    const i = this.length++;
    this.times[i] = timeMs;
    this.seqs[i] = this.seq++;
    this.keys[i] = key;
    this.position[key] = i + 1;
    this.up(i);
  }

  /** Moves a queued key to a new due time. */
  update(key: number, timeMs: number): void {
    const p = this.has(key) ? this.position[key]! - 1 : -1;
    if (p < 0) {
      this.push(key, timeMs);
      return;
    }
    const old = this.times[p]!;
    this.times[p] = timeMs;
    this.seqs[p] = this.seq++;
    if (timeMs < old) this.up(p);
    else this.down(p);
  }

  /** Removes `key`; false when it was not queued. */
  remove(key: number): boolean {
    if (!this.has(key)) return false;
    const i = this.position[key]! - 1;
    this.position[key] = 0;
    const last = --this.length;
    if (i !== last) {
      this.move(last, i);
      this.down(i);
      this.up(i);
    }
    return true;
  }

  /** Removes and returns the earliest key when it is due at or before `nowMs`. */
  popDue(nowMs: number): number | undefined {
    if (this.length === 0 || this.times[0]! > nowMs) return undefined;
    const key = this.keys[0]!;
    this.remove(key);
    return key;
  }

  /** Every (key, time), in no particular order. For administrative calls only: O(n). */
  forEach(cb: (key: number, timeMs: number) => void): void {
    for (let i = 0; i < this.length; i++) cb(this.keys[i]!, this.times[i]!);
  }

  clear(): void {
    for (let i = 0; i < this.length; i++) this.position[this.keys[i]!] = 0;
    this.length = 0;
  }

  private less(a: number, b: number): boolean {
    const ta = this.times[a]!;
    const tb = this.times[b]!;
    return ta < tb || (ta === tb && this.seqs[a]! < this.seqs[b]!);
  }

  private move(from: number, to: number): void {
    this.times[to] = this.times[from]!;
    this.seqs[to] = this.seqs[from]!;
    const k = this.keys[from]!;
    this.keys[to] = k;
    this.position[k] = to + 1;
  }

  private swap(a: number, b: number): void {
    const t = this.times[a]!;
    const s = this.seqs[a]!;
    const k = this.keys[a]!;
    this.move(b, a);
    this.times[b] = t;
    this.seqs[b] = s;
    this.keys[b] = k;
    this.position[k] = b + 1;
  }

  private up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(i, parent)) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private down(i: number): void {
    for (;;) {
      const l = 2 * i + 1;
      if (l >= this.length) return;
      const r = l + 1;
      const c = r < this.length && this.less(r, l) ? r : l;
      if (!this.less(c, i)) return;
      this.swap(i, c);
      i = c;
    }
  }

  private growEntries(): void {
    const n = this.times.length * 2;
    const t = new Float64Array(n);
    t.set(this.times);
    this.times = t;
    const s = new Float64Array(n);
    s.set(this.seqs);
    this.seqs = s;
    const k = new Int32Array(n);
    k.set(this.keys);
    this.keys = k;
  }

  private ensureKey(key: number): void {
    if (key < this.position.length) return;
    let n = this.position.length;
    while (n <= key) n *= 2;
    const p = new Int32Array(n);
    p.set(this.position);
    this.position = p;
  }
}
