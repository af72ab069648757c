/**
 * The HTTP control endpoint: health, Prometheus metrics, and the JSON API routes other modules register.
 *
 * Owns: the `Bun.serve` instance on `control.address`, bearer-token checking, JSON error replies.
 * Does not own: what the API routes do (app/ registers handlers).
 * Invariant: when bound to a non-loopback address a token is required for every route except /healthz.
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
  /** `status` overrides "ok"/"unhealthy" (e.g. "degraded": serving, with a dependency down). */
  health?: () => { ok: boolean; status?: string; detail?: Record<string, unknown> };
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
  const server = Bun.serve({
    hostname: opts.host,
    port: opts.port,
    maxRequestBodySize: 256 * 1024 * 1024,
    fetch: async (req) => {
      const url = new URL(req.url);
      if (url.pathname === "/healthz") {
        const h = opts.health?.() ?? { ok: true };
        return jsonResponse(
          { status: h.status ?? (h.ok ? "ok" : "unhealthy"), ...h.detail },
          h.ok ? 200 : 503,
        );
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
      try {
        return await handler(req, url);
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
