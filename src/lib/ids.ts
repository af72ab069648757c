/**
 * Message ids: unique, time-ordered, short enough to read aloud in a log line.
 *
 * Owns: `newMessageId`, `messageIdTime`, and the id's two numeric parts (`splitMessageId`,
 * `joinMessageId`: the spool stores an id as them).
 * Format: 14 characters of Crockford base32 (no I, L, O, U): 9 for the milliseconds since the epoch
 * (45 bits, good until the year 3084) then 5 for a 25-bit counter that starts at a random value each
 * millisecond, e.g. `01JD3K7Q2M8ZXH`. Lexicographic order is time order within one process.
 */

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ALPHABET_CODES = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) ALPHABET_CODES[ALPHABET.charCodeAt(i)] = i;

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

/** Splits a 14-character message id into (ms, counter); undefined when it is not one. */
export function splitMessageId(id: string): { ms: number; counter: number } | undefined {
  if (id.length !== 14) return undefined;
  let ms = 0;
  let counter = 0;
  for (let i = 0; i < 14; i++) {
    const c = id.charCodeAt(i);
    const v = c < 128 ? ALPHABET_CODES[c]! : -1;
    if (v < 0) return undefined;
    if (i < 9) ms = ms * 32 + v;
    else counter = counter * 32 + v;
  }
  return { ms, counter };
}

/** The message id whose parts are (ms, counter): the inverse of `splitMessageId`. */
export function joinMessageId(ms: number, counter: number): string {
  let s = "";
  for (let i = 8; i >= 0; i--) s += ALPHABET[Math.floor(ms / 32 ** i) % 32];
  for (let i = 4; i >= 0; i--) s += ALPHABET[Math.floor(counter / 32 ** i) % 32];
  return s;
}
