/**
 * The control API routes behind every `mta queue` command, and the request helpers other admin
 * routes share (query numbers and strings, JSON bodies, selectors, `QueueError` -> HTTP status).
 *
 * Owns: the HTTP paths of the queue and their JSON bodies; parsing a request into a `QueueOps` call.
 * Does not own: what the commands do (_ops.ts), the client side (_client.ts), the HTTP server
 * (observe/control.ts).
 * Invariant: a bad request is a `QueueError` answered with its status and `{ "error": "..." }`; an
 * `MtaError` is a 500 with its message; anything else is thrown on (the server logs it).
 *
 * Routes (JSON in and out; errors are `{ "error": "..." }` with a 4xx/5xx status):
 *   GET  /api/v1/queue/summary?sort=messages&top=20
 *   GET  /api/v1/queue/messages?destination=&sender=&state=&older_than_ms=&limit=
 *   GET  /api/v1/queue/messages/<id>?body=1
 *   POST /api/v1/queue/flush    { destination? | id? }
 *   POST /api/v1/queue/suspend  { destination, forMs?, reason? }
 *   POST /api/v1/queue/resume   { destination }
 *   POST /api/v1/queue/bounce   { id?, destination?, sender?, state?, olderThanMs?, yes? }
 *   POST /api/v1/queue/delete   (same as bounce)
 *   GET  /api/v1/spool/stats    GET /api/v1/spool/verify    POST /api/v1/spool/compact
 * In a cluster (app/cluster.ts registers them):
 *   POST /api/v1/queue/transfer        { to, id?, destination?, sender?, state?, olderThanMs? }
 *   GET  /api/v1/cluster/summary?sort=&top=   GET /api/v1/cluster/nodes
 *   POST /api/v1/cluster/transfer-in   (node to node: a batch of messages)
 *   POST /api/v1/cluster/drain         { to } (daemon.ts: stop taking mail, move everything, stop)
 */
import { errorMessage, MtaError } from "../lib/index.ts";
import { jsonError, jsonResponse, type RouteHandler } from "../observe/index.ts";
import type { QueueOps } from "./_ops.ts";
import { type MessageState, QueueError, type Selector, type SortKey } from "./_shapes.ts";

export function num(url: URL, name: string): number | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === "") return undefined;
  const n = Number(v);
  if (!Number.isFinite(n))
    throw new QueueError("usage", `${name} must be a number, not ${JSON.stringify(v)}`, 400);
  return n;
}

export function str(url: URL, name: string): string | undefined {
  const v = url.searchParams.get(name);
  return v === null || v === "" ? undefined : v;
}

export async function jsonBody(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  if (text.trim() === "") return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new QueueError("usage", `malformed JSON: ${errorMessage(err)}`, 400);
  }
  if (!v || typeof v !== "object" || Array.isArray(v))
    throw new QueueError("usage", "expected a JSON object", 400);
  return v as Record<string, unknown>;
}

export function optString(b: Record<string, unknown>, k: string): string | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new QueueError("usage", `"${k}" must be a string`, 400);
  return v;
}

export function optNumber(b: Record<string, unknown>, k: string): number | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v))
    throw new QueueError("usage", `"${k}" must be a number`, 400);
  return v;
}

export function selectorFrom(b: Record<string, unknown>): Selector {
  const sel: Selector = {};
  const id = optString(b, "id");
  const destination = optString(b, "destination");
  const sender = optString(b, "sender");
  const state = optString(b, "state");
  const olderThanMs = optNumber(b, "olderThanMs");
  if (id !== undefined) sel.id = id;
  if (destination !== undefined) sel.destination = destination;
  if (sender !== undefined) sel.sender = sender;
  if (state !== undefined) sel.state = state as MessageState;
  if (olderThanMs !== undefined) sel.olderThanMs = olderThanMs;
  return sel;
}

export function handle(fn: (req: Request, url: URL) => unknown): RouteHandler {
  return async (req, url) => {
    try {
      return jsonResponse(await fn(req, url));
    } catch (err) {
      if (err instanceof QueueError) return jsonError(err.status, err.message);
      if (err instanceof MtaError) return jsonError(500, err.message);
      throw err;
    }
  };
}

/** The control API routes behind every `mta queue` command; register each with `control.addRoute`. */
export function queueRoutes(ops: QueueOps): Record<string, RouteHandler> {
  return {
    "GET /api/v1/queue/summary": handle((_req, url) => {
      const sort = str(url, "sort") as SortKey | undefined;
      const top = num(url, "top");
      return ops.summary({ ...(sort ? { sort } : {}), ...(top !== undefined ? { top } : {}) });
    }),
    "GET /api/v1/queue/messages": handle((_req, url) => {
      const sel: Selector & { limit?: number } = {};
      const destination = str(url, "destination");
      const sender = str(url, "sender");
      const state = str(url, "state");
      const olderThanMs = num(url, "older_than_ms");
      const limit = num(url, "limit");
      if (destination !== undefined) sel.destination = destination;
      if (sender !== undefined) sel.sender = sender;
      if (state !== undefined) sel.state = state as MessageState;
      if (olderThanMs !== undefined) sel.olderThanMs = olderThanMs;
      if (limit !== undefined) sel.limit = limit;
      return ops.list(sel);
    }),
    "GET /api/v1/queue/messages/*": handle((_req, url) => {
      let id: string;
      try {
        id = decodeURIComponent(url.pathname.slice("/api/v1/queue/messages/".length));
      } catch {
        throw new QueueError("usage", "the message id in the path is not valid percent-encoding", 400);
      }
      const body = url.searchParams.get("body");
      return ops.show(id, { body: body === "1" || body === "true" });
    }),
    "POST /api/v1/queue/flush": handle(async (req) => {
      const b = await jsonBody(req);
      const id = optString(b, "id");
      const destination = optString(b, "destination");
      return ops.flush({
        ...(id !== undefined ? { id } : {}),
        ...(destination !== undefined ? { destination } : {}),
      });
    }),
    "POST /api/v1/queue/suspend": handle(async (req) => {
      const b = await jsonBody(req);
      return ops.suspend(optString(b, "destination") ?? "", optNumber(b, "forMs"), optString(b, "reason"));
    }),
    "POST /api/v1/queue/resume": handle(async (req) => {
      const b = await jsonBody(req);
      return ops.resume(optString(b, "destination") ?? "");
    }),
    "POST /api/v1/queue/bounce": handle(async (req) => {
      const b = await jsonBody(req);
      return ops.bounce(selectorFrom(b), { yes: b.yes === true });
    }),
    "POST /api/v1/queue/delete": handle(async (req) => {
      const b = await jsonBody(req);
      return ops.delete(selectorFrom(b), { yes: b.yes === true });
    }),
    // Replaced by app/cluster.ts's routes on a node with a cluster: section.
    "POST /api/v1/queue/transfer": handle(() => {
      throw notInCluster();
    }),
    "GET /api/v1/cluster/summary": handle(() => {
      throw notInCluster();
    }),
    "POST /api/v1/cluster/drain": handle(() => {
      throw notInCluster();
    }),
    "GET /api/v1/spool/stats": handle(() => ops.stats()),
    "GET /api/v1/spool/verify": handle(() => ops.verify()),
    "POST /api/v1/spool/compact": handle(() => ops.compact()),
  };
}

function notInCluster(): QueueError {
  return new QueueError(
    "usage",
    "this node is not part of a cluster (its configuration has no cluster: section)",
    400,
  );
}
