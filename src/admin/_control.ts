/**
 * How mta's own clients (`mta queue`, `mta send`) reach a running daemon's control API.
 *
 * Owns: choosing the way in: the control socket when this user can open it (root and the daemon's
 * user: no token needed), else `control.address` over TCP with the token when this user can read it;
 * the request headers the API demands (JSON content type on every POST, the bearer token on TCP).
 * Does not own: the API's routes (_queueClient.ts, inject.ts) or its checks (observe/control.ts).
 * Invariant: a client never sends the token anywhere but to the configured control address.
 */
import { accessSync, constants } from "node:fs";
import { type Config, controlToken } from "../config/index.ts";
import { formatHostPort } from "../lib/index.ts";

export interface ControlEndpoint {
  /** "socket" or "tcp". */
  readonly via: "socket" | "tcp";
  /** Where, for messages: the socket path or http://host:port. */
  readonly where: string;
  /**
   * A request to `path` (starting with /). A POST says `Content-Type: application/json`; its body is
   * sent as it is when it is a string or a Blob (already JSON), else as JSON.stringify of it.
   */
  request(method: "GET" | "POST", path: string, body?: unknown, signal?: AbortSignal): Promise<Response>;
}

export type DaemonLookup =
  | { found: ControlEndpoint }
  /** A daemon answers, but this user has neither the socket nor the token. */
  | { refused: string }
  | { none: true };

function endpoint(
  via: "socket" | "tcp",
  where: string,
  base: string,
  unix?: string,
  token?: string,
): ControlEndpoint {
  return {
    via,
    where,
    request(method, path, body, signal) {
      const headers: Record<string, string> = {};
      if (token) headers.authorization = `Bearer ${token}`;
      if (method === "POST") headers["content-type"] = "application/json";
      return fetch(`${base}${path}`, {
        method,
        headers,
        ...(method === "POST" ? { body: postBody(body) } : {}),
        ...(unix ? { unix } : {}),
        ...(signal ? { signal } : {}),
      } as RequestInit);
    },
  };
}

function postBody(body: unknown): string | Blob {
  if (body === undefined) return "{}";
  if (typeof body === "string" || body instanceof Blob) return body;
  return JSON.stringify(body);
}

/** A TCP endpoint at `base` (http://host:port), with the bearer token when given. */
export function tcpEndpoint(base: string, token?: string): ControlEndpoint {
  return endpoint("tcp", base, base, undefined, token);
}

/** The daemon's TCP base URL; a wildcard bind is reached on loopback. */
export function controlBaseUrl(config: Config): string | undefined {
  const a = config.control.address;
  if (!a || a.port === 0) return undefined;
  const host = a.host === "0.0.0.0" || a.host === "" ? "127.0.0.1" : a.host === "::" ? "::1" : a.host;
  return `http://${formatHostPort({ host, port: a.port })}`;
}

async function answers(e: ControlEndpoint, timeoutMs: number): Promise<boolean> {
  try {
    const res = await e.request("GET", "/healthz", undefined, AbortSignal.timeout(timeoutMs));
    const j = (await res.json()) as { status?: unknown };
    return typeof j.status === "string";
  } catch {
    return false;
  }
}

/** Finds a running daemon this user may talk to. */
export async function findDaemon(config: Config, timeoutMs = 1000): Promise<DaemonLookup> {
  const socket = config.control.socketPath;
  if (socket) {
    let mayOpen = true;
    try {
      accessSync(socket, constants.R_OK | constants.W_OK);
    } catch {
      mayOpen = false;
    }
    if (mayOpen) {
      const e = endpoint("socket", socket, "http://localhost", socket);
      if (await answers(e, timeoutMs)) return { found: e };
    }
  }
  const base = controlBaseUrl(config);
  if (!base) return { none: true };
  const token = controlToken(config);
  const e = endpoint("tcp", base, base, undefined, token);
  if (!(await answers(e, timeoutMs))) return { none: true };
  if (token) return { found: e };
  return {
    refused:
      `a daemon answers at ${base}, but this user can neither open its control socket` +
      `${socket ? ` ${socket}` : ""} (root and the daemon's user only) nor read control.token`,
  };
}
