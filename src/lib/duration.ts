/**
 * Durations as people write them, parsed the same way everywhere: configuration keys, command-line
 * flags (`--for`, `--older-than`, `--max-time`) and control API fields.
 *
 * Owns: `parseDuration`, `durationArg` (a command-line flag's duration or its usage error),
 * `formatDuration`, the largest duration accepted.
 * Rules (Postfix's time units): `250ms`, `30s`, `5m`, `4h`, `5d`, `2w`, `1y`, decimals allowed (`1.5h`);
 * a bare number is seconds (`300` = 5 minutes, `0` = zero); nothing negative; nothing over 100 years,
 * so that "now + duration" is always a valid date.
 */
import ms from "ms";
import { UsageError } from "./errors.ts";

/** 100 years: the largest duration accepted anywhere. */
export const MAX_DURATION_MS = 100 * 365.25 * 86_400_000;

/** What a duration looks like, for error messages. */
export const DURATION_HINT = 'a duration such as "30s", "5m", "4h" or "5d" (a bare number is seconds)';

/** Milliseconds, or undefined when `value` is not a duration (or is negative or over 100 years). */
export function parseDuration(value: unknown): number | undefined {
  let v: number | undefined;
  if (typeof value === "number") v = value * 1000;
  else if (typeof value !== "string") return undefined;
  else {
    const t = value.trim();
    if (/^\d+(\.\d+)?$/.test(t)) v = Number(t) * 1000;
    else if (/^\d+(\.\d+)?\s*[a-z]+$/i.test(t)) v = ms(t as ms.StringValue);
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > MAX_DURATION_MS) return undefined;
  return Math.round(v);
}

/** A flag's duration in ms; a `UsageError` naming the flag (exit 64) when it is not one. */
export function durationArg(flag: string, text: string): number {
  const v = parseDuration(text);
  if (v === undefined)
    throw new UsageError(`${flag} must be ${DURATION_HINT} of at most 100 years, not "${text}"`);
  return v;
}

/** `90000` → `"1m"` (ms's short form). */
export function formatDuration(valueMs: number): string {
  return ms(valueMs);
}
