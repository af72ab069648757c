/**
 * CSV for `mta suppress import` and `export` (RFC 4180: comma separated, fields with commas, quotes
 * or line breaks quoted, quotes doubled).
 *
 * Owns: `formatCsv` (header `address,scope,reason,added,expires`; times in ISO 8601 UTC, expires empty
 * for never), `parseCsv` (the same columns named by a header row in any order, or without a header
 * `address[,scope[,reason[,expires]]]`; a file of bare addresses is a valid import).
 * Invariant: parsing reports every bad line by number and returns no entries when there is one, so an
 * import is all or nothing.
 */
import { normalizeAddress, normalizeScope, REASONS, reasonIndex, type SuppressionReason } from "./_log.ts";
import type { NewSuppression, SuppressionEntry } from "./types.ts";

export const CSV_HEADER = "address,scope,reason,added,expires";

function quote(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

export function formatCsvRow(e: SuppressionEntry): string {
  return [
    quote(e.address),
    quote(e.scope),
    e.reason,
    new Date(e.addedMs).toISOString(),
    e.expiresMs === undefined ? "" : new Date(e.expiresMs).toISOString(),
  ].join(",");
}

export function formatCsv(entries: Iterable<SuppressionEntry>): string {
  const out = [CSV_HEADER];
  for (const e of entries) out.push(formatCsvRow(e));
  return `${out.join("\n")}\n`;
}

/** Splits CSV text into rows of fields, each row with the line it starts on. */
function rows(text: string): { line: number; fields: string[]; problem?: string }[] {
  const out: { line: number; fields: string[]; problem?: string }[] = [];
  let i = 0;
  let line = 1;
  while (i < text.length) {
    const start = line;
    const fields: string[] = [];
    let field = "";
    let problem: string | undefined;
    for (;;) {
      if (text[i] === '"') {
        i++;
        for (;;) {
          if (i >= text.length) {
            problem = "a quoted field is not closed";
            break;
          }
          const c = text[i]!;
          if (c === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (c === "\n") line++;
          field += c;
          i++;
        }
        if (!problem && i < text.length && text[i] !== "," && text[i] !== "\n")
          problem = "text after a closing quote";
      }
      while (i < text.length && text[i] !== "," && text[i] !== "\n") field += text[i++];
      fields.push(field);
      field = "";
      if (i >= text.length || text[i] === "\n") {
        i++;
        line++;
        break;
      }
      i++; // comma
    }
    const empty = fields.length === 1 && fields[0]!.trim() === "";
    if (!empty || problem) out.push(problem ? { line: start, fields, problem } : { line: start, fields });
  }
  return out;
}

export interface CsvProblem {
  line: number;
  message: string;
}

const COLUMNS = ["address", "scope", "reason", "added", "expires"] as const;

/**
 * Entries of an import file. `defaults` fill the columns a row leaves empty. `nowMs` rejects
 * expiry times already past (they would be dropped at once, which an operator would not expect).
 */
export function parseCsv(
  text: string,
  defaults: { scope?: string; reason?: SuppressionReason; expiresMs?: number } = {},
  nowMs = Date.now(),
): { entries: NewSuppression[]; problems: CsvProblem[] } {
  const all = rows((text.startsWith("\ufeff") ? text.slice(1) : text).replace(/\r\n?/g, "\n"));
  const problems: CsvProblem[] = [];
  let order: number[] = [0, 1, 2, 4];
  const first = all[0];
  if (first && first.fields[0]!.trim().toLowerCase() === "address") {
    all.shift();
    order = [];
    const names = first.fields.map((f) => f.trim().toLowerCase());
    const index = (n: string) => names.indexOf(n);
    for (const n of names)
      if (!(COLUMNS as readonly string[]).includes(n))
        problems.push({
          line: first.line,
          message: `unknown column "${n}" (expected ${COLUMNS.join(", ")})`,
        });
    order = [index("address"), index("scope"), index("reason"), index("expires")];
  }
  const entries: NewSuppression[] = [];
  for (const r of all) {
    if (r.problem) {
      problems.push({ line: r.line, message: r.problem });
      continue;
    }
    const cell = (k: number) => (order[k]! >= 0 ? (r.fields[order[k]!] ?? "").trim() : "");
    const rawAddress = cell(0);
    const address = normalizeAddress(rawAddress);
    if (address === undefined) {
      problems.push({ line: r.line, message: `not an address: ${JSON.stringify(rawAddress)}` });
      continue;
    }
    const scopeText = cell(1) || defaults.scope || "";
    const scope = normalizeScope(scopeText);
    if (scope === undefined) {
      problems.push({ line: r.line, message: `not a sender domain: ${JSON.stringify(scopeText)}` });
      continue;
    }
    const reasonText = cell(2) || defaults.reason || "manual";
    if (reasonIndex(reasonText) === undefined) {
      problems.push({
        line: r.line,
        message: `unknown reason ${JSON.stringify(reasonText)} (expected ${REASONS.join(", ")})`,
      });
      continue;
    }
    const expiresText = cell(3);
    let expiresMs = defaults.expiresMs;
    if (expiresText !== "") {
      const t = Date.parse(expiresText);
      if (!Number.isFinite(t) || !/^\d{4}-\d{2}-\d{2}/.test(expiresText)) {
        problems.push({
          line: r.line,
          message: `expires is not an ISO 8601 time: ${JSON.stringify(expiresText)}`,
        });
        continue;
      }
      if (t <= nowMs) {
        problems.push({ line: r.line, message: `expires is in the past: ${expiresText}` });
        continue;
      }
      expiresMs = t;
    }
    const e: NewSuppression = { address, scope, reason: reasonText as SuppressionReason };
    if (expiresMs !== undefined) e.expiresMs = expiresMs;
    entries.push(e);
  }
  return problems.length > 0 ? { entries: [], problems } : { entries, problems };
}
