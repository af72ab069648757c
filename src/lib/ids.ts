/**
 * Message ids: unique, time-ordered, short enough to read aloud in a log line.
 *
 * Owns: `newMessageId`, `messageIdTime`.
 * Format: 14 characters of Crockford base32 (no I, L, O, U): 9 for the milliseconds since the epoch
 * (45 bits, good until the year 3084) then 5 for a 25-bit counter that starts at a random value each
 * millisecond, e.g. `01JD3K7Q2M8ZXH`. Lexicographic order is time order within one process.
 */

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

let lastMs = -1;
let counter = 0;

function encode(value: number, width: number, out: string[]): void {
  for (let i = width - 1; i >= 0; i--) {
    out.push(ALPHABET[Math.floor(value / 32 ** i) % 32]!);
  }
}

export function newMessageId(nowMs: number = Date.now()): string {
  if (nowMs <= lastMs) {
    counter++;
    if (counter >= 2 ** 25) {
      // More than 33M ids in one millisecond: borrow the next millisecond.
      lastMs++;
      counter = 0;
    }
  } else {
    lastMs = nowMs;
    counter = Math.floor(Math.random() * 2 ** 20);
  }
  const out: string[] = [];
  encode(lastMs, 9, out);
  encode(counter, 5, out);
  return out.join("");
}

/** The millisecond timestamp encoded in a message id, or NaN when it is not one. */
export function messageIdTime(id: string): number {
  if (!isMessageId(id)) return Number.NaN;
  let v = 0;
  for (let i = 0; i < 9; i++) v = v * 32 + ALPHABET.indexOf(id[i]!);
  return v;
}

export function isMessageId(id: string): boolean {
  return /^[0-9A-HJKMNP-TV-Z]{14}$/.test(id);
}
