/**
 * Typed values written as strings in the YAML: durations, sizes, rates, CIDR ranges, host:port.
 *
 * Owns: parsing each into a typed value; `undefined` when malformed, so the schema can say what was expected.
 */
import { type Cidr, type HostPort, parseCidr, parseHostPort, parseSize } from "../lib/index.ts";

export { formatDuration, parseDuration, parseRate, type Rate } from "../lib/index.ts";

/** `"25MB"`, `"64MiB"`, or a plain number of bytes → bytes. */
export function parseSizeValue(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== "string") return undefined;
  return parseSize(value);
}

export function parseCidrValue(value: unknown): Cidr | undefined {
  return typeof value === "string" ? parseCidr(value) : undefined;
}

export function parseAddressValue(value: unknown, defaultPort?: number): HostPort | undefined {
  return typeof value === "string" ? parseHostPort(value, defaultPort) : undefined;
}

export { closestWord as closest, editDistance } from "../lib/index.ts";
