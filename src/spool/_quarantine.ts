/**
 * The quarantine: damaged bytes of segments, moved aside so that nothing acknowledged is ever cut
 * away unseen.
 *
 * Owns: `<spool>/quarantine/` (mode 0700) and its files `<segment sequence>-<offset>.bad` (mode 0600),
 * each holding exactly the bytes of one damaged range; listing them for `verify`.
 * Does not own: finding damage (_scan.ts), reclaiming the damaged segment afterwards (_recover.ts, _compact.ts).
 * Invariants: a quarantine file is complete and fsync'ed (file and directory) before recovery lets
 * compaction reclaim the segment that held its bytes; an existing quarantine file is never rewritten,
 * so restarting over the same damage leaves one copy.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import type { FileLayer } from "./_files.ts";

export const QUARANTINE_DIR = "quarantine";
const COPY_CHUNK_BYTES = 1 << 20;

export function quarantinePath(spoolDir: string, segment: string, offset: number): string {
  return join(spoolDir, QUARANTINE_DIR, `${segment.replace(/\.seg$/, "")}-${offset}.bad`);
}

/** Copies `bytes` bytes at `offset` of the segment open at `fd` into the quarantine; returns the path. */
export function quarantineRange(
  files: FileLayer,
  fd: number,
  spoolDir: string,
  segment: string,
  offset: number,
  bytes: number,
): string {
  const dir = join(spoolDir, QUARANTINE_DIR);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const path = quarantinePath(spoolDir, segment, offset);
  if (fs.existsSync(path)) return path;
  const tmp = `${path}.tmp`;
  const out = fs.openSync(tmp, "w", 0o600);
  try {
    fs.fchmodSync(out, 0o600);
    const buf = new Uint8Array(Math.min(COPY_CHUNK_BYTES, Math.max(bytes, 1)));
    for (let done = 0; done < bytes; ) {
      const n = files.readSync(fd, buf, 0, Math.min(buf.length, bytes - done), offset + done);
      if (n <= 0) break;
      fs.writeSync(out, buf, 0, n);
      done += n;
    }
    fs.fsyncSync(out);
  } finally {
    fs.closeSync(out);
  }
  fs.renameSync(tmp, path);
  const dfd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
  return path;
}

/** The quarantine files of a spool, oldest name first; empty when there is no quarantine. */
export function listQuarantine(spoolDir: string): { path: string; bytes: number }[] {
  const dir = join(spoolDir, QUARANTINE_DIR);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.endsWith(".bad"))
    .sort()
    .map((n) => {
      const path = join(dir, n);
      let bytes = 0;
      try {
        bytes = fs.statSync(path).size;
      } catch {}
      return { path, bytes };
    });
}
