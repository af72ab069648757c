/**
 * Byte helpers shared by the protocol and storage modules.
 *
 * Owns: constants and small functions over `Uint8Array`.
 */
import { isAscii } from "node:buffer";

export const CR = 13;
export const LF = 10;
export const DOT = 46;
export const CRLF = new Uint8Array([CR, LF]);

export const textEncoder = new TextEncoder();
export const textDecoder = new TextDecoder();
/** Decodes bytes as Latin-1 so that every byte survives a round trip through a string. */
export const latin1Decoder = new TextDecoder("latin1");

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** Index of `needle` in `hay` at or after `from`, or -1. */
export function indexOfBytes(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  if (needle.length === 0) return from;
  const first = needle[0]!;
  const last = hay.length - needle.length;
  outer: for (let i = hay.indexOf(first, from); i !== -1 && i <= last; i = hay.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/** Parses a size such as `25MB`, `64MiB`, `512k` or `1000` into bytes (decimal for kB/MB/GB, binary for KiB/MiB/GiB). */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$/i.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = (m[2] ?? "").toLowerCase();
  const table: Record<string, number> = {
    "": 1,
    b: 1,
    k: 1e3,
    kb: 1e3,
    kib: 1024,
    ki: 1024,
    m: 1e6,
    mb: 1e6,
    mib: 1024 ** 2,
    mi: 1024 ** 2,
    g: 1e9,
    gb: 1e9,
    gib: 1024 ** 3,
    gi: 1024 ** 3,
    t: 1e12,
    tb: 1e12,
    tib: 1024 ** 4,
    ti: 1024 ** 4,
  };
  const mult = table[unit];
  if (mult === undefined) return undefined;
  return Math.round(n * mult);
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Whether any byte is over 127 (the message needs 8BITMIME): native, about 1 GB/s and more. */
export function hasEightBit(bytes: Uint8Array): boolean {
  return !isAscii(bytes);
}
