/**
 * The body cache: the MESSAGE records (envelope and body) of recently appended messages, so that the
 * first delivery attempt decodes what was just written instead of reading it back from the disk.
 *
 * Owns: the cached records by slot, their total size, hit and miss counts.
 * Does not own: when a record is added (the append) or dropped (a finished message), decoding.
 * Invariants: `bytes` never exceeds the limit after `set` (oldest insertions go first); a record larger
 * than an eighth of the limit is never cached (one message must not flush everything else); a cached
 * record is the bytes that were appended (the same buffer, never a copy), so decoding it gives what a
 * read from the segment would.
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
