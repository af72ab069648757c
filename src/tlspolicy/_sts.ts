/**
 * MTA-STS as text (RFC 8461): the `_mta-sts` TXT record, the policy file, and MX host patterns.
 *
 * Owns: `parseStsRecord`, `parseStsPolicy`, `stsMxMatches`: pure functions, no I/O.
 * Does not own: fetching (sts.ts's store), what a policy makes the deliverer do (plan.ts).
 * Invariants: anything that is not exactly what the RFC's grammar allows is refused with a reason,
 * never half-read: a sender that guesses at a broken policy either blocks mail or drops protection.
 */

/** A valid `_mta-sts` TXT record: only the id matters to a sender (RFC 8461 §3.1). */
export interface StsRecord {
  id: string;
}

export type StsMode = "enforce" | "testing" | "none";

export interface StsPolicy {
  mode: StsMode;
  /** Lower-case MX patterns: `mail.example.com` or `*.example.com` (§3.2). */
  mx: string[];
  maxAgeS: number;
  /** The policy as fetched, one entry per line: TLS-RPT reports it back as `policy-string` (RFC 8460 §4.4). */
  lines: string[];
}

/** RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year). */
export const STS_MAX_AGE_LIMIT_S = 31_557_600;

const FIELD_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const FIELD_VALUE = /^[\x21-\x3a\x3c\x3e-\x7e]+$/;

/**
 * The TXT records at `_mta-sts.<domain>`: those that do not start with `v=STSv1` are discarded; exactly
 * one must remain and it must be well-formed, else the domain has no policy (§3.1).
 */
export function parseStsRecord(records: readonly string[]): StsRecord | { error: string } {
  const candidates = records.filter((r) => /^v=STSv1(?:[ \t]*;|$)/.test(r));
  if (candidates.length === 0) return { error: "no v=STSv1 record" };
  if (candidates.length > 1) return { error: `${candidates.length} v=STSv1 records (exactly one allowed)` };
  const fields = candidates[0]!.split(";").map((f) => f.replace(/^[ \t]+|[ \t]+$/g, ""));
  if (fields[fields.length - 1] === "") fields.pop(); // a trailing delimiter is allowed
  let id: string | undefined;
  for (const f of fields.slice(1)) {
    const eq = f.indexOf("=");
    if (eq <= 0) return { error: `malformed field ${JSON.stringify(f)}` };
    const name = f.slice(0, eq);
    const value = f.slice(eq + 1);
    if (!FIELD_NAME.test(name) || !FIELD_VALUE.test(value))
      return { error: `malformed field ${JSON.stringify(f)}` };
    // Field names are case-sensitive (%s"id=" in the ABNF); the first id wins.
    if (name === "id" && id === undefined) {
      if (!/^[A-Za-z0-9]{1,32}$/.test(value)) return { error: `malformed id ${JSON.stringify(value)}` };
      id = value;
    }
  }
  if (id === undefined) return { error: "no id field" };
  return { id };
}

/** A `mx:` value: a host name, or `*.` and a domain (the wildcard stands for exactly one label). */
const MX_PATTERN =
  /^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$/;

/**
 * The policy file (§3.2): `key: value` lines separated by LF or CRLF; `version`, `mode` and `max_age`
 * are required, `mx` too unless the mode is `none`; unknown keys are ignored; the first of a repeated
 * key (other than `mx`) counts.
 */
export function parseStsPolicy(text: string): StsPolicy | { error: string } {
  const lines = text.split(/\r?\n/);
  if (lines[lines.length - 1] === "") lines.pop();
  const fields = new Map<string, string>();
  const mx: string[] = [];
  for (const raw of lines) {
    if (raw === "") continue;
    const colon = raw.indexOf(":");
    if (colon <= 0) return { error: `malformed line ${JSON.stringify(raw.slice(0, 80))}` };
    const key = raw.slice(0, colon).trim();
    const value = raw.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (!/^[A-Za-z0-9_.-]{1,32}$/.test(key)) return { error: `malformed key ${JSON.stringify(key)}` };
    if (key === "mx") {
      const pattern = value.toLowerCase();
      if (!MX_PATTERN.test(pattern)) return { error: `malformed mx pattern ${JSON.stringify(value)}` };
      mx.push(pattern.replace(/\.$/, ""));
    } else if (!fields.has(key)) fields.set(key, value);
  }
  if (fields.get("version") !== "STSv1") return { error: "version is not STSv1" };
  const mode = fields.get("mode");
  if (mode !== "enforce" && mode !== "testing" && mode !== "none")
    return { error: `mode ${JSON.stringify(mode ?? "")} is not enforce, testing or none` };
  const maxAge = fields.get("max_age");
  if (maxAge === undefined || !/^\d{1,10}$/.test(maxAge) || Number(maxAge) > STS_MAX_AGE_LIMIT_S)
    return {
      error: `max_age ${JSON.stringify(maxAge ?? "")} is not a number of seconds up to ${STS_MAX_AGE_LIMIT_S}`,
    };
  if (mode !== "none" && mx.length === 0) return { error: "no mx pattern" };
  return { mode, mx, maxAgeS: Number(maxAge), lines: lines.filter((l) => l !== "") };
}

/**
 * Whether an MX host name matches a policy pattern (§4.1): exact match, or `*.example.com` for
 * exactly one label in front of `example.com` (not `example.com` itself, not `a.b.example.com`).
 */
export function stsMxMatches(pattern: string, host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  if (!pattern.startsWith("*.")) return h === pattern;
  const dot = h.indexOf(".");
  return dot > 0 && h.slice(dot + 1) === pattern.slice(2);
}
