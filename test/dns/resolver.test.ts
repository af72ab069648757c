import fs from "node:fs";
import os from "node:os";
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, type Resolver, readResolvConf } from "../../src/dns/index.ts";
import { ManualClock } from "../../src/lib/index.ts";
import { Metrics } from "../../src/observe/index.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";

let dns: DnsServer;
let clock: ManualClock;
let resolver: Resolver;

beforeAll(async () => {
  dns = await startDnsServer({
    "mx.test": { mx: [{ exchange: "mail.mx.test", preference: 10 }], ttlS: 60 },
    "mail.mx.test": { a: ["127.0.0.2"], aaaa: ["::1"] },
    "nullmx.test": { mx: [{ exchange: ".", preference: 0 }] },
    "nodata.test": { a: ["127.0.0.3"] },
    "servfail.test": { mode: "servfail" },
    "refused.test": { mode: "refused" },
    "silent.test": { mode: "silent" },
    "big.test": {
      truncate: true,
      mx: [
        { exchange: "a.big.test", preference: 10 },
        { exchange: "b.big.test", preference: 20 },
      ],
    },
  });
  clock = new ManualClock();
  resolver = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 200,
    attempts: 1,
    clock,
  });
});
afterAll(() => dns.close());

test("an MX answer gives its hosts, preferences and TTL", async () => {
  const r = await resolver.mx("MX.test.");
  expect(r).toEqual({ kind: "mx", hosts: [{ exchange: "mail.mx.test", preference: 10 }], ttlS: 60 });
});

test("NXDOMAIN, NODATA and null MX are told apart", async () => {
  expect(await resolver.mx("unknown.test")).toEqual({ kind: "nxdomain" });
  expect(await resolver.mx("nodata.test")).toEqual({ kind: "nodata" });
  expect(await resolver.mx("nullmx.test")).toEqual({ kind: "nullmx" });
});

test("SERVFAIL, REFUSED and a silent server are distinct errors", async () => {
  expect(await resolver.mx("servfail.test")).toMatchObject({ kind: "error", error: "servfail" });
  expect(await resolver.mx("refused.test")).toMatchObject({ kind: "error", error: "refused" });
  expect(await resolver.mx("silent.test")).toMatchObject({ kind: "error", error: "timeout" });
});

test("A and AAAA lookups return addresses per family", async () => {
  expect(await resolver.addresses("mail.mx.test", 4)).toEqual({
    kind: "ok",
    addresses: ["127.0.0.2"],
    ttlS: 300,
  });
  expect(await resolver.addresses("mail.mx.test", 6)).toEqual({ kind: "ok", addresses: ["::1"], ttlS: 300 });
  expect(await resolver.addresses("nodata.test", 6)).toEqual({ kind: "nodata" });
});

test("a truncated UDP answer is repeated over TCP", async () => {
  const r = await resolver.mx("big.test");
  expect(r.kind).toBe("mx");
  expect(r.kind === "mx" && r.hosts.length).toBe(2);
  const asked = dns.queries.filter((q) => q.name === "big.test");
  expect(asked.map((q) => q.transport)).toEqual(["udp", "tcp"]);
});

test("answers are cached for their TTL, negative answers for the SOA minimum, errors not at all", async () => {
  const local = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 200,
    attempts: 1,
    clock,
  });
  const count = (name: string) => dns.queries.filter((q) => q.name === name).length;
  dns.set("ttl.test", { mx: [{ exchange: "m.ttl.test", preference: 5 }], ttlS: 10 });
  await local.mx("ttl.test");
  await local.mx("ttl.test");
  expect(count("ttl.test")).toBe(1);
  clock.advance(9_999);
  await local.mx("ttl.test");
  expect(count("ttl.test")).toBe(1);
  clock.advance(2);
  await local.mx("ttl.test");
  expect(count("ttl.test")).toBe(2);

  await local.mx("gone.test");
  await local.mx("gone.test");
  expect(count("gone.test")).toBe(1);
  clock.advance(30_001); // the test server's SOA minimum is 30 s
  await local.mx("gone.test");
  expect(count("gone.test")).toBe(2);

  const before = count("servfail.test");
  await local.mx("servfail.test");
  await local.mx("servfail.test");
  expect(count("servfail.test")).toBe(before + 2);
});

test("concurrent identical questions share one query", async () => {
  const local = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 200,
    attempts: 1,
    clock,
  });
  dns.set("shared.test", { a: ["127.0.0.9"] });
  const results = await Promise.all(Array.from({ length: 20 }, () => local.addresses("shared.test", 4)));
  expect(results.every((r) => r.kind === "ok")).toBe(true);
  expect(dns.queries.filter((q) => q.name === "shared.test").length).toBe(1);
});

test("questions asked in one turn go out together and each gets its own answer", async () => {
  const local = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 2000,
    attempts: 1,
  });
  // 50: well inside both sockets' buffers (the test server reads only after the burst is sent).
  for (let i = 0; i < 50; i++) dns.set(`burst${i}.test`, { a: [`127.0.3.${i}`] });
  const from = dns.queries.length;
  const results = await Promise.all(
    Array.from({ length: 50 }, (_, i) => local.addresses(`burst${i}.test`, 4)),
  );
  expect(results.map((r) => (r.kind === "ok" ? r.addresses[0] : r.kind))).toEqual(
    Array.from({ length: 50 }, (_, i) => `127.0.3.${i}`),
  );
  expect(dns.queries.length - from).toBe(50);
});

test("two questions of one turn never share a query id, even when the random source repeats", async () => {
  const local = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 2000,
    attempts: 1,
  });
  dns.set("same-id-a.test", { a: ["127.0.4.1"] });
  dns.set("same-id-b.test", { a: ["127.0.4.2"] });
  // The first two draws give one id: before the fix both questions took it, the second's waiter
  // replaced the first's, and the first went unanswered until its timeout.
  const random = Math.random;
  const draws = [0.5, 0.5];
  Math.random = () => draws.shift() ?? random();
  const t0 = performance.now();
  let results: Awaited<ReturnType<Resolver["addresses"]>>[];
  try {
    results = await Promise.all([local.addresses("same-id-a.test", 4), local.addresses("same-id-b.test", 4)]);
  } finally {
    Math.random = random;
  }
  expect(results.map((r) => (r.kind === "ok" ? r.addresses[0] : r.kind))).toEqual(["127.0.4.1", "127.0.4.2"]);
  expect(performance.now() - t0).toBeLessThan(1500);
});

test("a silent first server is skipped for the next one, and attempts repeat the round", async () => {
  const silent = await startDnsServer({ "x.test": { mode: "silent" } });
  silent.set("mx.test", { mode: "silent" });
  const local = createResolver({
    servers: [
      { host: silent.host, port: silent.port },
      { host: dns.host, port: dns.port },
    ],
    timeoutMs: 100,
    attempts: 2,
    metrics: new Metrics(),
  });
  expect((await local.mx("mx.test")).kind).toBe("mx");
  const onlySilent = createResolver({
    servers: [{ host: silent.host, port: silent.port }],
    timeoutMs: 50,
    attempts: 3,
  });
  expect(await onlySilent.mx("x.test")).toMatchObject({ kind: "error", error: "timeout" });
  expect(silent.queries.filter((q) => q.name === "x.test").length).toBe(3);
  await silent.close();
});

test("a server whose port is closed (ICMP unreachable) is a timeout, then the next server answers", async () => {
  const closed = await startDnsServer({});
  const port = closed.port;
  await closed.close();
  const r = createResolver({
    servers: [
      { host: "127.0.0.1", port },
      { host: dns.host, port: dns.port },
    ],
    timeoutMs: 100,
    attempts: 1,
  });
  expect((await r.mx("mx.test")).kind).toBe("mx");
  const only = createResolver({ servers: [{ host: "127.0.0.1", port }], timeoutMs: 100, attempts: 2 });
  expect(await only.mx("mx.test")).toMatchObject({ kind: "error", error: "timeout" });
});

test("resolv.conf nameserver lines are read", () => {
  const dir = fs.mkdtempSync(`${os.tmpdir()}/mta-dns-`);
  try {
    fs.writeFileSync(
      `${dir}/resolv.conf`,
      "# c\nnameserver 127.0.0.53\nsearch x\nnameserver ::1\nnameserver bogus\n",
    );
    expect(readResolvConf(`${dir}/resolv.conf`)).toEqual([
      { host: "127.0.0.53", port: 53 },
      { host: "::1", port: 53 },
    ]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
