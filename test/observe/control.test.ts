/**
 * The control endpoint's checks, with curl as the client where a header must be exactly as sent: Host
 * and Origin, the JSON content type, 405 with Allow, the bearer token (scheme in any case), the token
 * over TCP, and the control socket that needs none.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "bun";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bearerMatches,
  type ControlServer,
  jsonResponse,
  Metrics,
  parseHostHeader,
  silentLogger,
  startControlServer,
} from "../../src/observe/index.ts";
import { lacking, peer } from "../support/peers.ts";

const CURL = peer("curl") ?? "curl";
const noCurl = lacking("curl");
const TOKEN = "s3cret-token";
let dir = "";
let withToken: ControlServer;
let noToken: ControlServer;
let calls = 0;

const routes = {
  "GET /api/v1/thing": () => jsonResponse({ ok: true }),
  "POST /api/v1/thing": () => {
    calls++;
    return jsonResponse({ done: true });
  },
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mta-control-"));
  withToken = startControlServer({
    host: "127.0.0.1",
    port: 0,
    token: TOKEN,
    hostNames: ["mta.example.test"],
    log: silentLogger(),
    metrics: new Metrics(),
    routes,
  });
  noToken = startControlServer({
    host: "127.0.0.1",
    port: 0,
    socketPath: join(dir, "control.sock"),
    log: silentLogger(),
    metrics: new Metrics(),
    routes,
  });
});

afterAll(async () => {
  await withToken.stop();
  await noToken.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** curl with exact headers (in a child process: the server runs in this one); status, headers, body. */
async function curl(args: string[]): Promise<{ status: number; headers: string; body: string }> {
  const p = spawn([CURL, "-sS", "-i", "--max-time", "5", ...args], { stdout: "pipe", stderr: "ignore" });
  const out = await new Response(p.stdout).text();
  await p.exited;
  const split = out.indexOf("\r\n\r\n");
  const head = out.slice(0, split);
  return {
    status: Number(/^HTTP\/[\d.]+ (\d{3})/.exec(head)?.[1] ?? 0),
    headers: head.toLowerCase(),
    body: out.slice(split + 4),
  };
}

const url = (s: ControlServer, path = "/api/v1/thing") => `http://127.0.0.1:${s.port}${path}`;
const auth = ["-H", `Authorization: Bearer ${TOKEN}`];
const json = ["-H", "Content-Type: application/json"];

describe.skipIf(noCurl)("Host and Origin", () => {
  test("the bound address, localhost and a configured name are accepted; any other Host is 403", async () => {
    const p = withToken.port;
    for (const host of [
      `127.0.0.1:${p}`,
      `localhost:${p}`,
      `mta.example.test:${p}`,
      `MTA.example.test.:${p}`,
    ])
      expect((await curl([...auth, "-H", `Host: ${host}`, url(withToken)])).status).toBe(200);
    // The port is not what tells (a tunnel may show another): the name is.
    expect((await curl([...auth, "-H", `Host: 127.0.0.1:${p + 1}`, url(withToken)])).status).toBe(200);
    expect((await curl([...auth, "-H", "Host: localhost", url(withToken)])).status).toBe(200);
    for (const host of [`evil.test:${p}`, `127.0.0.2:${p}`, "evil.test", "", "a b", `[::1]:${p}`]) {
      const r = await curl([...auth, "-H", `Host: ${host}`, url(withToken)]);
      expect(r.status).toBe(403);
      expect(r.body).toContain("forbidden");
    }
  });

  test("an Origin other than the request's own, or a cross-site Sec-Fetch-Site, is 403", async () => {
    const p = withToken.port;
    const base = [...auth, ...json, "-X", "POST", "-d", "{}"];
    expect((await curl([...base, "-H", `Origin: http://127.0.0.1:${p}`, url(withToken)])).status).toBe(200);
    for (const origin of ["http://127.0.0.2:8080", `http://evil.test:${p}`, "null", `https://127.0.0.1:${p}`])
      expect((await curl([...base, "-H", `Origin: ${origin}`, url(withToken)])).status).toBe(403);
    expect((await curl([...base, "-H", "Sec-Fetch-Site: cross-site", url(withToken)])).status).toBe(403);
    expect((await curl([...base, "-H", "Sec-Fetch-Site: same-site", url(withToken)])).status).toBe(403);
    expect((await curl([...base, "-H", "Sec-Fetch-Site: same-origin", url(withToken)])).status).toBe(200);
  });

  test("parseHostHeader takes names, IPv4 and bracketed IPv6 with or without a port", async () => {
    expect(parseHostHeader("Example.Test:8025")).toEqual({ name: "example.test", port: 8025 });
    expect(parseHostHeader("[::1]:80")).toEqual({ name: "::1", port: 80 });
    expect(parseHostHeader("127.0.0.1")).toEqual({ name: "127.0.0.1" });
    expect(parseHostHeader("::1")).toBeUndefined();
    expect(parseHostHeader("a b:1")).toBeUndefined();
  });
});

describe.skipIf(noCurl)("methods and content type", () => {
  test("a state change needs Content-Type: application/json: what a form or a simple fetch sends is 415", async () => {
    const before = calls;
    for (const type of [
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
    ]) {
      const r = await curl([
        ...auth,
        "-X",
        "POST",
        "-H",
        `Content-Type: ${type}`,
        "-d",
        "{}",
        url(withToken),
      ]);
      expect(r.status).toBe(415);
    }
    expect((await curl([...auth, "-X", "POST", url(withToken)])).status).toBe(415);
    expect((await curl([...auth, ...json, "-X", "POST", "-d", "{}", url(withToken)])).status).toBe(200);
    const charset = ["-H", "Content-Type: application/json; charset=utf-8"];
    expect((await curl([...auth, ...charset, "-d", "{}", url(withToken)])).status).toBe(200);
    expect(calls).toBe(before + 2);
  });

  test("a wrong method is 405 with Allow; a CORS preflight gets no CORS headers", async () => {
    const del = await curl([...auth, "-X", "DELETE", url(withToken)]);
    expect(del.status).toBe(405);
    expect(del.headers).toContain("allow: get, head, post");
    const pre = await curl([
      "-X",
      "OPTIONS",
      "-H",
      "Origin: http://127.0.0.1:1",
      "-H",
      "Access-Control-Request-Method: POST",
      url(withToken),
    ]);
    expect(pre.status).toBe(403);
    const sameOriginPre = await curl(["-X", "OPTIONS", url(withToken)]);
    expect(sameOriginPre.status).toBe(405);
    expect(sameOriginPre.headers).not.toContain("access-control-allow");
    expect((await curl([...auth, "-X", "POST", ...json, url(withToken, "/metrics")])).status).toBe(405);
    expect((await curl([...auth, url(withToken, "/api/v1/nothing")])).status).toBe(404);
  });
});

describe.skipIf(noCurl)("token", () => {
  test("Bearer in any case is accepted, a wrong or missing token is 401 with WWW-Authenticate", async () => {
    for (const scheme of ["Bearer", "bearer", "BEARER", "bEaReR"])
      expect((await curl(["-H", `Authorization: ${scheme} ${TOKEN}`, url(withToken)])).status).toBe(200);
    for (const h of [`Bearer ${TOKEN}x`, `Basic ${TOKEN}`, "Bearer", `Bearer  ${TOKEN} extra`, ""]) {
      const r = await curl(["-H", `Authorization: ${h}`, url(withToken)]);
      expect(r.status).toBe(401);
      expect(r.headers).toContain('www-authenticate: bearer realm="mta"');
    }
    expect((await curl([url(withToken, "/metrics")])).status).toBe(401);
    expect((await curl([url(withToken, "/healthz")])).status).toBe(200);
  });

  test("bearerMatches compares whole tokens only", async () => {
    expect(bearerMatches(`Bearer ${TOKEN}`, TOKEN)).toBe(true);
    expect(bearerMatches(`Bearer ${TOKEN.slice(0, -1)}`, TOKEN)).toBe(false);
    expect(bearerMatches(`Bearer ${TOKEN}${TOKEN}`, TOKEN)).toBe(false);
    expect(bearerMatches(null, TOKEN)).toBe(false);
  });

  test("without a token, /api/ over TCP is 403 and the control socket (mode 0600) serves it", async () => {
    const tcp = await curl([url(noToken)]);
    expect(tcp.status).toBe(403);
    expect(tcp.body).toContain("control socket");
    expect((await curl([url(noToken, "/metrics")])).status).toBe(200);
    const sock = noToken.socketPath!;
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    const before = calls;
    const r = await curl(["--unix-socket", sock, ...json, "-d", "{}", "http://localhost/api/v1/thing"]);
    expect(r.status).toBe(200);
    expect(calls).toBe(before + 1);
    // Host is not checked on the socket (no browser reaches it), the content type still is.
    expect(
      (await curl(["--unix-socket", sock, "-H", "Host: evil.test", "http://x/api/v1/thing"])).status,
    ).toBe(200);
    expect((await curl(["--unix-socket", sock, "-d", "{}", "http://localhost/api/v1/thing"])).status).toBe(
      415,
    );
  });

  test("draining: new state changes get 503, reads still answer", async () => {
    const s = startControlServer({
      host: "127.0.0.1",
      port: 0,
      token: TOKEN,
      log: silentLogger(),
      metrics: new Metrics(),
      routes,
    });
    s.drain();
    expect((await curl([...auth, ...json, "-d", "{}", url(s)])).status).toBe(503);
    expect((await curl([...auth, url(s)])).status).toBe(200);
    await s.stop();
  });
});
