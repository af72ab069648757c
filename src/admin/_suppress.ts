/**
 * `mta suppress` transport: the control API routes of the suppression list, and `SuppressClient`,
 * which runs a command through a running daemon's API or directly on the list in the spool directory.
 *
 * Owns: the HTTP paths and JSON bodies, HTTP status <-> `QueueError`, choosing daemon or local.
 * Does not own: the list (suppression/), the CSV format (suppression/csv.ts), output (cli/suppress.ts).
 *
 * Routes (JSON in and out; errors are `{ "error": "..." }` with a 4xx/5xx status):
 *   GET  /api/v1/suppressions?scope=&reason=&limit=      entries, oldest first (limit default 1000)
 *   GET  /api/v1/suppressions/export?scope=&reason=      CSV (text/csv), every entry, streamed
 *   GET  /api/v1/suppressions/check?address=&sender=     { address, suppressed, scope?, reason?, expiresMs? }
 *   GET  /api/v1/suppressions/stats                      { entries, records, fileBytes, tableBytes }
 *   POST /api/v1/suppressions          { entries: [{ address, scope?, reason?, expiresMs? }] }  → added/updated/unchanged
 *   POST /api/v1/suppressions/remove   { entries: [{ address, scope? }] }                        → removed/absent
 * At most MAX_ENTRIES_PER_REQUEST entries per POST (the CLI sends larger imports in several).
 */
import { existsSync, statSync } from "node:fs";
import type { Config } from "../config/index.ts";
import { errorMessage, MtaError, PermissionError } from "../lib/index.ts";
import { jsonError, jsonResponse, type RouteHandler } from "../observe/index.ts";
import {
  type AddResult,
  CSV_HEADER,
  formatCsvRow,
  type NewSuppression,
  normalizeAddress,
  normalizeScope,
  REASONS,
  readEntries,
  type SuppressionEntry,
  SuppressionError,
  SuppressionList,
  type SuppressionReason,
} from "../suppression/index.ts";
import { type ControlEndpoint, findDaemon } from "./_control.ts";
import { QueueError } from "./_shapes.ts";
import { suppressionDir } from "../feedback/index.ts";

export const MAX_ENTRIES_PER_REQUEST = 100_000;

export interface ListFilter {
  scope?: string;
  reason?: SuppressionReason;
  limit?: number;
}

export interface CheckResult {
  address: string;
  suppressed: boolean;
  scope?: string;
  reason?: SuppressionReason;
  expiresMs?: number;
}

export interface StatsResult {
  entries: number;
  records: number;
  fileBytes: number;
  tableBytes: number;
}

export interface SuppressClient {
  readonly mode: "daemon" | "local";
  list(filter: ListFilter): Promise<{ count: number; entries: SuppressionEntry[] }>;
  /** Every entry as CSV lines (with the header), handed to `write` a piece at a time. */
  export(filter: ListFilter, write: (text: string) => void | Promise<void>): Promise<number>;
  check(address: string, sender?: string): Promise<CheckResult>;
  add(entries: NewSuppression[]): Promise<AddResult>;
  remove(entries: { address: string; scope?: string }[]): Promise<{ removed: number; absent: number }>;
  stats(): Promise<StatsResult>;
  close(): Promise<void>;
}

// ------------------------------------------------------------------ server side

function usage(message: string): QueueError {
  return new QueueError("usage", message, 400);
}

function filterFrom(url: URL): ListFilter {
  const f: ListFilter = {};
  const scope = url.searchParams.get("scope");
  if (scope !== null && scope !== "") {
    const s = normalizeScope(scope);
    if (s === undefined) throw usage(`scope is not a domain: ${JSON.stringify(scope)}`);
    f.scope = s;
  }
  const reason = url.searchParams.get("reason");
  if (reason !== null && reason !== "") {
    if (!(REASONS as readonly string[]).includes(reason))
      throw usage(`reason must be one of ${REASONS.join(", ")}, not ${JSON.stringify(reason)}`);
    f.reason = reason as SuppressionReason;
  }
  const limit = url.searchParams.get("limit");
  if (limit !== null && limit !== "") {
    if (!/^\d{1,9}$/.test(limit)) throw usage(`limit must be a whole number, not ${JSON.stringify(limit)}`);
    f.limit = Number(limit);
  }
  return f;
}

async function entriesBody(req: Request, withFields: boolean): Promise<NewSuppression[]> {
  const type = req.headers.get("content-type") ?? "";
  if (!/^application\/json\b/i.test(type))
    throw new QueueError("usage", "expected content-type: application/json", 415);
  let body: unknown;
  try {
    body = await req.json();
  } catch (err) {
    throw usage(`malformed JSON: ${errorMessage(err)}`);
  }
  const list = (body as { entries?: unknown })?.entries;
  if (!Array.isArray(list)) throw usage('expected { "entries": [ { "address": ... }, ... ] }');
  if (list.length > MAX_ENTRIES_PER_REQUEST)
    throw new QueueError(
      "usage",
      `too many entries in one request (${list.length} > ${MAX_ENTRIES_PER_REQUEST})`,
      413,
    );
  return list.map((e, i) => {
    if (!e || typeof e !== "object" || Array.isArray(e)) throw usage(`entries[${i}] is not an object`);
    const x = e as Record<string, unknown>;
    if (typeof x.address !== "string") throw usage(`entries[${i}].address must be a string`);
    const out: NewSuppression = { address: x.address };
    if (x.scope !== undefined && x.scope !== null) {
      if (typeof x.scope !== "string") throw usage(`entries[${i}].scope must be a string`);
      out.scope = x.scope;
    }
    if (!withFields) return out;
    if (x.reason !== undefined && x.reason !== null) {
      if (typeof x.reason !== "string") throw usage(`entries[${i}].reason must be a string`);
      out.reason = x.reason as SuppressionReason;
    }
    if (x.expiresMs !== undefined && x.expiresMs !== null) {
      if (typeof x.expiresMs !== "number" || !Number.isFinite(x.expiresMs))
        throw usage(`entries[${i}].expiresMs must be a number (milliseconds since the epoch)`);
      out.expiresMs = x.expiresMs;
    }
    return out;
  });
}

function handle(fn: (req: Request, url: URL) => unknown): RouteHandler {
  return async (req, url) => {
    try {
      const v = await fn(req, url);
      return v instanceof Response ? v : jsonResponse(v);
    } catch (err) {
      if (err instanceof QueueError) return jsonError(err.status, err.message);
      if (err instanceof SuppressionError) return jsonError(err.kind === "input" ? 400 : 500, err.message);
      if (err instanceof MtaError) return jsonError(500, err.message);
      throw err;
    }
  };
}

function checkOf(list: SuppressionList, address: string, sender: string): CheckResult {
  const a = normalizeAddress(address);
  if (a === undefined) throw usage(`not an address: ${JSON.stringify(address)}`);
  const domain = sender.includes("@")
    ? sender.slice(sender.lastIndexOf("@") + 1).toLowerCase()
    : sender.toLowerCase();
  const h = list.check(a, domain);
  return h ? { address: a, suppressed: true, ...h } : { address: a, suppressed: false };
}

function statsOf(list: SuppressionList): StatsResult {
  return {
    entries: list.count,
    records: list.recordCount,
    fileBytes: list.fileBytes,
    tableBytes: list.tableBytes,
  };
}

/** The control API routes of the suppression list; register each with `control.addRoute`. */
export function suppressionRoutes(list: SuppressionList): Record<string, RouteHandler> {
  return {
    "GET /api/v1/suppressions": handle(async (_req, url) => {
      const f = filterFrom(url);
      const entries = await list.entries({ ...f, limit: Math.min(f.limit ?? 1000, MAX_ENTRIES_PER_REQUEST) });
      return { count: entries.length, entries };
    }),
    "GET /api/v1/suppressions/export": handle((_req, url) => {
      const f = filterFrom(url);
      let buffer: string[] = [];
      const stream = new ReadableStream<string>({
        async start(controller) {
          controller.enqueue(`${CSV_HEADER}\n`);
          await list.forEachEntry((e) => {
            if (
              (f.scope === undefined || e.scope === f.scope) &&
              (f.reason === undefined || e.reason === f.reason)
            ) {
              buffer.push(formatCsvRow(e));
              if (buffer.length >= 4096) {
                controller.enqueue(`${buffer.join("\n")}\n`);
                buffer = [];
              }
            }
            return true;
          });
          if (buffer.length > 0) controller.enqueue(`${buffer.join("\n")}\n`);
          controller.close();
        },
      });
      return new Response(stream, { headers: { "content-type": "text/csv; charset=utf-8" } });
    }),
    "GET /api/v1/suppressions/check": handle((_req, url) =>
      checkOf(list, url.searchParams.get("address") ?? "", url.searchParams.get("sender") ?? ""),
    ),
    "GET /api/v1/suppressions/stats": handle(() => statsOf(list)),
    "POST /api/v1/suppressions": handle(async (req) => list.add(await entriesBody(req, true))),
    "POST /api/v1/suppressions/remove": handle(async (req) => list.remove(await entriesBody(req, false))),
  };
}

// ------------------------------------------------------------------ HTTP client

class HttpSuppressClient implements SuppressClient {
  readonly mode = "daemon";

  constructor(private readonly endpoint: ControlEndpoint) {}

  private async fetch(method: "GET" | "POST", path: string, body?: unknown): Promise<Response> {
    let res: Response;
    try {
      res = await this.endpoint.request(method, path, body);
    } catch (err) {
      throw new QueueError(
        "unavailable",
        `the daemon's control API at ${this.endpoint.where} did not answer: ${errorMessage(err)}`,
        503,
      );
    }
    if (!res.ok) {
      const text = await res.text();
      let message = `HTTP ${res.status}`;
      try {
        message = String((JSON.parse(text) as { error?: unknown }).error ?? message);
      } catch {}
      const code =
        res.status === 400 || res.status === 413 || res.status === 415
          ? "data"
          : res.status === 401 || res.status === 503
            ? "unavailable"
            : "runtime";
      throw new QueueError(code, message, res.status);
    }
    return res;
  }

  private async call<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    return (await (await this.fetch(method, path, body)).json()) as T;
  }

  private static query(f: ListFilter): string {
    const q = new URLSearchParams();
    if (f.scope !== undefined) q.set("scope", f.scope);
    if (f.reason !== undefined) q.set("reason", f.reason);
    if (f.limit !== undefined) q.set("limit", String(f.limit));
    return q.toString();
  }

  list(filter: ListFilter) {
    return this.call<{ count: number; entries: SuppressionEntry[] }>(
      "GET",
      `/api/v1/suppressions?${HttpSuppressClient.query(filter)}`,
    );
  }
  async export(filter: ListFilter, write: (text: string) => void | Promise<void>): Promise<number> {
    const res = await this.fetch("GET", `/api/v1/suppressions/export?${HttpSuppressClient.query(filter)}`);
    let lines = 0;
    const decoder = new TextDecoder();
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      const text = decoder.decode(chunk, { stream: true });
      for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) lines++;
      await write(text);
    }
    return Math.max(0, lines - 1);
  }
  check(address: string, sender = "") {
    return this.call<CheckResult>(
      "GET",
      `/api/v1/suppressions/check?${new URLSearchParams({ address, sender })}`,
    );
  }
  async add(entries: NewSuppression[]): Promise<AddResult> {
    const total: AddResult = { added: 0, updated: 0, unchanged: 0 };
    for (let i = 0; i < entries.length || i === 0; i += MAX_ENTRIES_PER_REQUEST) {
      const r = await this.call<AddResult>("POST", "/api/v1/suppressions", {
        entries: entries.slice(i, i + MAX_ENTRIES_PER_REQUEST),
      });
      total.added += r.added;
      total.updated += r.updated;
      total.unchanged += r.unchanged;
    }
    return total;
  }
  async remove(entries: { address: string; scope?: string }[]) {
    const total = { removed: 0, absent: 0 };
    for (let i = 0; i < entries.length || i === 0; i += MAX_ENTRIES_PER_REQUEST) {
      const r = await this.call<{ removed: number; absent: number }>("POST", "/api/v1/suppressions/remove", {
        entries: entries.slice(i, i + MAX_ENTRIES_PER_REQUEST),
      });
      total.removed += r.removed;
      total.absent += r.absent;
    }
    return total;
  }
  stats() {
    return this.call<StatsResult>("GET", "/api/v1/suppressions/stats");
  }
  async close(): Promise<void> {}
}

// ------------------------------------------------------------------ local client

/**
 * Works on the list in the spool directory: changes take its lock (SuppressionError
 * "suppression-locked", exit 69, while a daemon holds it); reading falls back to the file without the
 * lock when the daemon holds it but its control API did not answer.
 */
class LocalSuppressClient implements SuppressClient {
  readonly mode = "local";
  private opened: SuppressionList | undefined;

  constructor(private readonly config: Config) {}

  private get dir(): string {
    return suppressionDir(this.config);
  }

  /** Opens (for a change: creating the directory, so that a list can be filled before the first start). */
  private async open(): Promise<SuppressionList> {
    if (!this.opened) becomeSpoolOwner(this.config.spool.dir);
    // In cluster mode a change made here waits in the outbox for the daemon to publish it.
    this.opened ??= await SuppressionList.open({
      dir: this.dir,
      sync: this.config.spool.sync,
      shared: this.config.cluster !== undefined,
    });
    return this.opened;
  }

  /** For reading: the list with its lock, or the file as it is when another process holds the lock. */
  private async read<T>(
    withList: (l: SuppressionList) => T | Promise<T>,
    without: (all: SuppressionEntry[]) => T | Promise<T>,
  ): Promise<T> {
    // Nothing there yet: the list is empty (and reading creates nothing).
    if (!this.opened && !existsSync(this.dir)) return without([]);
    let list: SuppressionList;
    try {
      list = await this.open();
    } catch (err) {
      if (err instanceof SuppressionError && err.kind === "locked") return without(readEntries(this.dir));
      throw err;
    }
    return withList(list);
  }

  list(filter: ListFilter) {
    const pick = (all: SuppressionEntry[]) => {
      const e = all.filter(
        (x) =>
          (filter.scope === undefined || x.scope === filter.scope) &&
          (filter.reason === undefined || x.reason === filter.reason),
      );
      const entries = e.slice(0, filter.limit ?? 1000);
      return { count: entries.length, entries };
    };
    return this.read(async (l) => {
      const entries = await l.entries({ ...filter, limit: filter.limit ?? 1000 });
      return { count: entries.length, entries };
    }, pick);
  }
  async export(filter: ListFilter, write: (text: string) => void | Promise<void>): Promise<number> {
    const keep = (e: SuppressionEntry) =>
      (filter.scope === undefined || e.scope === filter.scope) &&
      (filter.reason === undefined || e.reason === filter.reason);
    await write(`${CSV_HEADER}\n`);
    return this.read(
      async (l) => {
        let n = 0;
        let buf: string[] = [];
        const pending: Promise<void>[] = [];
        await l.forEachEntry((e) => {
          if (!keep(e)) return true;
          n++;
          buf.push(formatCsvRow(e));
          if (buf.length >= 4096) {
            pending.push(Promise.resolve(write(`${buf.join("\n")}\n`)));
            buf = [];
          }
          return true;
        });
        if (buf.length > 0) pending.push(Promise.resolve(write(`${buf.join("\n")}\n`)));
        await Promise.all(pending);
        return n;
      },
      async (all) => {
        const rows = all.filter(keep);
        if (rows.length > 0) await write(`${rows.map(formatCsvRow).join("\n")}\n`);
        return rows.length;
      },
    );
  }
  check(address: string, sender = "") {
    return this.read(
      (l) => checkOf(l, address, sender),
      (all) => {
        const a = normalizeAddress(address);
        if (a === undefined) throw usage(`not an address: ${JSON.stringify(address)}`);
        const d = sender.includes("@")
          ? sender.slice(sender.lastIndexOf("@") + 1).toLowerCase()
          : sender.toLowerCase();
        const now = Date.now();
        const e = all.find(
          (x) =>
            x.address === a &&
            (x.scope === "" || x.scope === d) &&
            (x.expiresMs === undefined || x.expiresMs > now),
        );
        return e
          ? {
              address: a,
              suppressed: true,
              scope: e.scope,
              reason: e.reason,
              ...(e.expiresMs ? { expiresMs: e.expiresMs } : {}),
            }
          : { address: a, suppressed: false };
      },
    );
  }
  async add(entries: NewSuppression[]) {
    return (await this.open()).add(entries);
  }
  async remove(entries: { address: string; scope?: string }[]) {
    return (await this.open()).remove(entries);
  }
  stats() {
    return this.read(statsOf, (all) => ({ entries: all.length, records: -1, fileBytes: -1, tableBytes: -1 }));
  }
  async close(): Promise<void> {
    await this.opened?.close();
    this.opened = undefined;
  }
}

/**
 * Run as root, the list is worked on as the owner of the spool directory, the daemon's user (as
 * Postfix's postsuper works as mail_owner): every file this process creates in it (the directory, the
 * log, a compaction's new file, the outbox) then belongs to that user, who could not open root's.
 * Irreversible for the process (a command's life). A spool directory that does not exist yet, or
 * that root owns, is root's: nothing changes.
 */
function becomeSpoolOwner(spoolDir: string): void {
  if (process.getuid?.() !== 0) return;
  let owner: { uid: number; gid: number };
  try {
    owner = statSync(spoolDir);
  } catch {
    return;
  }
  if (owner.uid === 0) return;
  process.setgroups?.([]);
  process.setgid?.(owner.gid);
  process.setuid?.(owner.uid);
}

/**
 * A client for `config`: the running daemon's control API when this user may reach it (its socket, or
 * control.address with the token), else the list on disk.
 */
export async function openSuppressClient(
  config: Config,
  opts: { prefer?: "daemon" | "local"; timeoutMs?: number } = {},
): Promise<SuppressClient> {
  if (opts.prefer !== "local") {
    const d = await findDaemon(config, opts.timeoutMs ?? 1000);
    if ("found" in d) return new HttpSuppressClient(d.found);
    if ("refused" in d) throw new PermissionError(`suppress: ${d.refused}`);
  }
  return new LocalSuppressClient(config);
}
