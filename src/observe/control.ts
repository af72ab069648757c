/**
 * The HTTP control endpoint: health, Prometheus metrics, and the JSON API routes other modules register.
 *
 * Owns: the `Bun.serve` instance on `control.address`, bearer-token checking, the request body limit,
 * JSON error replies.
 * Does not own: what the API routes do (app/ registers handlers).
 * Invariants: when bound to a non-loopback address a token is required for every route except
 * /healthz; every error, 413 included, has a JSON body `{ "error": "..." }` (Bun's own 413 has none,
 * so the limit is enforced here, on the declared length and on the bytes that arrive).
 */
import { isLoopback } from "../lib/index.ts";
import type { Logger } from "./logger.ts";
import type { Metrics } from "./metrics.ts";

export type RouteHandler = (req: Request, url: URL) => Response | Promise<Response>;

export interface ControlOptions {
  host: string;
  port: number;
  token?: string;
  log: Logger;
  metrics: Metrics;
  /** Routes by "METHOD /path" (exact path) or "METHOD /prefix/*". */
  routes?: Record<string, RouteHandler>;
  health?: () => { ok: boolean; detail?: Record<string, unknown> };
  /** Largest request body accepted (default 256 MiB); larger ones get 413 with a JSON body. */
  maxBodyBytes?: number;
}

const DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024;

function tooLarge(maxBytes: number): Response {
  return jsonError(
    413,
    `request body over the limit of ${maxBytes} bytes (${Math.round(maxBytes / 1048576)} MiB): send fewer messages per request`,
  );
}

/** The body, or undefined as soon as more than `maxBytes` arrived (the rest is not read). */
async function readBody(req: Request, maxBytes: number): Promise<Uint8Array | undefined> {
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > maxBytes) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export interface ControlServer {
  readonly host: string;
  readonly port: number;
  addRoute(key: string, handler: RouteHandler): void;
  stop(): Promise<void>;
}

export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(`${JSON.stringify(body)}\n`, {
    status,
    headers: { "content-type": "application/json" },
  });
}

export function jsonError(status: number, message: string, extra?: Record<string, unknown>): Response {
  return jsonResponse({ error: message, ...extra }, status);
}

export function startControlServer(opts: ControlOptions): ControlServer {
  const routes = new Map<string, RouteHandler>(Object.entries(opts.routes ?? {}));
  const needsToken = !isLoopback(opts.host) || Boolean(opts.token);
  if (!isLoopback(opts.host) && !opts.token) {
    throw new Error(`control.address ${opts.host} is not loopback: set control.token`);
  }
  const find = (method: string, path: string): RouteHandler | undefined => {
    const exact = routes.get(`${method} ${path}`);
    if (exact) return exact;
    for (const [key, h] of routes) {
      if (!key.endsWith("/*")) continue;
      const [m, prefix] = key.split(" ") as [string, string];
      if (m === method && path.startsWith(prefix.slice(0, -1))) return h;
    }
    return undefined;
  };
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const server = Bun.serve({
    hostname: opts.host,
    port: opts.port,
    // Bun answers a larger body with a bare 413; ours (below) says why, in JSON.
    maxRequestBodySize: maxBody * 2,
    // Bun closes a connection idle for 10 s by default, and a request is idle while its handler runs:
    // an inject of many large messages waits for fdatasync, a bounce drains for up to 30 s.
    idleTimeout: 120,
    fetch: async (req) => {
      const url = new URL(req.url);
      if (url.pathname === "/healthz") {
        const h = opts.health?.() ?? { ok: true };
        return jsonResponse({ status: h.ok ? "ok" : "unhealthy", ...h.detail }, h.ok ? 200 : 503);
      }
      if (needsToken && opts.token && req.headers.get("authorization") !== `Bearer ${opts.token}`) {
        return jsonError(401, "missing or wrong bearer token");
      }
      if (url.pathname === "/metrics" && req.method === "GET") {
        return new Response(opts.metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      }
      const handler = find(req.method, url.pathname);
      if (!handler) return jsonError(404, `no such endpoint: ${req.method} ${url.pathname}`);
      const declared = Number(req.headers.get("content-length") ?? 0);
      if (declared > maxBody) return tooLarge(maxBody);
      let request = req;
      if (req.body && req.method !== "GET" && req.method !== "HEAD") {
        const body = await readBody(req, maxBody);
        if (!body) return tooLarge(maxBody);
        request = new Request(req.url, { method: req.method, headers: req.headers, body });
      }
      try {
        return await handler(request, url);
      } catch (err) {
        opts.log.error("control API handler failed", { path: url.pathname, error: String(err) });
        return jsonError(500, "internal error; see the daemon's log");
      }
    },
  });
  return {
    host: opts.host,
    port: server.port ?? opts.port,
    addRoute(key, handler) {
      routes.set(key, handler);
    },
    async stop() {
      await server.stop(true);
    },
  };
}
