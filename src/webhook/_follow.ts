/**
 * Following the delivery log file from a durable position, across reopen and rotation.
 *
 * Owns: `LogFollower` (the open file, the position `{ inode, offset }` and its file on disk, reading
 * whole lines from the position, moving on to a rotated-in file), `Position` persistence.
 * Does not own: what is done with the lines (dispatcher.ts).
 * A webhook without a saved position starts at the end of the log (events from then on).
 * Invariants: the position only moves forward, and only when the caller commits lines it has handled
 * (so a crash re-reads from the last commit: duplicates, never gaps); only whole lines (ending in LF)
 * are read; a file is left for the next one only once it is read to its end and the next one has
 * data (the writer reopens before it writes there: logrotate's `create` mode leaves the new file empty
 * until then, so nothing written to the old file after the switch can be missed).
 */
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";

export interface Position {
  /** Inode of the file the offset is in ("dev:ino"), or "" before the first read. */
  inode: string;
  offset: number;
}

function inodeOf(st: fs.Stats): string {
  return `${st.dev}:${st.ino}`;
}

export function readPosition(file: string): Position | undefined {
  try {
    const p = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<Position>;
    if (typeof p.inode === "string" && typeof p.offset === "number" && p.offset >= 0)
      return { inode: p.inode, offset: p.offset };
  } catch {}
  return undefined;
}

/** Writes the position durably: a temporary file, fdatasync, rename. */
export function writePosition(file: string, p: Position): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, "w", 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify({ ...p, updated: new Date().toISOString() })}\n`);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

export interface ReadLines {
  lines: string[];
  /** File offset just after each line (commit `{ inode: next.inode, offset: ends[i] }` to take lines 0..i). */
  ends: number[];
  /** The position after these lines (commit it once they are handled). */
  next: Position;
}

export class LogFollower {
  private fd = -1;
  private inode = "";
  private offset = 0;
  /** Bytes of the file beyond the position, as of the last read (for the lag metric). */
  lagBytes = 0;

  constructor(
    private readonly logFile: string,
    private readonly positionFile: string,
    private readonly warn: (message: string, fields: Record<string, unknown>) => void,
  ) {
    const saved = readPosition(positionFile);
    if (saved) this.openAt(saved);
    else {
      // A new webhook starts with the events logged from now on, not with the log's whole history.
      const st = this.statPath(logFile);
      if (st) this.open(logFile, st.size);
      writePosition(positionFile, this.position);
    }
  }

  get position(): Position {
    return { inode: this.inode, offset: this.offset };
  }

  /** Opens the file the saved position is in: the log itself, a rotated copy beside it, or else the log from 0. */
  private openAt(saved: Position | undefined): void {
    const current = this.statPath(this.logFile);
    if (!saved || saved.inode === "" || (current && inodeOf(current) === saved.inode)) {
      if (current) {
        this.open(this.logFile, saved && current && inodeOf(current) === saved.inode ? saved.offset : 0);
        if (saved && saved.offset > current.size) {
          this.warn(
            "webhook: the delivery log is shorter than the saved position (truncated?); reading it from the start",
            {
              file: this.logFile,
              offset: saved.offset,
              size: current.size,
            },
          );
          this.offset = 0;
        }
      }
      return;
    }
    // The log was rotated since the position was saved: find the old file by its inode.
    const dir = dirname(this.logFile);
    const base = basename(this.logFile);
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir).filter((n) => n.startsWith(base) && n !== base);
    } catch {}
    for (const n of names) {
      const st = this.statPath(join(dir, n));
      if (st && inodeOf(st) === saved.inode) {
        this.open(join(dir, n), Math.min(saved.offset, st.size));
        return;
      }
    }
    this.warn(
      "webhook: the file of the saved position is gone (rotated away?); events from its end were not sent",
      {
        file: this.logFile,
        inode: saved.inode,
        offset: saved.offset,
      },
    );
    if (current) this.open(this.logFile, 0);
  }

  private statPath(p: string): fs.Stats | undefined {
    try {
      return fs.statSync(p);
    } catch {
      return undefined;
    }
  }

  private open(path: string, offset: number): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = fs.openSync(path, "r");
    this.inode = inodeOf(fs.fstatSync(this.fd));
    this.offset = offset;
  }

  /**
   * Up to `maxLines` whole lines (at most `maxBytes` of them) from the position; moves on to the
   * current log file when this one is finished and the current one has data. Does not move the
   * position: `commit(next)` does.
   */
  read(maxLines: number, maxBytes: number): ReadLines {
    if (this.fd < 0) {
      const st = this.statPath(this.logFile);
      if (!st) return { lines: [], ends: [], next: this.position };
      this.open(this.logFile, 0);
    }
    let out = this.readFrom(maxLines, maxBytes);
    if (out.lines.length === 0) {
      const cur = this.statPath(this.logFile);
      const mine = fs.fstatSync(this.fd);
      if (cur && inodeOf(cur) !== this.inode && cur.size > 0 && this.offset >= mine.size) {
        this.open(this.logFile, 0);
        out = this.readFrom(maxLines, maxBytes);
      } else if (cur && inodeOf(cur) === this.inode && cur.size < this.offset) {
        this.warn("webhook: the delivery log was truncated under the position; reading it from the start", {
          file: this.logFile,
          offset: this.offset,
          size: cur.size,
        });
        this.offset = 0;
        out = this.readFrom(maxLines, maxBytes);
      }
    }
    return out;
  }

  private readFrom(maxLines: number, maxBytes: number): ReadLines {
    const size = fs.fstatSync(this.fd).size;
    this.lagBytes = Math.max(0, size - this.offset);
    if (size <= this.offset) return { lines: [], ends: [], next: this.position };
    const want = Math.min(maxBytes, size - this.offset);
    const buf = Buffer.allocUnsafe(want);
    const n = fs.readSync(this.fd, buf, 0, want, this.offset);
    const lines: string[] = [];
    const ends: number[] = [];
    let start = 0;
    let used = 0;
    while (lines.length < maxLines) {
      const lf = buf.indexOf(10, start);
      if (lf < 0 || lf >= n) break;
      lines.push(buf.toString("utf8", start, lf));
      start = lf + 1;
      used = start;
      ends.push(this.offset + used);
    }
    if (used === 0 && n === maxBytes) {
      // One line longer than a whole batch: send it alone rather than stall behind it.
      const lf = (() => {
        const big = Buffer.allocUnsafe(Math.min(size - this.offset, 64 * 1024 * 1024));
        const m = fs.readSync(this.fd, big, 0, big.length, this.offset);
        const i = big.indexOf(10);
        return i >= 0 && i < m ? { i, big } : undefined;
      })();
      if (lf) {
        const end = this.offset + lf.i + 1;
        return {
          lines: [lf.big.toString("utf8", 0, lf.i)],
          ends: [end],
          next: { inode: this.inode, offset: end },
        };
      }
    }
    return { lines, ends, next: { inode: this.inode, offset: this.offset + used } };
  }

  /** The lines up to `next` are handled: move there and save it durably. */
  commit(next: Position): void {
    if (next.inode !== this.inode || next.offset < this.offset) return;
    this.offset = next.offset;
    writePosition(this.positionFile, next);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
