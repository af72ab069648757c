/**
 * `flock(2)` through bun:ffi on libc: an advisory lock the kernel releases when its holder dies,
 * even by SIGKILL.
 *
 * Owns: loading the symbol once; `tryLockExclusive(fd)`.
 */
import { dlopen, FFIType } from "bun:ffi";

const LOCK_EX = 2;
const LOCK_NB = 4;

type FlockFn = (fd: number, op: number) => number;
let flockFn: FlockFn | null | undefined;

/** The libc `flock`, or null where libc cannot be loaded. */
export function loadFlock(): FlockFn | null {
  if (flockFn !== undefined) return flockFn;
  try {
    const lib = dlopen(process.platform === "darwin" ? "libc.dylib" : "libc.so.6", {
      flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    });
    flockFn = (fd, op) => lib.symbols.flock(fd, op) as number;
  } catch {
    flockFn = null;
  }
  return flockFn;
}

/** Takes an exclusive lock without waiting: true when taken, false when another process holds it. */
export function tryLockExclusive(fd: number): boolean {
  const flock = loadFlock();
  if (!flock) throw new Error("flock(2) is not available");
  return flock(fd, LOCK_EX | LOCK_NB) === 0;
}
