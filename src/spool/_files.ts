/**
 * The file layer under the spool: the few file-system calls it makes, behind an interface.
 *
 * Owns: `FileLayer` (the fault-injection seam: tests wrap it to fail writes with ENOSPC or EIO)
 * and `nodeFileLayer`, the real one over node:fs.
 * Invariants: every file the spool writes is mode 0600 and every directory it creates 0700, whatever
 * the umask (queued mail is readable by root and the daemon's user only); writes and syncs are asynchronous (libuv threadpool), so the event loop keeps serving
 * while a batch is being made durable; positioned reads are synchronous because they hit the page
 * cache and are ~30x cheaper than the alternatives under Bun.
 */
import * as fs from "node:fs";
import { fdatasyncAsync, writeAllAt } from "../lib/index.ts";

export interface FileLayer {
  /** Opens a file; `flags` as node:fs (`"r"`, `"r+"`, `"wx"`); opened for writing, its mode becomes 0600. */
  open(path: string, flags: string): number;
  close(fd: number): void;
  /** Positioned write of all of `buf`; rejects on any error (e.g. ENOSPC, EIO). */
  write(fd: number, buf: Uint8Array, position: number): Promise<void>;
  fdatasync(fd: number): Promise<void>;
  /** Syncs a directory so that created or removed entries are durable. */
  fsyncDir(path: string): Promise<void>;
  truncate(fd: number, length: number): void;
  readSync(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  size(fd: number): number;
  unlink(path: string): Promise<void>;
  readdir(path: string): string[];
  /** Creates a directory (and its parents) and sets its mode to 0700. */
  mkdirp(path: string): void;
}

/** Segment files: the daemon's user only (queued mail is private), whatever the umask. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

export const nodeFileLayer: FileLayer = {
  open: (path, flags) => {
    const fd = fs.openSync(path, flags, FILE_MODE);
    if (flags !== "r") fs.fchmodSync(fd, FILE_MODE);
    return fd;
  },
  close: (fd) => fs.closeSync(fd),
  write: writeAllAt,
  fdatasync: fdatasyncAsync,
  fsyncDir: (path) =>
    new Promise((resolve, reject) => {
      fs.open(path, "r", (err, fd) => {
        if (err) return reject(err);
        fs.fsync(fd, (err2) => {
          fs.close(fd, () => (err2 ? reject(err2) : resolve()));
        });
      });
    }),
  truncate: (fd, length) => fs.ftruncateSync(fd, length),
  readSync: (fd, buf, offset, length, position) => fs.readSync(fd, buf, offset, length, position),
  size: (fd) => fs.fstatSync(fd).size,
  unlink: (path) => fs.promises.unlink(path),
  readdir: (path) => fs.readdirSync(path),
  mkdirp: (path) => {
    fs.mkdirSync(path, { recursive: true, mode: DIR_MODE });
    try {
      fs.chmodSync(path, DIR_MODE);
    } catch (err) {
      // Another user's directory (the operator's choice): its mode is theirs to set.
      if ((err as NodeJS.ErrnoException).code !== "EPERM") throw err;
    }
  },
};
