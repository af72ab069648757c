/**
 * `mta suppress`: the suppression list by hand: add, remove, check, list, import and export (CSV).
 *
 * Owns: the subcommands' arguments, their output (a table or one line; --json; CSV for export), exit
 * codes: 0 done (check: suppressed), 1 check: not suppressed, 64 usage, 65 bad input (an address, a
 * CSV line: every bad line is named and nothing is imported), 69 the list is held by a daemon whose
 * control API does not answer, or there is no spool.
 * Does not own: the list or its transport (app/'s SuppressClient: the daemon's control API when one
 * answers at control.address, else the list in the spool directory).
 */
import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { type ListFilter, openSuppressClient, type SuppressClient } from "../admin/index.ts";
import {
  type NewSuppression,
  normalizeAddress,
  normalizeScope,
  parseCsv,
  REASONS,
  SuppressionError,
  type SuppressionReason,
} from "../suppression/index.ts";
import { findConfigPath, loadConfig } from "../config/index.ts";
import { EXIT, fileError, MtaError, UsageError } from "../lib/index.ts";
import { configArg } from "./_args.ts";
import { print, table } from "./_output.ts";

const common = {
  ...configArg,
  json: { type: "boolean", description: "Print JSON (the control API's answer) instead of text" },
  local: { type: "boolean", description: "Use the list in the spool directory even when a daemon answers" },
} as const;

const scopeArg = {
  scope: {
    type: "string",
    description: "Only for mail from this sender domain (default: every sender)",
  },
} as const;

/** A held list says what to do about it; every other error already carries its exit code. */
function mapped(err: unknown): unknown {
  if (err instanceof SuppressionError && err.kind === "locked")
    return new MtaError(
      "unavailable",
      `${err.message}; its control API did not answer at control.address (use it, or stop the daemon)`,
    );
  return err;
}

async function withClient<T>(
  args: { config?: string; local?: boolean },
  fn: (c: SuppressClient) => Promise<T>,
): Promise<T> {
  const { config } = loadConfig(findConfigPath(args.config));
  const c = await openSuppressClient(config, args.local ? { prefer: "local" } : {});
  try {
    return await fn(c);
  } catch (err) {
    throw mapped(err);
  } finally {
    await c.close();
  }
}

function scopeOf(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const s = normalizeScope(text);
  if (s === undefined) throw new UsageError(`--scope must be a domain name, not "${text}"`);
  return s;
}

function reasonOf(text: string | undefined): SuppressionReason | undefined {
  if (text === undefined) return undefined;
  if (!(REASONS as readonly string[]).includes(text))
    throw new UsageError(`--reason must be one of ${REASONS.join(", ")}, not "${text}"`);
  return text as SuppressionReason;
}

/** `--expires 30d` (from now) or an ISO 8601 time → milliseconds since the epoch. */
function expiresOf(text: string | undefined, nowMs = Date.now()): number | undefined {
  if (text === undefined) return undefined;
  const rel = /^(\d{1,9})(s|m|h|d|w)$/.exec(text);
  if (rel) {
    const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[rel[2] as "s"];
    const v = Number(rel[1]) * unit;
    if (v <= 0) throw new UsageError(`--expires must be in the future, not "${text}"`);
    return nowMs + v;
  }
  const t = /^\d{4}-\d{2}-\d{2}/.test(text) ? Date.parse(text) : Number.NaN;
  if (!Number.isFinite(t))
    throw new UsageError(`--expires must be a duration such as 30d or an ISO 8601 time, not "${text}"`);
  if (t <= nowMs) throw new UsageError(`--expires is in the past: ${text}`);
  return t;
}

function addressOf(text: string): string {
  const a = normalizeAddress(text);
  if (a === undefined) throw new MtaError("data", `not an address: ${JSON.stringify(text)}`);
  return a;
}

function when(ms: number | undefined): string {
  return ms === undefined ? "never" : new Date(ms).toISOString().replace(/\.000Z$/, "Z");
}

const add = defineCommand({
  meta: { name: "add", description: "Put one address on the list (replacing its entry if it has one)" },
  args: {
    ...common,
    address: { type: "positional", required: true, description: "The address" },
    ...scopeArg,
    reason: { type: "string", description: `Why: ${REASONS.join(", ")} (default manual)` },
    expires: {
      type: "string",
      description: "Expiry: a duration from now (30d, 12h) or an ISO 8601 time (default never)",
    },
  },
  async run({ args }) {
    const entry: NewSuppression = {
      address: addressOf(args.address),
      reason: reasonOf(args.reason) ?? "manual",
    };
    const scope = scopeOf(args.scope);
    if (scope) entry.scope = scope;
    const exp = expiresOf(args.expires);
    if (exp !== undefined) entry.expiresMs = exp;
    const r = await withClient(args, (c) => c.add([entry]));
    if (args.json) return print(JSON.stringify(r, null, 2));
    print(
      `${entry.address}: ${r.added ? "added" : r.updated ? "updated" : "unchanged (already on the list)"}`,
    );
    return EXIT.ok;
  },
});

const remove = defineCommand({
  meta: { name: "remove", description: "Take one address off the list" },
  args: {
    ...common,
    address: { type: "positional", required: true, description: "The address" },
    ...scopeArg,
  },
  async run({ args }) {
    const address = addressOf(args.address);
    const scope = scopeOf(args.scope);
    const r = await withClient(args, (c) => c.remove([{ address, ...(scope ? { scope } : {}) }]));
    if (args.json) return print(JSON.stringify(r, null, 2));
    print(`${address}: ${r.removed ? "removed" : "was not on the list"}`);
    return EXIT.ok;
  },
});

const check = defineCommand({
  meta: { name: "check", description: "Is mail to this address suppressed? Exit 0 if so, 1 if not" },
  args: {
    ...common,
    address: { type: "positional", required: true, description: "The recipient address" },
    sender: { type: "string", description: "The sender (address or domain) whose scoped entries count too" },
  },
  async run({ args }) {
    const address = addressOf(args.address);
    const r = await withClient(args, (c) => c.check(address, args.sender ?? ""));
    if (args.json) print(JSON.stringify(r, null, 2));
    else if (r.suppressed)
      print(
        `${address}: suppressed (${r.reason}, ${r.scope ? `for mail from ${r.scope}` : "global"}, expires ${when(r.expiresMs)})`,
      );
    else print(`${address}: not suppressed`);
    return r.suppressed ? EXIT.ok : 1;
  },
});

const list = defineCommand({
  meta: { name: "list", description: "Entries, oldest first: address, scope, reason, added, expires" },
  args: {
    ...common,
    ...scopeArg,
    reason: { type: "string", description: "Only entries with this reason" },
    limit: { type: "string", default: "1000", description: "At most this many (use export for all)" },
  },
  async run({ args }) {
    const filter: ListFilter = {};
    const scope = scopeOf(args.scope);
    if (scope !== undefined) filter.scope = scope;
    const reason = reasonOf(args.reason);
    if (reason) filter.reason = reason;
    if (!/^\d{1,9}$/.test(args.limit) || Number(args.limit) === 0)
      throw new UsageError(`--limit must be a whole number above 0, not "${args.limit}"`);
    filter.limit = Number(args.limit);
    const r = await withClient(args, (c) => c.list(filter));
    if (args.json) return print(JSON.stringify(r, null, 2));
    print(
      table(
        ["ADDRESS", "SCOPE", "REASON", "ADDED", "EXPIRES"],
        r.entries.map((e) => [e.address, e.scope || "-", e.reason, when(e.addedMs), when(e.expiresMs)]),
      ),
    );
    print(
      `${r.count} entr${r.count === 1 ? "y" : "ies"}${r.count === filter.limit ? ` (--limit ${filter.limit}: there may be more)` : ""}`,
    );
    return EXIT.ok;
  },
});

function readInput(file: string): string {
  let bytes: Buffer;
  try {
    bytes = file === "-" ? readFileSync(0) : readFileSync(file);
  } catch (err) {
    throw fileError(err, file === "-" ? "standard input" : file, "read");
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new MtaError("data", `${file}: not UTF-8 text`);
  }
}

const importCmd = defineCommand({
  meta: {
    name: "import",
    description:
      "Add every address of a CSV file (- for standard input); all or nothing: a bad line imports none",
  },
  args: {
    ...common,
    file: {
      type: "positional",
      required: true,
      description: "CSV: address[,scope,reason,expires] or with a header row",
    },
    ...scopeArg,
    reason: { type: "string", description: "Reason of rows that give none (default manual)" },
    expires: { type: "string", description: "Expiry of rows that give none: 30d or an ISO 8601 time" },
  },
  async run({ args }) {
    const defaults: { scope?: string; reason?: SuppressionReason; expiresMs?: number } = {};
    const scope = scopeOf(args.scope);
    if (scope) defaults.scope = scope;
    const reason = reasonOf(args.reason);
    if (reason) defaults.reason = reason;
    const exp = expiresOf(args.expires);
    if (exp !== undefined) defaults.expiresMs = exp;
    const text = readInput(args.file);
    const { entries, problems } = parseCsv(text, defaults);
    if (problems.length > 0) {
      const name = args.file === "-" ? "(stdin)" : args.file;
      for (const p of problems.slice(0, 20)) process.stderr.write(`mta: ${name}:${p.line}: ${p.message}\n`);
      throw new MtaError(
        "data",
        `${name}: ${problems.length} bad line${problems.length === 1 ? "" : "s"}${problems.length > 20 ? " (first 20 shown)" : ""}; nothing imported`,
      );
    }
    if (entries.length === 0)
      throw new MtaError("data", `${args.file === "-" ? "(stdin)" : args.file}: no addresses`);
    const r = await withClient(args, (c) => c.add(entries));
    if (args.json) return print(JSON.stringify({ lines: entries.length, ...r }, null, 2));
    print(`${entries.length} line(s): ${r.added} added, ${r.updated} updated, ${r.unchanged} unchanged`);
    return EXIT.ok;
  },
});

const exportCmd = defineCommand({
  meta: { name: "export", description: "Every entry as CSV on standard output" },
  args: {
    ...configArg,
    local: common.local,
    ...scopeArg,
    reason: { type: "string", description: "Only entries with this reason" },
  },
  async run({ args }) {
    const filter: ListFilter = {};
    const scope = scopeOf(args.scope);
    if (scope !== undefined) filter.scope = scope;
    const reason = reasonOf(args.reason);
    if (reason) filter.reason = reason;
    await withClient(args, (c) =>
      c.export(filter, (text) => {
        if (!process.stdout.write(text))
          return new Promise<void>((r) => process.stdout.once("drain", () => r()));
      }),
    );
    return EXIT.ok;
  },
});

export default defineCommand({
  meta: {
    name: "suppress",
    description:
      "The suppression list: add, remove, check, list, import, export (through the daemon or on the spool)",
  },
  subCommands: { add, remove, check, list, import: importCmd, export: exportCmd },
});
