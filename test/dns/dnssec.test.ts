/**
 * TXT and TLSA answers, and the DNSSEC bits, against the scripted DNS server (the real validating
 * resolver is exercised in test/tlspolicy/unbound.test.ts).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";

let dns: DnsServer;
let validating: Resolver;
let plain: Resolver;
const hash = Buffer.alloc(32, 0xab);

beforeAll(async () => {
  dns = await startDnsServer({
    "_mta-sts.sts.test": { txt: ["v=STSv1; id=20240101;"], ttlS: 120 },
    "split.test": { txt: [["v=STSv1; ", "id=abc;"], "other record"] },
    "_25._tcp.mx.signed.test": { tlsa: [{ usage: 3, selector: 1, matchingType: 1, data: hash }], ad: true },
    "_25._tcp.mx.unsigned.test": { tlsa: [{ usage: 3, selector: 1, matchingType: 1, data: hash }] },
    "_25._tcp.none.signed.test": { a: ["127.0.0.9"], ad: true },
    "signed.test": { mx: [{ exchange: "mx.signed.test", preference: 10 }], ad: true },
    "mx.signed.test": { a: ["127.0.0.10"], ad: true },
    "_25._tcp.bogus-ede.test": {
      mode: "bogus",
      ede: 6,
      tlsa: [{ usage: 3, selector: 1, matchingType: 1, data: hash }],
    },
    "_25._tcp.bogus-cd.test": {
      mode: "bogus",
      tlsa: [{ usage: 3, selector: 1, matchingType: 1, data: hash }],
    },
    "_25._tcp.broken.test": { mode: "servfail" },
    "_25._tcp.broken-ede.test": { mode: "servfail", ede: 22 },
    // A chain: signed alias -> alias in an unsigned zone -> signed alias -> the host.
    "a1.signed.test": { cname: "a2.unsigned.test", ad: true },
    "a2.unsigned.test": { cname: "a3.signed.test" },
    "a3.signed.test": { cname: "host.signed.test", ad: true },
    "host.signed.test": { a: ["127.0.0.20"], ad: true },
    "s1.signed.test": { cname: "host.signed.test", ad: true },
    "loop1.test": { cname: "loop2.test" },
    "loop2.test": { cname: "loop1.test" },
  });
  const servers = [{ host: dns.host, port: dns.port }];
  validating = createResolver({ servers, timeoutMs: 300, attempts: 1, dnssec: true });
  plain = createResolver({ servers, timeoutMs: 300, attempts: 1 });
});
afterAll(() => dns.close());

test("a TXT answer gives each record with its character-strings joined, and its TTL", async () => {
  expect(await plain.txt("_mta-sts.sts.test")).toEqual({
    kind: "txt",
    records: ["v=STSv1; id=20240101;"],
    ttlS: 120,
  });
  const split = await plain.txt("split.test");
  expect(split.kind === "txt" && split.records.sort()).toEqual(["other record", "v=STSv1; id=abc;"]);
  expect(await plain.txt("nothing.test")).toEqual({ kind: "nxdomain" });
});

test("a TLSA answer gives usage, selector, matching type and the association data", async () => {
  const r = await plain.tlsa("_25._tcp.mx.unsigned.test");
  expect(r.kind).toBe("tlsa");
  if (r.kind !== "tlsa") return;
  expect(r.records).toHaveLength(1);
  expect(r.records[0]).toMatchObject({ usage: 3, selector: 1, matchingType: 1 });
  expect(Buffer.from(r.records[0]!.data).equals(hash)).toBe(true);
});

test("with dnssec the queries carry DO and AD, and the AD bit of the answer makes it authenticated", async () => {
  const r = await validating.tlsa("_25._tcp.mx.signed.test");
  expect(r).toMatchObject({ kind: "tlsa", authenticated: true });
  const q = dns.queries.find((x) => x.name === "_25._tcp.mx.signed.test");
  expect(q).toMatchObject({ do: true, ad: true, cd: false });
  expect(await validating.mx("signed.test")).toMatchObject({ kind: "mx", authenticated: true });
  expect(await validating.addresses("mx.signed.test", 4)).toMatchObject({ kind: "ok", authenticated: true });
  // An unsigned zone: a real answer, but nobody vouches for it.
  const u = await validating.tlsa("_25._tcp.mx.unsigned.test");
  expect(u.kind).toBe("tlsa");
  expect("authenticated" in u).toBe(false);
  // An authenticated denial: NODATA with AD is proof that there are no TLSA records.
  expect(await validating.tlsa("_25._tcp.none.signed.test")).toEqual({ kind: "nodata", authenticated: true });
});

test("without dnssec the AD bit is neither asked for nor trusted", async () => {
  dns.queries.length = 0;
  const r = await plain.tlsa("_25._tcp.mx.signed.test");
  expect(r.kind).toBe("tlsa");
  expect("authenticated" in r).toBe(false);
  expect(dns.queries[0]).toMatchObject({ do: false, ad: false });
  expect(plain.dnssec).toBe(false);
  expect(validating.dnssec).toBe(true);
});

test("a SERVFAIL the resolver explains as DNSSEC Bogus (EDE 6) is bogus, not a plain servfail", async () => {
  expect(await validating.tlsa("_25._tcp.bogus-ede.test")).toMatchObject({ kind: "error", error: "bogus" });
});

test("a SERVFAIL without an explanation is bogus when the same question with CD gets the records", async () => {
  dns.queries.length = 0;
  expect(await validating.tlsa("_25._tcp.bogus-cd.test")).toMatchObject({ kind: "error", error: "bogus" });
  expect(dns.queries.map((q) => q.cd)).toEqual([false, true]);
});

test("a SERVFAIL that stays a SERVFAIL with CD, or carries a non-DNSSEC EDE, is a plain servfail", async () => {
  expect(await validating.tlsa("_25._tcp.broken.test")).toMatchObject({ kind: "error", error: "servfail" });
  dns.queries.length = 0;
  expect(await validating.tlsa("_25._tcp.broken-ede.test")).toMatchObject({
    kind: "error",
    error: "servfail",
  });
  expect(dns.queries.some((q) => q.cd)).toBe(false);
  // Without dnssec a bogus answer is just what it looks like.
  expect(await plain.tlsa("_25._tcp.bogus-ede.test")).toMatchObject({ kind: "error", error: "servfail" });
});

test("an alias answer names its final owner and each link; a secure chain is authenticated all through", async () => {
  expect(await validating.addresses("s1.signed.test", 4)).toEqual({
    kind: "ok",
    addresses: ["127.0.0.20"],
    ttlS: 300,
    authenticated: true,
    canonicalName: "host.signed.test",
    aliases: [{ owner: "s1.signed.test", target: "host.signed.test", authenticated: true }],
  });
  // Not an alias: no chain is reported.
  const direct = await validating.addresses("host.signed.test", 4);
  expect(direct.kind === "ok" && "canonicalName" in direct).toBe(false);
});

test("an insecure chain: each link is asked about with the CNAME type; after the first insecure link, none is secure", async () => {
  const before = dns.queries.length;
  const r = await validating.addresses("a1.signed.test", 4);
  expect(r).toMatchObject({ kind: "ok", addresses: ["127.0.0.20"], canonicalName: "host.signed.test" });
  expect("authenticated" in r).toBe(false);
  expect(r.kind === "ok" && r.aliases).toEqual([
    { owner: "a1.signed.test", target: "a2.unsigned.test", authenticated: true },
    { owner: "a2.unsigned.test", target: "a3.signed.test", authenticated: false },
    // Signed itself, but reached through an insecure link (RFC 7672 §2.1.3): not asked about.
    { owner: "a3.signed.test", target: "host.signed.test", authenticated: false },
  ]);
  expect(dns.queries.slice(before).map((q) => `${q.type} ${q.name}`)).toEqual([
    "A a1.signed.test",
    "CNAME a1.signed.test",
    "CNAME a2.unsigned.test",
  ]);
  // Without dnssec nothing is asked beyond the question, and no link is authenticated.
  const n = dns.queries.length;
  const p = await plain.addresses("a1.signed.test", 4);
  expect(p.kind === "ok" && p.aliases?.every((l) => !l.authenticated)).toBe(true);
  expect(dns.queries.length - n).toBe(1);
});

test("a CNAME loop ends as no addresses, not a hang", async () => {
  expect(await validating.addresses("loop1.test", 4)).toMatchObject({ kind: "nodata" });
});
