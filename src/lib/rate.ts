/**
 * Rates written as `count/period`: `"100/s"`, `"5000/h"`, `"10/30s"`, `"2/5m"`.
 *
 * Owns: `Rate` (the one type for a rate, read by config/, route/ and scheduler/) and `parseRate`.
 * Does not own: enforcing a rate (scheduler/'s `RateLimiter`).
 */

/** `count` events per `perMs`. */
export interface Rate {
  count: number;
  perMs: number;
}

const RATE_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  sec: 1000,
  second: 1000,
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hour: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
};

/** `"100/s"` → `{ count: 100, perMs: 1000 }`; `undefined` for anything else (or a zero rate). */
export function parseRate(value: unknown): Rate | undefined {
  if (typeof value !== "string") return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = RATE_UNITS[m[3]!.toLowerCase()];
  if (unit === undefined) return undefined;
  const count = Number(m[1]);
  const perMs = (m[2] ? Number(m[2]) : 1) * unit;
  if (!(count > 0) || !(perMs > 0)) return undefined;
  return { count, perMs };
}
