/**
 * The body cache: bodies of recently appended messages, so that the first delivery attempt does not
 * read back from the disk what was just written.
 *
 * Owns: the cached bodies by slot, their total size, hit and miss counts.
 * Does not own: when a body is added (the append) or dropped (a finished message), the record bytes.
 * Invariants: `bytes` never exceeds the limit after `set` (oldest insertions go first); a body larger
 * than an eighth of the limit is never cached (one message must not flush everything else); a cached
 * body is a view of the appended record, never a copy.
 */
export class BodyCache {
  private map = new Map<number, Uint8Array>();
  bytes = 0;
  hits = 0;
  misses = 0;
  constructor(private readonly limitBytes: number) {}
  get size(): number {
    return this.map.size;
  }
  set(slot: number, body: Uint8Array): void {
    if (this.limitBytes <= 0 || body.length > this.limitBytes / 8) return;
    this.delete(slot);
    this.map.set(slot, body);
    this.bytes += body.length;
    while (this.bytes > this.limitBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      this.delete(first.value);
    }
  }
  get(slot: number): Uint8Array | undefined {
    const b = this.map.get(slot);
    if (b) this.hits++;
    else this.misses++;
    return b;
  }
  delete(slot: number): void {
    const b = this.map.get(slot);
    if (!b) return;
    this.map.delete(slot);
    this.bytes -= b.length;
  }
}
