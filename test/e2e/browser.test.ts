/**
 * The real proof that no web page can drive the control API: headless Chromium (Debian's) loads pages
 * that attack a running `mta serve` the way a page the operator visits could.
 *
 * - From another loopback address and port (a cross-site page): `fetch` simple requests (no-cors,
 *   text/plain), a JSON `fetch` that needs a CORS preflight, GETs to POST routes, and form posts
 *   (text/plain JSON smuggling and urlencoded) against delete and inject.
 * - DNS rebinding: the page is loaded from `rebind.test` (Chromium resolves it to loopback), whose port
 *   then hands every later connection to the control API, so the page's own-origin fetches reach mta
 *   with `Host: rebind.test:...`, and the page can even read the answers. It is given the control token,
 *   the worst case of a leaked token: only the Host check stands in the way.
 * The queue must be intact afterwards, and mta's own client (`mta queue`) must still work.
 */
import { expect, test } from "bun:test";
import { spawn } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { CONTROL_TOKEN, runMta, startMta, tempDir, testConfig, withToken } from "../support/mta.ts";
import { lacking, peer } from "../support/peers.ts";
import { sendMessages } from "../support/smtpClient.ts";

const CHROMIUM = peer("chromium") ?? "/usr/bin/chromium";
const noChromium = lacking("chromium");

/**
 * Runs Chromium headless on `url` until `done` settles (the page posts its results to the test's page
 * server), then ends it. The brief's flags, a fresh profile; nothing but loopback is asked for.
 */
async function withChromium<T>(url: string, extraFlags: string[], done: Promise<T>): Promise<T> {
  const profile = mkdtempSync(join("/tmp", "mta-chromium-"));
  const p = spawn(
    [
      CHROMIUM,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-extensions",
      "--no-default-browser-check",
      `--user-data-dir=${profile}`,
      ...extraFlags,
      url,
    ],
    { stdout: "ignore", stderr: "ignore" },
  );
  try {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the page at ${url} did not report within 45 s`)), 45_000);
    });
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    p.kill("SIGKILL");
    await p.exited;
    rmSync(profile, { recursive: true, force: true });
  }
}

function crossSitePage(api: string, report: string): string {
  const del = JSON.stringify({ destination: "example.net", yes: true });
  const inject = JSON.stringify({
    sender: "evil@evil.test",
    recipients: ["victim@example.net"],
    subject: "x",
    text: "x",
  });
  return `<!doctype html><html><body><pre id="out">running</pre>
<iframe name="f1"></iframe><iframe name="f2"></iframe><iframe name="f3"></iframe>
<script>
const api = ${JSON.stringify(api)};
const results = {};
async function attempt(name, run) {
  try { const r = await run(); results[name] = "status " + r.status + " " + r.type; }
  catch (e) { results[name] = "blocked: " + e.name; }
}
function form(target, action, enctype, fields) {
  const f = document.createElement("form");
  f.method = "POST"; f.action = api + action; f.enctype = enctype; f.target = target;
  for (const [k, v] of fields) { const i = document.createElement("input"); i.name = k; i.value = v; f.appendChild(i); }
  document.body.appendChild(f); f.submit();
}
(async () => {
  await attempt("simple-delete", () => fetch(api + "/api/v1/queue/delete", { method: "POST", mode: "no-cors", body: ${JSON.stringify(del)} }));
  await attempt("simple-inject", () => fetch(api + "/api/v1/inject", { method: "POST", mode: "no-cors", body: ${JSON.stringify(inject)} }));
  await attempt("json-delete", () => fetch(api + "/api/v1/queue/delete", { method: "POST", headers: { "content-type": "application/json" }, body: ${JSON.stringify(del)} }));
  await attempt("get-flush", () => fetch(api + "/api/v1/queue/flush", { mode: "no-cors" }));
  form("f1", "/api/v1/queue/delete", "text/plain", [['{"destination":"example.net","yes":true,"x":"', '"}']]);
  form("f2", "/api/v1/inject", "application/x-www-form-urlencoded", [["sender", "evil@evil.test"], ["recipients", "victim@example.net"], ["text", "x"]]);
  form("f3", "/api/v1/queue/delete", "multipart/form-data", [["destination", "example.net"], ["yes", "true"]]);
  await new Promise((r) => setTimeout(r, 2000));
  await fetch(${JSON.stringify(report)}, { method: "POST", body: JSON.stringify(results) });
})();
</script></body></html>`;
}

function rebindPage(token: string, report: string): string {
  const del = JSON.stringify({ destination: "example.net", yes: true });
  return `<!doctype html><html><body><pre id="out">running</pre><script>
const results = {};
const auth = { authorization: "Bearer ${token}" };
async function attempt(name, run) {
  try { const r = await run(); results[name] = r.status + " " + (await r.text()).slice(0, 200); }
  catch (e) { results[name] = "blocked: " + e.name; }
}
(async () => {
  // Later connections to this origin land on the control API: same origin, so the page reads answers.
  await attempt("summary", () => fetch("/api/v1/queue/summary", { headers: auth }));
  await attempt("delete", () => fetch("/api/v1/queue/delete", { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: ${JSON.stringify(del)} }));
  await attempt("inject", () => fetch("/api/v1/inject", { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify({ sender: "evil@evil.test", recipients: ["v@example.net"], subject: "x", text: "x" }) }));
  // Reported elsewhere: this origin's connections now go to mta.
  await fetch(${JSON.stringify(report)}, { method: "POST", mode: "no-cors", body: JSON.stringify(results) });
})();
</script></body></html>`;
}

/**
 * `rebind.test`'s server: the first request gets the page (and the connection is closed); every later
 * connection is piped to the control API, as DNS rebinding would point the name at it.
 */
function rebindServer(page: string, apiPort: number) {
  type Upstream = Awaited<ReturnType<typeof Bun.connect>>;
  let served = false;
  return Bun.listen<{ upstream?: Upstream; pending?: Uint8Array[] }>({
    hostname: "127.0.0.3",
    port: 0,
    socket: {
      open(s) {
        s.data = {};
      },
      data(s, chunk) {
        if (s.data.upstream) return void s.data.upstream.write(chunk);
        if (s.data.pending) return void s.data.pending.push(new Uint8Array(chunk));
        if (!served) {
          served = true;
          const body = Buffer.from(page);
          s.write(
            `HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
          );
          s.write(body);
          s.end();
          return;
        }
        // Any connection's first request after the page, even one Chromium opened early: to mta.
        s.data.pending = [new Uint8Array(chunk)];
        void Bun.connect({
          hostname: "127.0.0.1",
          port: apiPort,
          socket: {
            data(_u, reply) {
              s.write(reply);
            },
            close() {
              s.end();
            },
          },
        }).then((u) => {
          s.data.upstream = u;
          for (const c of s.data.pending ?? []) u.write(c);
          s.data.pending = undefined;
        });
      },
      close(s) {
        s.data.upstream?.end();
      },
    },
  });
}

test.skipIf(noChromium)(
  "a web page in Chromium cannot drive the control API: cross-site requests, forms and DNS rebinding are refused, the queue is intact",
  async () => {
    using dir = tempDir();
    // A token, which the DNS-rebinding page is even given: only the Host check stands in its way.
    const config = withToken(
      testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }"),
    );
    const configFile = join(dir.path, "mta.yaml");
    await using mta = await startMta({ dir: dir.path, config });
    const ids = await sendMessages(mta.smtpPorts[0]!, 5);
    const listIds = () => {
      const r = runMta(["queue", "list", "--json", "-c", configFile]);
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout)
        .messages.map((m: { id: string }) => m.id)
        .sort();
    };
    expect(listIds()).toEqual([...ids].sort());

    const api = `http://127.0.0.1:${mta.controlPort}`;
    const reports = new Map<string, (r: Record<string, string>) => void>();
    const reported = (name: string) =>
      new Promise<Record<string, string>>((resolve) => reports.set(name, resolve));
    let pagesPort = 0;
    const pages = Bun.serve({
      hostname: "127.0.0.2",
      port: 0,
      fetch: async (req): Promise<Response> => {
        const path = new URL(req.url).pathname;
        if (req.method === "POST" && path.startsWith("/results/")) {
          reports.get(path.slice("/results/".length))?.(JSON.parse(await req.text()));
          return new Response("ok", { headers: { "access-control-allow-origin": "*" } });
        }
        return new Response(crossSitePage(api, `http://127.0.0.2:${pagesPort}/results/cross`), {
          headers: { "content-type": "text/html" },
        });
      },
    });
    pagesPort = pages.port ?? 0;
    const rebind = rebindServer(
      rebindPage(CONTROL_TOKEN, `http://127.0.0.2:${pages.port}/results/rebind`),
      mta.controlPort,
    );
    try {
      const cross = await withChromium(`http://127.0.0.2:${pages.port}/attack.html`, [], reported("cross"));
      // What the page can see: opaque answers, and a preflight that failed (the POST was never sent).
      expect(cross["json-delete"]).toBe("blocked: TypeError");
      for (const k of ["simple-delete", "simple-inject", "get-flush"])
        expect(cross[k]).toBe("status 0 opaque");

      const reb = await withChromium(
        `http://rebind.test:${rebind.port}/`,
        ["--host-resolver-rules=MAP rebind.test 127.0.0.3"],
        reported("rebind"),
      );
      for (const k of ["summary", "delete", "inject"]) {
        expect(reb[k]).toStartWith("403 ");
        expect(reb[k]).toContain(`Host \\"rebind.test:${rebind.port}\\" is not this control API's address`);
      }

      // What mta saw: each attack arrived and was refused, for the reason that applies.
      const refused = mta.logLines().filter((l) => l.msg === "control API request refused");
      const why = (path: string, method: string) =>
        refused.filter((l) => l.path === path && l.method === method).map((l) => `${l.status} ${l.reason}`);
      expect(why("/api/v1/queue/delete", "POST").filter((r) => r.includes("cross-origin")).length).toBe(3);
      expect(why("/api/v1/inject", "POST").filter((r) => r.includes("cross-origin")).length).toBe(2);
      expect(why("/api/v1/queue/delete", "OPTIONS")).toEqual([
        expect.stringContaining("403 forbidden: a request from the web page"),
      ]);
      expect(why("/api/v1/queue/flush", "GET").length).toBe(1);
      expect(why("/api/v1/queue/summary", "GET")).toEqual([expect.stringContaining("403 forbidden: Host")]);
    } finally {
      await pages.stop(true);
      rebind.stop(true);
    }

    // Intact: every message still queued, nothing injected.
    expect(listIds()).toEqual([...ids].sort());
    // And mta's own client still drives the queue (through the control socket).
    const del = runMta(["queue", "delete", "--destination", "example.net", "--yes", "-c", configFile]);
    expect(del.code).toBe(0);
    expect(del.stdout).toContain("5 of 5 message(s) deleted");
  },
  120_000,
);

test.skipIf(noChromium)(
  "with the default configuration (no control.token) the same cross-site page deletes and injects nothing",
  async () => {
    using dir = tempDir();
    const config = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }");
    expect(config).not.toContain("token");
    const configFile = join(dir.path, "mta.yaml");
    await using mta = await startMta({ dir: dir.path, config });
    const ids = await sendMessages(mta.smtpPorts[0]!, 6);
    let report: (r: Record<string, string>) => void = () => {};
    const reported = new Promise<Record<string, string>>((r) => {
      report = r;
    });
    let port = 0;
    const pages = Bun.serve({
      hostname: "127.0.0.2",
      port: 0,
      fetch: async (req): Promise<Response> => {
        if (req.method === "POST") {
          report(JSON.parse(await req.text()));
          return new Response("ok");
        }
        const api = `http://127.0.0.1:${mta.controlPort}`;
        return new Response(crossSitePage(api, `http://127.0.0.2:${port}/results/cross`), {
          headers: { "content-type": "text/html" },
        });
      },
    });
    port = pages.port ?? 0;
    try {
      await withChromium(`http://127.0.0.2:${port}/`, [], reported);
    } finally {
      await pages.stop(true);
    }
    const r = runMta(["queue", "list", "--json", "-c", configFile]);
    expect(
      JSON.parse(r.stdout)
        .messages.map((m: { id: string }) => m.id)
        .sort(),
    ).toEqual([...ids].sort());
    const refused = mta.logLines().filter((l) => l.msg === "control API request refused");
    expect(refused.filter((l) => l.path === "/api/v1/queue/delete").length).toBeGreaterThanOrEqual(4);
  },
  120_000,
);
