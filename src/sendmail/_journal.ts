/**
 * The batch journal of `mta send --batch-id ID`: which items of a batch were already accepted, so a
 * re-run after a crash or a cron retry skips them.
 *
 * Owns: `<spool dir>/batches/<ID>.journal` (one key per line, appended; a torn last line is ignored),
 * its group commit (many keys, one write, one fdatasync), and an exclusive `flock(2)` on the file for
 * the whole run, so two runs of the same batch never send the same item concurrently.
 * Invariant: a key is written only after its message is durable in the spool (local) or acknowledged by
 * the daemon's inject API (which answers after its own fdatasync). A crash between the two re-sends that
 * message on the next run (at least once), never loses one.
 */
import {
  closeSync,
  fchmodSync,
  fdatasyncSync,
  fstatSync,
  mkdirSync,
  openSync,
  readSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { loadFlock, tryLockExclusive } from "../lib/index.ts";

export class JournalBusyError extends Error {
  override name = "JournalBusyError";
}

export class BatchJournal {
  private pending: string[] = [];
  private flushing: Promise<void> | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly done: Set<string>,
  ) {}

  /**
   * Opens (creating) the journal and takes its lock, waiting up to `waitMs` for a concurrent run of the
   * same batch to finish; throws JournalBusyError after that.
   */
  static async open(spoolDir: string, batchId: string, waitMs: number): Promise<BatchJournal> {
    const dir = join(spoolDir, "batches");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, `${batchId}.journal`);
    const fd = openSync(path, "a+", 0o600);
    fchmodSync(fd, 0o600); // spool files are private whatever the umask
    if (loadFlock()) {
      const deadline = Date.now() + waitMs;
      while (!tryLockExclusive(fd)) {
        if (Date.now() >= deadline) {
          closeSync(fd);
          throw new JournalBusyError(`batch ${batchId} is being sent by another process (${path} is locked)`);
        }
        await Bun.sleep(100);
      }
    }
    return new BatchJournal(path, fd, readKeys(fd));
  }

  get size(): number {
    return this.done.size;
  }

  has(key: string): boolean {
    return this.done.has(key);
  }

  /** Records keys; the promise resolves once they are on stable storage. */
  add(keys: readonly string[]): Promise<void> {
    for (const k of keys) {
      const clean = k.replace(/[\r\n]/g, " ");
      this.done.add(clean);
      this.pending.push(clean);
    }
    return this.flush();
  }

  private flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => (this.pending.length ? this.flush() : undefined));
    if (this.pending.length === 0) return Promise.resolve();
    this.flushing = (async () => {
      await Promise.resolve(); // gather what the current turn of the event loop adds
      const lines = `${this.pending.join("\n")}\n`;
      this.pending = [];
      writeSync(this.fd, lines);
      fdatasyncSync(this.fd);
    })().finally(() => {
      this.flushing = undefined;
    });
    return this.flushing;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    closeSync(this.fd); // releases the flock
  }
}

function readKeys(fd: number): Set<string> {
  const size = fstatSync(fd).size;
  const done = new Set<string>();
  const buf = Buffer.allocUnsafe(1 << 20);
  const decoder = new TextDecoder();
  let carry = "";
  let off = 0;
  while (off < size) {
    const n = readSync(fd, buf, 0, buf.length, off);
    if (n === 0) break;
    off += n;
    const text = carry + decoder.decode(buf.subarray(0, n), { stream: true });
    const lines = text.split("\n");
    carry = lines.pop()!; // a torn last line (no LF) was never acknowledged as written
    for (const l of lines) if (l) done.add(l);
  }
  return done;
}
