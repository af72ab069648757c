/**
 * MTA-STS discovery and fetch against a real HTTPS policy host on loopback (test CA) and the scripted
 * DNS server; the cache on disk across instances (a restart).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { ManualClock } from "../../src/lib/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import { StsPolicies } from "../../src/tlspolicy/_stsCache.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";
import { type HttpsServer, startHttpsServer, stsPolicyResponse } from "../support/httpsServer.ts";
import { tempDir } from "../support/mta.ts";
import { createTestCa, selfSignedFor, type TestCa } from "../support/testCa.ts";

const dir = tempDir("mta-sts-");
let ca: TestCa;
let dns: DnsServer;
let resolver: Resolver;
let web: HttpsServer;

beforeAll(async () => {
  ca = createTestCa(dir.path);
  // One certificate for every policy host of the tests (SANs), served on 127.0.0.1.
  const names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"].map((x) => `mta-sts.${x}.test`);
  const cert = ca.issue("mta-sts.a.test", { sans: names });
  web = await startHttpsServer({ cert: cert.chainPem, key: cert.keyPem });
  dns = await startDnsServer(Object.fromEntries(names.map((n) => [n, { a: ["127.0.0.1"] }])));
  resolver = createResolver({ servers: [{ host: dns.host, port: dns.port }], timeoutMs: 500, attempts: 1 });
});
afterAll(async () => {
  await web.stop();
  await dns.close();
  dir[Symbol.dispose]();
});

function policies(
  name: string,
  clock = new ManualClock(Date.now()),
  over: Partial<ConstructorParameters<typeof StsPolicies>[0]> = {},
) {
  const p = new StsPolicies({
    dir: join(dir.path, name),
    resolver,
    https: { resolver, prefer: "ipv4" },
    port: web.port,
    ca: ca.certPem,
    fetchTimeoutMs: 1000,
    maxPolicyBytes: 64 * 1024,
    clock,
    log: silentLogger(),
    ...over,
  });
  p.open();
  return p;
}

function serve(domain: string, respond: () => Response) {
  const previous = web.handler;
  web.handler = (req, log) => (log.host.startsWith(`mta-sts.${domain}`) ? respond() : previous(req, log));
}

test("a domain with a _mta-sts record gets its policy over HTTPS from mta-sts.<domain>", async () => {
  dns.set("_mta-sts.a.test", { txt: ["v=STSv1; id=1;"] });
  serve("a.test", () =>
    stsPolicyResponse({ mode: "enforce", mx: ["mx1.a.test", "*.mx.a.test"], maxAgeS: 86400 }),
  );
  const p = policies("c1");
  const r = await p.lookup("a.test");
  expect(r).toMatchObject({
    kind: "policy",
    id: "1",
    policy: { mode: "enforce", mx: ["mx1.a.test", "*.mx.a.test"], maxAgeS: 86400 },
  });
  const req = web.requests.find((q) => q.host.startsWith("mta-sts.a.test"))!;
  expect(req.path).toBe("/.well-known/mta-sts.txt");
  expect(req.method).toBe("GET");
  // The cached copy: one file, private.
  const files = readdirSync(join(dir.path, "c1"));
  expect(files).toEqual(["a.test.json"]);
  expect(statSync(join(dir.path, "c1", "a.test.json")).mode & 0o777).toBe(0o600);
  p.close();
});

test("no record, or a broken one, is no policy and nothing is fetched", async () => {
  const p = policies("c2");
  expect(await p.lookup("nothing.test")).toMatchObject({ kind: "none" });
  dns.set("_mta-sts.b.test", { txt: ["v=STSv1; id=1", "v=STSv1; id=2"] });
  expect(await p.lookup("b.test")).toMatchObject({ kind: "none" });
  expect(web.requests.some((q) => q.host.startsWith("mta-sts.b.test"))).toBe(false);
  p.close();
});

test("a redirect, a wrong Content-Type, a broken policy or an oversized body is a failed fetch", async () => {
  dns.set("_mta-sts.c.test", { txt: ["v=STSv1; id=1"] });
  const cases: (() => Response)[] = [
    () => new Response("", { status: 301, headers: { Location: "https://mta-sts.c.test/other" } }),
    () =>
      new Response("version: STSv1\nmode: enforce\nmx: a\nmax_age: 1\n", {
        headers: { "Content-Type": "text/html" },
      }),
    () => new Response("version: STSv1\nmode: bogus\n", { headers: { "Content-Type": "text/plain" } }),
    () => new Response("x".repeat(70_000), { headers: { "Content-Type": "text/plain" } }),
  ];
  const expected = [
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-policy-invalid",
    "sts-policy-fetch-error",
  ];
  for (const [i, respond] of cases.entries()) {
    serve("c.test", respond);
    const p = policies(`c3-${i}`, new ManualClock(Date.now()), { retryAfterFailureMs: 0 });
    expect(await p.lookup("c.test")).toMatchObject({ kind: "failed", failure: expected[i] });
    p.close();
  }
});

test("a policy host whose certificate is not trusted or names another host is sts-webpki-invalid", async () => {
  dns.set("_mta-sts.d.test", { txt: ["v=STSv1; id=1"] });
  dns.set("mta-sts.d.test", { a: ["127.0.0.2"] });
  const self = selfSignedFor(dir.path, "mta-sts.d.test");
  await using untrusted = await startHttpsServer({
    cert: self.chainPem,
    key: self.keyPem,
    host: "127.0.0.2",
    handler: () => stsPolicyResponse({ mode: "enforce", mx: ["x"], maxAgeS: 60 }),
  });
  const p = policies("c4", new ManualClock(Date.now()), { port: untrusted.port });
  expect(await p.lookup("d.test")).toMatchObject({ kind: "failed", failure: "sts-webpki-invalid" });
  p.close();
  // Trusted, but for another name.
  dns.set("_mta-sts.e.test", { txt: ["v=STSv1; id=1"] });
  dns.set("mta-sts.e.test", { a: ["127.0.0.3"] });
  const wrong = ca.issue("mta-sts.other.test");
  await using misnamed = await startHttpsServer({
    cert: wrong.chainPem,
    key: wrong.keyPem,
    host: "127.0.0.3",
    handler: () => stsPolicyResponse({ mode: "enforce", mx: ["x"], maxAgeS: 60 }),
  });
  const q = policies("c4b", new ManualClock(Date.now()), { port: misnamed.port });
  const r = await q.lookup("e.test");
  expect(r).toMatchObject({ kind: "failed", failure: "sts-webpki-invalid" });
  expect(r.kind === "failed" && r.detail).toContain("does not name mta-sts.e.test");
  q.close();
});

test("a policy host that does not answer in time fails the fetch within the limit", async () => {
  dns.set("_mta-sts.f.test", { txt: ["v=STSv1; id=1"] });
  serve("f.test", () => new Promise<Response>(() => {}) as unknown as Response);
  const p = policies("c5", new ManualClock(Date.now()), { fetchTimeoutMs: 300 });
  const t0 = performance.now();
  expect(await p.lookup("f.test")).toMatchObject({ kind: "failed", failure: "sts-policy-fetch-error" });
  expect(performance.now() - t0).toBeLessThan(3000);
  p.close();
});

test("the cached policy survives a restart and serves while the policy host is down (and DNS too)", async () => {
  dns.set("_mta-sts.g.test", { txt: ["v=STSv1; id=7"] });
  serve("g.test", () => stsPolicyResponse({ mode: "enforce", mx: ["mx.g.test"], maxAgeS: 3600 }));
  const first = policies("c6");
  expect(await first.lookup("g.test")).toMatchObject({ kind: "policy", id: "7" });
  first.close();
  // "Restart": a new instance over the same directory; the policy host now fails, the record is gone.
  serve("g.test", () => new Response("down", { status: 503 }));
  dns.set("_mta-sts.g.test", undefined);
  const before = web.requests.length;
  const second = policies("c6");
  expect(await second.lookup("g.test")).toMatchObject({
    kind: "policy",
    id: "7",
    policy: { mx: ["mx.g.test"] },
  });
  expect(web.requests.length).toBe(before);
  second.close();
});

test("a new id triggers a fetch; when it fails the cached policy stays in force (RFC 8461 §5.1)", async () => {
  dns.set("_mta-sts.h.test", { txt: ["v=STSv1; id=1"], ttlS: 0 });
  serve("h.test", () => stsPolicyResponse({ mode: "enforce", mx: ["old.h.test"], maxAgeS: 3600 }));
  const p = policies("c7");
  expect(await p.lookup("h.test")).toMatchObject({ kind: "policy", id: "1" });
  dns.set("_mta-sts.h.test", { txt: ["v=STSv1; id=2"], ttlS: 0 });
  serve("h.test", () => new Response("broken", { status: 500 }));
  const asked = web.requests.length;
  expect(await p.lookup("h.test")).toMatchObject({ kind: "policy", id: "1", policy: { mx: ["old.h.test"] } });
  expect(web.requests.length).toBe(asked + 1);
  // Once it can be had, the new policy replaces the old one.
  p.close();
  const q = policies("c7", new ManualClock(Date.now()), { retryAfterFailureMs: 0 });
  serve("h.test", () => stsPolicyResponse({ mode: "testing", mx: ["new.h.test"], maxAgeS: 3600 }));
  expect(await q.lookup("h.test")).toMatchObject({
    kind: "policy",
    id: "2",
    policy: { mode: "testing", mx: ["new.h.test"] },
  });
  q.close();
});

test("an expired cached policy is not used; mode none is cached but applies nothing", async () => {
  const clock = new ManualClock(Date.now());
  dns.set("_mta-sts.i.test", { txt: ["v=STSv1; id=1"] });
  serve("i.test", () => stsPolicyResponse({ mode: "enforce", mx: ["mx.i.test"], maxAgeS: 60 }));
  const p = policies("c8", clock, { retryAfterFailureMs: 0 });
  expect(await p.lookup("i.test")).toMatchObject({ kind: "policy" });
  clock.advance(61_000);
  // Expired: the policy host is asked again, and its failure is not covered by the expired copy.
  serve("i.test", () => new Response("down", { status: 503 }));
  expect(await p.lookup("i.test")).toMatchObject({ kind: "failed", failure: "sts-policy-fetch-error" });
  expect(readdirSync(join(dir.path, "c8"))).toEqual([]);
  dns.set("_mta-sts.i.test", { txt: ["v=STSv1; id=2"] });
  serve(
    "i.test",
    () =>
      new Response("version: STSv1\nmode: none\nmax_age: 600\n", {
        headers: { "Content-Type": "text/plain" },
      }),
  );
  expect(await p.lookup("i.test")).toMatchObject({ kind: "none", detail: "policy mode is none" });
  expect(p.cached("i.test")?.policy.mode).toBe("none");
  p.close();
});

test("a policy in use is fetched again before it expires, without any mail asking (proactive refresh)", async () => {
  dns.set("_mta-sts.j.test", { txt: ["v=STSv1; id=1"], ttlS: 0 });
  serve("j.test", () => stsPolicyResponse({ mode: "enforce", mx: ["mx.j.test"], maxAgeS: 3 }));
  const p = policies("c9", { now: () => Date.now() } as ManualClock);
  const got = await p.lookup("j.test");
  expect(got.kind).toBe("policy");
  const firstFetch = got.kind === "policy" ? got.fetchedMs : 0;
  const count = () => web.requests.filter((q) => q.host.startsWith("mta-sts.j.test")).length;
  expect(count()).toBe(1);
  await p.lookup("j.test"); // in use
  // Half of max_age (1.5 s) later the timer fetches again; the cache now expires 3 s after that.
  for (let i = 0; i < 40 && count() < 2; i++) await Bun.sleep(100);
  expect(count()).toBe(2);
  const cached = p.cached("j.test")!;
  expect(cached.fetchedMs).toBeGreaterThan(firstFetch);
  expect(cached.fetchedMs - firstFetch).toBeLessThan(3000);
  p.close();
});

test("damaged cache files are dropped at start, never trusted: garbage, a forged policy, a file under another name", async () => {
  const { mkdirSync, writeFileSync } = await import("node:fs");
  const d = join(dir.path, "c10");
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "garbage.test.json"), "{not json");
  // A policy file whose lines do not parse (someone edited mode: to nonsense).
  writeFileSync(
    join(d, "forged.test.json"),
    JSON.stringify({
      domain: "forged.test",
      id: "1",
      fetchedMs: Date.now(),
      expiresMs: Date.now() + 1e6,
      policy: { lines: ["version: STSv1", "mode: off"] },
    }),
  );
  // A valid policy stored under the wrong file name.
  writeFileSync(
    join(d, "victim.test.json"),
    JSON.stringify({
      domain: "other.test",
      id: "1",
      fetchedMs: Date.now(),
      expiresMs: Date.now() + 1e6,
      policy: { lines: ["version: STSv1", "mode: enforce", "mx: a.test", "max_age: 100"] },
    }),
  );
  writeFileSync(join(d, ".tmp-left-by-a-crash"), "x");
  const p = new StsPolicies({
    dir: d,
    resolver,
    https: { resolver, prefer: "ipv4" },
    port: web.port,
    fetchTimeoutMs: 500,
    maxPolicyBytes: 65536,
    log: silentLogger(),
  });
  expect(p.open()).toEqual({ loaded: 0, dropped: 3 });
  expect(readdirSync(d)).toEqual([]);
  p.close();
});

test("a policy body that is not UTF-8 is an invalid policy, not a crash", async () => {
  dns.set("_mta-sts.a.test", { txt: ["v=STSv1; id=99;"], ttlS: 0 });
  serve(
    "a.test",
    () =>
      new Response(new Uint8Array([0x76, 0x65, 0xff, 0xfe, 0x0a, 0x80]), {
        headers: { "Content-Type": "text/plain" },
      }),
  );
  const p = policies("c11", new ManualClock(Date.now()), { retryAfterFailureMs: 0 });
  expect(await p.lookup("a.test")).toMatchObject({ kind: "failed", failure: "sts-policy-invalid" });
  p.close();
});

test("a policy sent with chunked transfer coding is read whole", async () => {
  dns.set("_mta-sts.j.test", { txt: ["v=STSv1; id=c1;"], ttlS: 0 });
  const parts = ["version: STSv1\r\n", "mode: testing\r\nmx: ", "mx.j.test\r\nmax_age: 600\r\n"];
  serve("j.test", () => {
    const stream = new ReadableStream({
      async pull(c) {
        const p = parts.shift();
        if (p === undefined) return c.close();
        await Bun.sleep(20);
        c.enqueue(new TextEncoder().encode(p));
      },
    });
    return new Response(stream, { headers: { "Content-Type": "text/plain" } });
  });
  const p = policies("c12");
  expect(await p.lookup("j.test")).toMatchObject({
    kind: "policy",
    id: "c1",
    policy: { mode: "testing", mx: ["mx.j.test"] },
  });
  p.close();
});
