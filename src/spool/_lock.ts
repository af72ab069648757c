/**
 * The spool's LOCK file: one process owns a spool directory at a time.
 *
 * Owns: taking and releasing the lock, the holder's pid inside the file.
 * Invariant: the lock is a kernel `flock(2)` (via bun:ffi on libc), so it is released when the holder
 * dies, even by SIGKILL; a restart never needs a stale lock removed by hand. Where libc cannot be
 * loaded, a pid file whose holder is checked with `kill(pid, 0)` stands in (weaker: a recycled pid
 * can look alive).
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { loadFlock, tryLockExclusive } from "../lib/index.ts";
import { SpoolLockedError } from "./errors.ts";

function readPid(path: string): number | undefined {
  try {
    const n = Number.parseInt(fs.readFileSync(path, "utf8").trim(), 10);
    return Number.isFinite(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

export interface SpoolLock {
  readonly path: string;
  readonly kind: "flock" | "pidfile";
  release(): void;
}

export function takeLock(dir: string): SpoolLock {
  const path = join(dir, "LOCK");
  if (loadFlock()) {
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    fs.fchmodSync(fd, 0o600);
    if (!tryLockExclusive(fd)) {
      fs.closeSync(fd);
      throw new SpoolLockedError(dir, readPid(path));
    }
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
    let released = false;
    return {
      path,
      kind: "flock",
      release() {
        if (released) return;
        released = true;
        fs.closeSync(fd); // closing the last descriptor drops the flock
      },
    };
  }
  const holder = readPid(path);
  if (holder !== undefined && holder !== process.pid && alive(holder))
    throw new SpoolLockedError(dir, holder);
  fs.writeFileSync(path, `${process.pid}\n`, { mode: 0o600 });
  fs.chmodSync(path, 0o600);
  let released = false;
  return {
    path,
    kind: "pidfile",
    release() {
      if (released) return;
      released = true;
      if (readPid(path) === process.pid) fs.writeFileSync(path, "");
    },
  };
}
