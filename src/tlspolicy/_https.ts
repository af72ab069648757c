/**
 * A small HTTPS/1.1 client for the two requests this module makes: GET of an MTA-STS policy and POST of
 * a TLS-RPT report.
 *
 * Owns: resolving the host through the project's resolver (so `dns.servers` and the loopback-only rule
 * hold for HTTPS too), connecting to the addresses in order, the TLS handshake with the CA bundle, the
 * certificate check against the host name, the response (status, headers, body: Content-Length,
 * chunked or until close) under a size and a time limit.
 * Does not own: what the body means (sts.ts, rpt.ts).
 * Invariants: redirects are never followed (RFC 8461 §3.3: a 3xx is an error, not a hint); nothing past
 * `maxBodyBytes` is read; after `timeoutMs` the request fails and its socket is destroyed; a certificate
 * that does not chain to the bundle or does not name the host fails with `stage: "tls"`.
 * Why not fetch(): it resolves names itself (bypassing `dns.servers` and the loopback rule) and cannot
 * connect to one address while presenting another name.
 */
import { X509Certificate } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import type { Resolver } from "../dns/index.ts";

export interface HttpsRequest {
  method: "GET" | "POST";
  host: string;
  port: number;
  path: string;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** PEM bundle the server certificate must chain to; undefined: the runtime's root store. */
  ca?: string;
  timeoutMs: number;
  maxBodyBytes: number;
}

export type HttpsResult =
  | { ok: true; status: number; headers: Map<string, string>; body: Buffer; ip: string }
  | { ok: false; stage: "dns" | "connect" | "tls" | "http" | "size" | "timeout"; detail: string };

export interface HttpsDeps {
  resolver: Resolver;
  prefer: "ipv4" | "ipv6";
  allowAddress?: (ip: string) => boolean;
}

const MAX_HEADER_BYTES = 16 * 1024;

async function addressesOf(deps: HttpsDeps, host: string): Promise<string[] | { error: string }> {
  if (net.isIP(host)) return [host];
  const families: (4 | 6)[] = deps.prefer === "ipv6" ? [6, 4] : [4, 6];
  const out: string[] = [];
  const problems: string[] = [];
  for (const f of families) {
    const r = await deps.resolver.addresses(host, f);
    if (r.kind === "ok") out.push(...r.addresses);
    else problems.push(`${f === 4 ? "A" : "AAAA"}: ${r.kind === "error" ? r.error : r.kind}`);
  }
  return out.length > 0 ? out : { error: `no address for ${host} (${problems.join(", ")})` };
}

export async function httpsRequest(deps: HttpsDeps, req: HttpsRequest): Promise<HttpsResult> {
  const started = Date.now();
  const ips = await addressesOf(deps, req.host);
  if ("error" in ips) return { ok: false, stage: "dns", detail: ips.error };
  let last: HttpsResult = { ok: false, stage: "connect", detail: `no address of ${req.host} to try` };
  for (const ip of ips) {
    if (deps.allowAddress && !deps.allowAddress(ip)) {
      last = { ok: false, stage: "connect", detail: `${ip}: address not allowed by this process's policy` };
      continue;
    }
    const left = req.timeoutMs - (Date.now() - started);
    if (left <= 0) return { ok: false, stage: "timeout", detail: `no answer within ${req.timeoutMs} ms` };
    last = await requestOnce(ip, req, left);
    // Only a failure to reach this address moves on; a TLS or HTTP answer is the server's word.
    if (last.ok || last.stage !== "connect") return last;
  }
  return last;
}

function requestOnce(ip: string, req: HttpsRequest, timeoutMs: number): Promise<HttpsResult> {
  return new Promise((resolve) => {
    let done = false;
    let connected = false;
    let buf = Buffer.alloc(0);
    const socket = tls.connect({
      host: ip,
      port: req.port,
      servername: net.isIP(req.host) ? undefined : req.host,
      ...(req.ca !== undefined ? { ca: req.ca } : {}),
      // Checked below, so that a bad certificate is told apart from a failed connection.
      rejectUnauthorized: false,
      ALPNProtocols: ["http/1.1"],
    });
    const finish = (r: HttpsResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish({
          ok: false,
          stage: "timeout",
          detail: `${req.host} (${ip}): no answer within ${timeoutMs} ms`,
        }),
      timeoutMs,
    );
    socket.on("secureConnect", () => {
      connected = true;
      const problem = certificateProblem(socket, req.host);
      if (problem) return finish({ ok: false, stage: "tls", detail: `${req.host} (${ip}): ${problem}` });
      const headers: Record<string, string> = {
        Host: req.port === 443 ? req.host : `${req.host}:${req.port}`,
        "User-Agent": "mta",
        Connection: "close",
        ...req.headers,
      };
      if (req.body) headers["Content-Length"] = String(req.body.length);
      const head = `${req.method} ${req.path} HTTP/1.1\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}`)
        .join("\r\n")}\r\n\r\n`;
      socket.write(req.body ? Buffer.concat([Buffer.from(head, "latin1"), req.body]) : head);
    });
    socket.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_HEADER_BYTES + req.maxBodyBytes + 64)
        return finish({ ok: false, stage: "size", detail: `response over ${req.maxBodyBytes} bytes` });
      const r = parseResponse(buf, req.maxBodyBytes, false);
      if (r) finish(r.ok ? { ...r, ip } : r);
    });
    socket.on("end", () => {
      const r = parseResponse(buf, req.maxBodyBytes, true);
      finish(
        r
          ? r.ok
            ? { ...r, ip }
            : r
          : { ok: false, stage: "http", detail: "connection closed mid-response" },
      );
    });
    socket.on("error", (err: Error) => {
      const code = (err as { code?: string }).code ?? "";
      // An error before the handshake completed is a failure to reach this address (or a handshake
      // failure: that is TLS); after it, the server broke off its answer.
      const tlsish = /SSL|TLS|CERT|handshake/i.test(`${code} ${err.message}`);
      finish({
        ok: false,
        stage: connected ? "http" : tlsish ? "tls" : "connect",
        detail: `${req.host} (${ip}:${req.port}): ${err.message}`,
      });
    });
  });
}

/** Why the server's certificate is not acceptable for `host`, or undefined when it is (RFC 6125). */
function certificateProblem(socket: tls.TLSSocket, host: string): string | undefined {
  const error = String(socket.authorizationError ?? "");
  // A name mismatch is reported by the TLS stack too; the check below says it better.
  if (!socket.authorized && error !== "ERR_TLS_CERT_ALTNAME_INVALID")
    return `certificate not trusted: ${error || "unknown"}`;
  const peer = socket.getPeerCertificate();
  if (!peer?.raw) return "no certificate";
  const cert = new X509Certificate(peer.raw);
  const ok = net.isIP(host) ? cert.checkIP(host) : cert.checkHost(host, { partialWildcards: false });
  return ok ? undefined : `certificate does not name ${host} (${cert.subjectAltName ?? cert.subject})`;
}

/**
 * The response in `buf` once it is complete: undefined while more is needed. `closed`: the peer has
 * ended the stream (a body without length ends there).
 */
function parseResponse(
  buf: Buffer,
  maxBodyBytes: number,
  closed: boolean,
):
  | Exclude<HttpsResult, { ip: string }>
  | { ok: true; status: number; headers: Map<string, string>; body: Buffer }
  | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) {
    if (buf.length > MAX_HEADER_BYTES)
      return { ok: false, stage: "http", detail: "response header too long" };
    return closed ? { ok: false, stage: "http", detail: "no complete response header" } : undefined;
  }
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
  if (!m)
    return {
      ok: false,
      stage: "http",
      detail: `malformed status line ${JSON.stringify((lines[0] ?? "").slice(0, 60))}`,
    };
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const c = l.indexOf(":");
    if (c > 0) headers.set(l.slice(0, c).trim().toLowerCase(), l.slice(c + 1).trim());
  }
  const status = Number(m[1]);
  const rest = buf.subarray(end + 4);
  if ((headers.get("transfer-encoding") ?? "").toLowerCase().includes("chunked")) {
    const body = dechunk(rest, maxBodyBytes);
    if (body === "more")
      return closed ? { ok: false, stage: "http", detail: "chunked body cut short" } : undefined;
    if (body === "size") return { ok: false, stage: "size", detail: `body over ${maxBodyBytes} bytes` };
    if (body === "bad") return { ok: false, stage: "http", detail: "malformed chunked body" };
    return { ok: true, status, headers, body };
  }
  const length = headers.get("content-length");
  if (length !== undefined) {
    if (!/^\d+$/.test(length)) return { ok: false, stage: "http", detail: "malformed Content-Length" };
    const n = Number(length);
    if (n > maxBodyBytes)
      return { ok: false, stage: "size", detail: `body of ${n} bytes is over ${maxBodyBytes}` };
    if (rest.length < n) return closed ? { ok: false, stage: "http", detail: "body cut short" } : undefined;
    return { ok: true, status, headers, body: rest.subarray(0, n) };
  }
  if (rest.length > maxBodyBytes)
    return { ok: false, stage: "size", detail: `body over ${maxBodyBytes} bytes` };
  return closed ? { ok: true, status, headers, body: rest } : undefined;
}

/** RFC 9112 §7.1 chunked coding (extensions and trailers skipped). */
function dechunk(buf: Buffer, maxBodyBytes: number): Buffer | "more" | "size" | "bad" {
  const parts: Buffer[] = [];
  let total = 0;
  let at = 0;
  for (;;) {
    const eol = buf.indexOf("\r\n", at);
    if (eol < 0) return "more";
    const sizeText = buf.subarray(at, eol).toString("latin1").split(";")[0]!.trim();
    if (!/^[0-9a-fA-F]+$/.test(sizeText)) return "bad";
    const size = Number.parseInt(sizeText, 16);
    if (size === 0) return Buffer.concat(parts);
    total += size;
    if (total > maxBodyBytes) return "size";
    if (buf.length < eol + 2 + size + 2) return "more";
    parts.push(buf.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}
