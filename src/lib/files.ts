/**
 * Durable file writes shared by every module that keeps an append-only file (the spool's segments,
 * the suppression list) or a small state file (positions).
 *
 * Owns: `writeAllAt` (a positioned write of the whole buffer, asynchronous), `fdatasyncAsync`,
 * `writeFileDurable` (temporary file, fdatasync, rename, directory fsync).
 * Invariant: a promise resolves only when every byte was written (a short write is retried, a write
 * of zero bytes is EIO), so a caller never acknowledges half a batch.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";

/** Positioned write of all of `buf` on the libuv threadpool; rejects on any error (ENOSPC, EIO). */
export function writeAllAt(fd: number, buf: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (done >= buf.length) resolve();
        else if (n === 0) reject(Object.assign(new Error("short write"), { code: "EIO" }));
        else step();
      });
    };
    step();
  });
}

export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** Replaces `file` with `data` atomically and durably (mode 0600): a crash leaves the old or the new. */
export function writeFileDurable(file: string, data: string | Uint8Array, sync = true): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, "w", 0o600);
  try {
    if (typeof data === "string") fs.writeSync(fd, data);
    else fs.writeSync(fd, data, 0, data.length);
    if (sync) fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  if (sync) {
    const d = fs.openSync(dirname(file), "r");
    try {
      fs.fsyncSync(d);
    } finally {
      fs.closeSync(d);
    }
  }
}
