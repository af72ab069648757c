/**
 * The HTTP control endpoint: health, Prometheus metrics, and the JSON API routes other modules register,
 * on `control.address` (TCP) and on the local control socket (`control.socket`, a Unix socket).
 *
 * Owns: both `Bun.serve` instances, who may call what, JSON error replies, draining at shutdown.
 * Does not own: what the API routes do (app/ registers handlers).
 * Invariants (a web page the operator visits must not be able to drive the API, RFC 9110 and Fetch):
 * - over TCP, a request whose `Host` does not name the bound address (or `localhost` on a loopback
 *   bind, or a name in `control.hosts`) is refused: DNS rebinding gives a page the right IP, never the
 *   right Host name;
 * - a request whose `Origin` is not its own `Host`, or whose `Sec-Fetch-Site` is not `same-origin` or
 *   `none`, is refused: that is a page of another site;
 * - every request that changes something (any method but GET/HEAD) must say `Content-Type:
 *   application/json`, which a browser cannot send cross-origin without a CORS preflight, and every
 *   preflight (OPTIONS) gets 405 without CORS headers;
 * - over TCP, /api/ needs `Authorization: Bearer <control.token>` (scheme in any case, compared in
 *   constant time), and with no token configured /api/ is served on the control socket only; the socket
 *   lives in the spool directory (mode 0700) with mode 0600, so only root and the daemon's user reach it;
 * - /healthz answers everyone; /metrics needs the token when one is set;
 * - every error, 413 included, has a JSON body `{ "error": "..." }` (Bun's own 413 has none, so the
 *   body limit is enforced here, on the declared length and on the bytes that arrive).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { isIP } from "node:net";
import { isLoopback } from "../lib/index.ts";
import type { Logger } from "./logger.ts";
import type { Metrics } from "./metrics.ts";

/** Who sent a request: a TCP client's address, or the control socket (root or the daemon's user). */
export type Peer = { address: string; socket?: undefined } | { socket: true; address?: undefined };

export type RouteHandler = (req: Request, url: URL, peer: Peer) => Response | Promise<Response>;

export interface ControlOptions {
  /** TCP address; undefined: the control socket only. */
  host?: string;
  port?: number;
  /** Path of the local control socket; undefined: none. */
  socketPath?: string;
  token?: string;
  /** Names a request may give in `Host` besides the bound address (and `localhost` on loopback). */
  hostNames?: readonly string[];
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
  /** The TCP address ("" and 0 when there is none). */
  readonly host: string;
  readonly port: number;
  readonly socketPath: string | undefined;
  addRoute(key: string, handler: RouteHandler): void;
  /** Shutdown begins: requests other than GET/HEAD get 503 from now on. */
  drain(): void;
  /** Waits up to `graceMs` for requests in flight, then closes every connection. */
  stop(graceMs?: number): Promise<void>;
}

export function jsonResponse(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(`${JSON.stringify(body)}\n`, {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

export function jsonError(
  status: number,
  message: string,
  extra?: Record<string, unknown>,
  headers?: Record<string, string>,
): Response {
  return jsonResponse({ error: message, ...extra }, status, headers);
}

/** `Authorization: Bearer <token>` with the scheme in any case (RFC 9110 §11.1), compared in constant time. */
export function bearerMatches(header: string | null, token: string): boolean {
  if (!header) return false;
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+([^ \t]+)[ \t]*$/.exec(header);
  if (!m || m[1]!.toLowerCase() !== "bearer") return false;
  // Digests have the same length whatever was sent, so the comparison time says nothing about the token.
  const given = createHash("sha256").update(m[2]!).digest();
  const want = createHash("sha256").update(token).digest();
  return timingSafeEqual(given, want);
}

/** Host header → lower-case name without brackets and its port (undefined when absent). */
export function parseHostHeader(value: string): { name: string; port?: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+))(?::(\d{1,5}))?$/.exec(value.trim());
  if (!m) return undefined;
  const name = (m[1] ?? m[2]!).toLowerCase().replace(/\.$/, "");
  return m[3] === undefined ? { name } : { name, port: Number(m[3]) };
}

function sameAddress(a: string, b: string): boolean {
  if (a === b) return true;
  if (isIP(a) === 6 && isIP(b) === 6) {
    const norm = (x: string) => new URL(`http://[${x}]/`).hostname;
    return norm(a) === norm(b);
  }
  return false;
}

const WILDCARDS = new Set(["0.0.0.0", "::", ""]);

export function startControlServer(opts: ControlOptions): ControlServer {
  const routes = new Map<string, RouteHandler>(Object.entries(opts.routes ?? {}));
  const boundHost = opts.host ?? "";
  if (opts.host !== undefined && !isLoopback(boundHost) && !opts.token) {
    throw new Error(`control.address ${boundHost} is not loopback: set control.token`);
  }
  const names = new Set((opts.hostNames ?? []).map((n) => n.toLowerCase().replace(/\.$/, "")));
  const wildcard = WILDCARDS.has(boundHost);
  let boundPort = opts.port ?? 0;
  let draining = false;
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  let inFlight = 0;

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
  const methodsFor = (path: string): string[] => {
    const out = new Set<string>();
    for (const key of routes.keys()) {
      const [m, p] = key.split(" ") as [string, string];
      if (p === path || (p.endsWith("/*") && path.startsWith(p.slice(0, -1)))) out.add(m);
    }
    if (out.has("GET")) out.add("HEAD");
    return [...out].sort();
  };

  /**
   * Whether a Host names this server. The port is not compared: a browser's Host is the URL it
   * fetched, and only a URL with our port reaches us (a tunnel such as `ssh -L 9000:...` may show
   * another); what DNS rebinding cannot fake is the name.
   */
  const hostAllowed = (value: string | null): boolean => {
    if (!value) return false;
    const h = parseHostHeader(value);
    if (!h) return false;
    if (names.has(h.name) || h.name === boundHost.toLowerCase()) return true;
    if (h.name === "localhost") return wildcard || isLoopback(boundHost);
    // An IP literal cannot be rebound: on a wildcard bind any of the machine's addresses is right.
    if (isIP(h.name) !== 0) return wildcard || sameAddress(h.name, boundHost);
    return false;
  };

  /** A refusal, logged: a burst of these is someone (or some web page) trying the API. */
  const refuse = (
    req: Request,
    status: number,
    message: string,
    extra?: Record<string, unknown>,
    headers?: Record<string, string>,
  ): Response => {
    opts.log.info("control API request refused", {
      status,
      reason: message,
      method: req.method,
      path: pathOf(req),
      host: req.headers.get("host") ?? "",
      origin: req.headers.get("origin") ?? "",
    });
    return jsonError(status, message, extra, headers);
  };

  const gate = (req: Request, local: boolean): Response | undefined => {
    const forbidden = (why: string) => refuse(req, 403, `forbidden: ${why}`);
    const host = req.headers.get("host");
    if (!local && !hostAllowed(host))
      return forbidden(
        `Host ${JSON.stringify(host ?? "")} is not this control API's address (list other names in control.hosts)`,
      );
    const origin = req.headers.get("origin");
    if (origin !== null) {
      let ok = false;
      try {
        const o = new URL(origin);
        ok = o.protocol === "http:" && !local && o.host === new URL(`http://${host}`).host;
      } catch {}
      if (!ok) return forbidden(`a request from the web page ${origin} (cross-origin)`);
    }
    const site = req.headers.get("sec-fetch-site");
    if (site !== null && site !== "same-origin" && site !== "none")
      return forbidden(`a ${site} request from a web page`);
    return undefined;
  };

  const handle = async (req: Request, local: boolean, peer: Peer): Promise<Response> => {
    const refused = gate(req, local);
    if (refused) return refused;
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      return refuse(req, 400, "bad request: malformed Host or request target");
    }
    const method = req.method === "HEAD" ? "GET" : req.method;
    if (url.pathname === "/healthz" && method === "GET") {
      const h = opts.health?.() ?? { ok: true };
      return jsonResponse({ status: h.ok ? "ok" : "unhealthy", ...h.detail }, h.ok ? 200 : 503);
    }
    const handler = find(method, url.pathname);
    if (!handler) {
      const allow = methodsFor(url.pathname);
      if (allow.length > 0)
        return refuse(
          req,
          405,
          `${req.method} is not allowed on ${url.pathname}`,
          { allow },
          {
            allow: allow.join(", "),
          },
        );
      return jsonError(404, `no such endpoint: ${req.method} ${url.pathname}`);
    }
    if (!local) {
      const isApi = url.pathname !== "/metrics";
      if (opts.token) {
        if (!bearerMatches(req.headers.get("authorization"), opts.token))
          return refuse(req, 401, "missing or wrong bearer token", undefined, {
            "www-authenticate": 'Bearer realm="mta"',
          });
      } else if (isApi) {
        return refuse(
          req,
          403,
          `forbidden: control.token is not set, so the API is served on the control socket only${opts.socketPath ? ` (${opts.socketPath})` : ""}`,
        );
      }
    }
    if (method !== "GET") {
      if (draining)
        return jsonError(503, "shutting down: try again when the daemon is back", undefined, {
          "retry-after": "5",
        });
      const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
      if (type !== "application/json")
        return refuse(req, 415, `${req.method} ${url.pathname} takes Content-Type: application/json`);
    }
    const declared = Number(req.headers.get("content-length") ?? 0);
    if (declared > maxBody) return tooLarge(maxBody);
    let request = req;
    if (req.body && method !== "GET") {
      const body = await readBody(req, maxBody);
      if (!body) return tooLarge(maxBody);
      request = new Request(req.url, { method: req.method, headers: req.headers, body });
    }
    try {
      return await handler(request, url, peer);
    } catch (err) {
      opts.log.error("control API handler failed", { path: url.pathname, error: String(err) });
      return jsonError(500, "internal error; see the daemon's log");
    }
  };

  const counted = async (req: Request, local: boolean, address?: string): Promise<Response> => {
    inFlight++;
    try {
      return await handle(req, local, local ? { socket: true } : { address: address ?? "unknown" });
    } finally {
      inFlight--;
    }
  };

  routes.set("GET /metrics", () => {
    return new Response(opts.metrics.render(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    });
  });

  const server =
    opts.host === undefined
      ? undefined
      : Bun.serve({
          hostname: opts.host,
          port: opts.port ?? 0,
          // Bun answers a larger body with a bare 413; ours says why, in JSON. Bun closes a connection
          // idle for 10 s by default, and a request is idle while its handler runs (an inject waits
          // for fdatasync, a bounce drains for up to 30 s).
          maxRequestBodySize: maxBody * 2,
          idleTimeout: 120,
          fetch: (req, srv) => counted(req, false, srv.requestIP(req)?.address),
        });
  boundPort = server?.port ?? boundPort;

  let local: ReturnType<typeof Bun.serve> | undefined;
  const socketPath = opts.socketPath;
  if (socketPath) {
    try {
      removeStaleSocket(socketPath);
      // Bun's types leave idleTimeout out for a Unix socket, but it applies there too (10 s otherwise).
      local = Bun.serve({
        unix: socketPath,
        // Bun answers a larger body with a bare 413; ours says why, in JSON. Bun closes a connection
        // idle for 10 s by default, and a request is idle while its handler runs (an inject waits
        // for fdatasync, a bounce drains for up to 30 s).
        maxRequestBodySize: maxBody * 2,
        idleTimeout: 120,
        fetch: (req: Request) => counted(req, true),
      } as unknown as Parameters<typeof Bun.serve>[0]);
      chmodSync(socketPath, 0o600);
    } catch (err) {
      void server?.stop(true);
      throw new Error(`control.socket ${socketPath}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  return {
    host: boundHost,
    port: boundPort,
    socketPath,
    addRoute(key, handler) {
      routes.set(key, handler);
    },
    drain() {
      draining = true;
    },
    async stop(graceMs = 0) {
      draining = true;
      const end = Date.now() + graceMs;
      while (inFlight > 0 && Date.now() < end) await Bun.sleep(10);
      await Promise.all([server?.stop(true), local?.stop(true)]);
      if (socketPath) removeStaleSocket(socketPath);
    },
  };
}

/** The request's path for logs, even when Host made its URL unparsable. */
function pathOf(req: Request): string {
  const m = /^[a-z]+:\/\/[^/]*(\/[^?#]*)?/i.exec(req.url);
  return m?.[1] ?? "/";
}

/** Removes a socket file left by an earlier daemon; anything else at that path is an error. */
function removeStaleSocket(path: string): void {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  unlinkSync(path);
}
