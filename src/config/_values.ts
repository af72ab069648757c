/**
 * Typed values written as strings in the YAML: durations, sizes, rates, CIDR ranges, host:port.
 *
 * Owns: parsing each into a typed value; `undefined` when malformed, so the schema can say what was expected.
 */
import { type Cidr, type HostPort, parseCidr, parseHostPort, parseSize } from "../lib/index.ts";

export { formatDuration, parseDuration } from "../lib/index.ts";

/** `"25MB"`, `"64MiB"`, or a plain number of bytes → bytes. */
export function parseSizeValue(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== "string") return undefined;
  return parseSize(value);
}

export interface Rate {
  /** Events allowed per `perMs`. */
  count: number;
  perMs: number;
  text: string;
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

/** `"100/s"`, `"5000/h"`, `"10/30s"` → a rate. */
export function parseRate(value: unknown): Rate | undefined {
  if (typeof value !== "string") return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = RATE_UNITS[m[3]!.toLowerCase()];
  if (unit === undefined) return undefined;
  const count = Number(m[1]);
  const perMs = (m[2] ? Number(m[2]) : 1) * unit;
  if (!(count > 0) || !(perMs > 0)) return undefined;
  return { count, perMs, text: value.trim() };
}

export function parseCidrValue(value: unknown): Cidr | undefined {
  return typeof value === "string" ? parseCidr(value) : undefined;
}

export function parseAddressValue(value: unknown, defaultPort?: number): HostPort | undefined {
  return typeof value === "string" ? parseHostPort(value, defaultPort) : undefined;
}

export { closestWord as closest, editDistance } from "../lib/index.ts";
