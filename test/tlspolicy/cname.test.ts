/**
 * MX hosts that are CNAME aliases (RFC 7672 §2.2.2, §3.2.2, §8.1) against the scripted DNS server:
 * where the TLSA records are looked for, which names a DANE-TA certificate may carry, the SNI name.
 * The same cases against a real validating resolver are in unbound.test.ts.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { planTls, type TlsPlan } from "../../src/tlspolicy/_plan.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";
import { tempDir } from "../support/mta.ts";
import { createTestCa, type TestCa, tlsaDigest, pemToDer } from "../support/testCa.ts";

const dir = tempDir("mta-cname-");
let dns: DnsServer;
let resolver: Resolver;
let inter: TestCa;

const der = pemToDer;

beforeAll(async () => {
  inter = createTestCa(dir.path).intermediate("CNAME test intermediate");
  const ta = [
    {
      usage: 2,
      selector: 1,
      matchingType: 1,
      data: Buffer.from(tlsaDigest(inter.certPem, 1, 1, dir.path), "hex"),
    },
  ];
  dns = await startDnsServer({
    // A secure alias with its TLSA records at the expanded name.
    "mx-a.signed.test": { cname: "real-a.signed.test", ad: true },
    "real-a.signed.test": { a: ["127.0.0.31"], ad: true },
    "_25._tcp.real-a.signed.test": { tlsa: ta, ad: true },
    // A secure alias with TLSA records only at the original name.
    "mx-b.signed.test": { cname: "real-b.signed.test", ad: true },
    "real-b.signed.test": { a: ["127.0.0.32"], ad: true },
    "_25._tcp.mx-b.signed.test": { tlsa: ta, ad: true },
    // A signed alias into an unsigned zone: the expanded name is not to be trusted.
    "mx-c.signed.test": { cname: "host.unsigned.test", ad: true },
    "host.unsigned.test": { a: ["127.0.0.33"] },
    "_25._tcp.host.unsigned.test": { tlsa: ta },
    "_25._tcp.mx-c.signed.test": { tlsa: ta, ad: true },
    // An alias in an unsigned zone pointing into a signed one: no DANE at all.
    "mx-d.unsigned.test": { cname: "real-d.signed.test" },
    "real-d.signed.test": { a: ["127.0.0.34"], ad: true },
    "_25._tcp.real-d.signed.test": { tlsa: ta, ad: true },
    "_25._tcp.mx-d.unsigned.test": { tlsa: ta, ad: true },
    // A secure alias whose expanded name's TLSA lookup fails: the original name is not tried.
    "mx-e.signed.test": { cname: "real-e.signed.test", ad: true },
    "real-e.signed.test": { a: ["127.0.0.35"], ad: true },
    "_25._tcp.real-e.signed.test": { mode: "bogus", ede: 6 },
    "_25._tcp.mx-e.signed.test": { tlsa: ta, ad: true },
    // A secure alias, the TLSA records at the expanded name unsigned: on to the original name.
    "mx-f.signed.test": { cname: "real-f.signed.test", ad: true },
    "real-f.signed.test": { a: ["127.0.0.36"], ad: true },
    "_25._tcp.real-f.signed.test": { tlsa: ta },
    "_25._tcp.mx-f.signed.test": { tlsa: ta, ad: true },
  });
  resolver = createResolver({
    servers: [{ host: dns.host, port: dns.port }],
    timeoutMs: 300,
    attempts: 1,
    dnssec: true,
  });
});
afterAll(async () => {
  await dns.close();
  dir[Symbol.dispose]();
});

function plan(name: string, ip: string): Promise<TlsPlan> {
  return planTls(
    { domain: "signed.test", hosts: [{ name, ip, port: 25 }], viaMx: true, mode: "auto", verify: false },
    {
      resolver,
      dane: true,
      sts: false,
      stsLookup: async () => ({ kind: "none", detail: "" }),
      now: () => Date.now() + 60_000,
    },
  );
}
/** The TLSA questions asked since `from`, in order. */
const tlsaAsked = (from: number) =>
  dns.queries
    .slice(from)
    .filter((q) => q.type === "TLSA")
    .map((q) => q.name);
const verifyWith = (p: TlsPlan, cn: string, sans?: string[]) =>
  p.hosts[0]!.tls.verify!({ chain: der(inter.issue(cn, sans ? { sans } : {}).chainPem) });

test("secure alias: TLSA at the expanded name first; SNI is that name; either name may be the certificate's", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-a.signed.test", "127.0.0.31");
  expect(tlsaAsked(n)).toEqual(["_25._tcp.real-a.signed.test"]);
  expect(p.hosts[0]!.tls).toMatchObject({
    name: "dane",
    starttls: "require",
    servername: "real-a.signed.test",
  });
  expect(verifyWith(p, "real-a.signed.test")).toMatchObject({ ok: true });
  expect(verifyWith(p, "mx-a.signed.test")).toMatchObject({ ok: true });
  expect(verifyWith(p, "elsewhere.signed.test")).toMatchObject({
    ok: false,
    resultType: "certificate-host-mismatch",
  });
});

test("secure alias without TLSA records at the expanded name: the original name's records are used", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-b.signed.test", "127.0.0.32");
  expect(tlsaAsked(n)).toEqual(["_25._tcp.real-b.signed.test", "_25._tcp.mx-b.signed.test"]);
  expect(p.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "mx-b.signed.test" });
  // The expansion was secure, so both names still identify the server.
  expect(verifyWith(p, "real-b.signed.test")).toMatchObject({ ok: true });
  expect(verifyWith(p, "mx-b.signed.test")).toMatchObject({ ok: true });
});

test("unsigned TLSA records at the expanded name are passed over for the original name's signed ones", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-f.signed.test", "127.0.0.36");
  expect(tlsaAsked(n)).toEqual(["_25._tcp.real-f.signed.test", "_25._tcp.mx-f.signed.test"]);
  expect(p.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "mx-f.signed.test" });
});

test("a signed alias into an unsigned zone: TLSA at the original name only, and only that name identifies the server", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-c.signed.test", "127.0.0.33");
  expect(tlsaAsked(n)).toEqual(["_25._tcp.mx-c.signed.test"]);
  expect(p.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "mx-c.signed.test" });
  expect(verifyWith(p, "mx-c.signed.test")).toMatchObject({ ok: true });
  // The expanded name came from data nobody vouched for: an attacker could have chosen it.
  expect(verifyWith(p, "host.unsigned.test")).toMatchObject({
    ok: false,
    resultType: "certificate-host-mismatch",
  });
});

test("an alias whose own CNAME record is unsigned gets no DANE, whatever its target publishes", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-d.unsigned.test", "127.0.0.34");
  expect(tlsaAsked(n)).toEqual([]);
  expect(p.hosts[0]!.tls.name).toBe("opportunistic");
});

test("a failed TLSA lookup at the expanded name takes the host out; the original name is not tried", async () => {
  const n = dns.queries.length;
  const p = await plan("mx-e.signed.test", "127.0.0.35");
  expect(tlsaAsked(n)).toEqual(["_25._tcp.real-e.signed.test"]);
  expect(p.hosts).toEqual([]);
  expect(p.failures[0]).toMatchObject({ result: "dnssec-invalid", mx: "mx-e.signed.test" });
  expect(p.defer).toMatchObject({ enhanced: "4.7.5", policy: "dane" });
});
