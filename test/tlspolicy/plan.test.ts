/**
 * The per-host TLS plan against the scripted DNS server (AD bits, bogus answers): the rare cases
 * of RFC 7672 §2.2 and RFC 8461 §4 that a real resolver seldom shows. The MTA-STS lookup is the
 * planner's input here (the cache itself is tested against a real HTTPS host in stsCache.test.ts).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { type PlanInput, planTls, type TlsPlan } from "../../src/tlspolicy/_plan.ts";
import type { StsLookup } from "../../src/tlspolicy/_stsCache.ts";
import { parseStsPolicy } from "../../src/tlspolicy/index.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";
import { tempDir } from "../support/mta.ts";
import { createTestCa, type IssuedCert, tlsaDigest, pemToDer } from "../support/testCa.ts";

const dir = tempDir("mta-plan-");
let dns: DnsServer;
let validating: Resolver;
let plain: Resolver;
let good: IssuedCert;
let other: IssuedCert;

const der = pemToDer;

beforeAll(async () => {
  const ca = createTestCa(dir.path);
  good = ca.issue("mx1.signed.test");
  other = ca.issue("mx1.signed.test");
  const digest = Buffer.from(tlsaDigest(good.certPem, 1, 1, dir.path), "hex");
  const tlsa = (data: Buffer, usage = 3) => ({ usage, selector: 1, matchingType: 1, data });
  dns = await startDnsServer({
    "mx1.signed.test": { a: ["127.0.0.11"], ad: true },
    "_25._tcp.mx1.signed.test": { tlsa: [tlsa(digest)], ad: true },
    "mx2.signed.test": { a: ["127.0.0.12"], ad: true },
    "_25._tcp.mx2.signed.test": { mode: "bogus", ede: 6 },
    "mx3.signed.test": { a: ["127.0.0.13"], ad: true },
    "_25._tcp.mx3.signed.test": {
      tlsa: [{ usage: 1, selector: 1, matchingType: 1, data: digest }],
      ad: true,
    },
    "mx4.signed.test": { a: ["127.0.0.14"], ad: true }, // secure denial of TLSA (no name)
    "mx.unsigned.test": { a: ["127.0.0.21"] },
    "_25._tcp.mx.unsigned.test": { tlsa: [tlsa(digest)] },
    "mx5.signed.test": { a: ["127.0.0.15"], ad: true },
    "_25._tcp.mx5.signed.test": { tlsa: [tlsa(digest)] }, // TLSA in an unsigned child zone
    "mx6.signed.test": { a: ["127.0.0.16"], ad: true },
    "_25._tcp.mx6.signed.test": { mode: "servfail" },
  });
  dns.set("_25._tcp.mx4.signed.test", { ad: true, a: [] });
  const servers = [{ host: dns.host, port: dns.port }];
  validating = createResolver({ servers, timeoutMs: 300, attempts: 1, dnssec: true });
  plain = createResolver({ servers, timeoutMs: 300, attempts: 1 });
});
afterAll(async () => {
  await dns.close();
  dir[Symbol.dispose]();
});

const host = (name: string, ip: string) => ({ name, ip, port: 25 });
const stsPolicy = (mode: string, mx: string[]): StsLookup => {
  const p = parseStsPolicy(
    `version: STSv1\nmode: ${mode}\n${mx.map((m) => `mx: ${m}`).join("\n")}\nmax_age: 86400\n`,
  );
  if ("error" in p) throw new Error(p.error);
  return { kind: "policy", id: "x1", policy: p, fetchedMs: 0, expiresMs: Date.now() + 86_400_000 };
};
function plan(
  input: Partial<PlanInput> & Pick<PlanInput, "hosts">,
  o: { resolver?: Resolver; sts?: StsLookup; dane?: boolean } = {},
): Promise<TlsPlan> {
  return planTls(
    { domain: "signed.test", viaMx: true, mode: "auto", verify: false, ...input },
    {
      resolver: o.resolver ?? validating,
      dane: o.dane ?? true,
      sts: true,
      stsLookup: async () => o.sts ?? { kind: "none", detail: "no record" },
      now: () => Date.now() + 60_000,
    },
  );
}

test("an MX host with authenticated TLSA records gets mandatory TLS verified against them", async () => {
  const p = await plan({ hosts: [host("mx1.signed.test", "127.0.0.11")] });
  expect(p.hosts).toHaveLength(1);
  const tls = p.hosts[0]!.tls;
  expect(tls).toMatchObject({
    name: "dane",
    starttls: "require",
    onVerifyFailure: "defer",
    servername: "mx1.signed.test",
  });
  expect(tls.verify!({ chain: der(good.chainPem) })).toMatchObject({ ok: true });
  expect(tls.verify!({ chain: der(other.chainPem) })).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
  expect(p.hosts[0]!.report).toMatchObject({
    type: "tlsa",
    policyDomain: "signed.test",
    mxHost: ["mx1.signed.test"],
  });
  expect(p.failures).toEqual([]);
});

test("DANE wins over MTA-STS per host: the host with TLSA uses DANE, the others the STS policy", async () => {
  const p = await plan(
    { hosts: [host("mx1.signed.test", "127.0.0.11"), host("mx.unsigned.test", "127.0.0.21")] },
    { sts: stsPolicy("enforce", ["*.signed.test", "mx.unsigned.test"]) },
  );
  expect(p.hosts.map((h) => h.tls.name)).toEqual(["dane", "sts-enforce"]);
});

test("a bogus TLSA answer takes the host out (dnssec-invalid); an unsigned zone falls back to the other policy", async () => {
  const p = await plan(
    { hosts: [host("mx2.signed.test", "127.0.0.12"), host("mx.unsigned.test", "127.0.0.21")] },
    { sts: stsPolicy("testing", ["mx.unsigned.test"]) },
  );
  expect(p.hosts.map((h) => [h.name, h.tls.name])).toEqual([["mx.unsigned.test", "sts-testing"]]);
  expect(p.failures).toEqual([
    expect.objectContaining({
      result: "dnssec-invalid",
      mx: "mx2.signed.test",
      detail: expect.stringContaining("DNSSEC validation failed"),
    }),
  ]);
  // A plain SERVFAIL for the TLSA question takes the host out as well (RFC 7672 §2.2).
  const q = await plan({ hosts: [host("mx6.signed.test", "127.0.0.16")] });
  expect(q.hosts).toEqual([]);
  expect(q.defer).toMatchObject({ enhanced: "4.7.5" });
});

test("only unusable TLSA records: TLS is still mandatory, but no certificate check", async () => {
  const p = await plan({ hosts: [host("mx3.signed.test", "127.0.0.13")] });
  expect(p.hosts[0]!.tls).toMatchObject({ name: "dane", starttls: "require" });
  expect(p.hosts[0]!.tls.verify).toBeUndefined();
});

test("no DANE without authentication: insecure address records, insecure TLSA, or no validating resolver", async () => {
  for (const h of [
    host("mx.unsigned.test", "127.0.0.21"),
    host("mx5.signed.test", "127.0.0.15"),
    host("mx4.signed.test", "127.0.0.14"),
  ]) {
    const p = await plan({ hosts: [h] });
    expect(p.hosts[0]!.tls.name).toBe("opportunistic");
  }
  dns.queries.length = 0;
  const p = await plan({ hosts: [host("mx1.signed.test", "127.0.0.11")] }, { resolver: plain });
  expect(p.hosts[0]!.tls.name).toBe("opportunistic");
  expect(dns.queries.some((q) => q.type === "TLSA")).toBe(false);
});

test("tls: dane defers a destination without usable DANE (dane-required); tls: sts without a policy defers", async () => {
  const p = await plan({ mode: "dane", hosts: [host("mx.unsigned.test", "127.0.0.21")] });
  expect(p.hosts).toEqual([]);
  expect(p.failures[0]).toMatchObject({ result: "dane-required" });
  expect(p.defer?.text).toContain("DANE required");
  const q = await plan({ mode: "sts", hosts: [host("mx1.signed.test", "127.0.0.11")] });
  expect(q.hosts).toEqual([]);
  expect(q.defer?.text).toContain("MTA-STS required");
  // tls: sts enforces a testing policy, and does not look at DANE.
  const r = await plan(
    { mode: "sts", hosts: [host("mx1.signed.test", "127.0.0.11")] },
    { sts: stsPolicy("testing", ["*.signed.test"]) },
  );
  expect(r.hosts[0]!.tls.name).toBe("sts-enforce");
});

test("MTA-STS enforce keeps only matching MX hosts; testing keeps all and reports the mismatch", async () => {
  const hosts = [host("mx.unsigned.test", "127.0.0.21"), host("evil.attacker.test", "127.0.0.66")];
  const e = await plan({ hosts }, { sts: stsPolicy("enforce", ["mx.unsigned.test"]), dane: false });
  expect(e.hosts.map((h) => h.name)).toEqual(["mx.unsigned.test"]);
  expect(e.hosts[0]!.tls).toMatchObject({
    name: "sts-enforce",
    starttls: "require",
    onVerifyFailure: "defer",
  });
  expect(e.failures).toEqual([
    expect.objectContaining({ result: "validation-failure", mx: "evil.attacker.test" }),
  ]);
  const t = await plan({ hosts }, { sts: stsPolicy("testing", ["mx.unsigned.test"]), dane: false });
  expect(t.hosts.map((h) => h.tls.name)).toEqual(["sts-testing", "sts-testing"]);
  expect(t.hosts[0]!.tls).toMatchObject({ starttls: "try", onVerifyFailure: "report" });
  // Under testing the host outside the policy is used; each session with it reports the mismatch.
  expect(t.failures).toEqual([]);
  expect(t.hosts[1]!.tls.verify!({ chain: der(good.chainPem) })).toMatchObject({
    ok: false,
    resultType: "validation-failure",
  });
  // Every MX outside the policy: nothing left under enforce.
  const none = await plan(
    { hosts: [hosts[1]!] },
    { sts: stsPolicy("enforce", ["mx.unsigned.test"]), dane: false },
  );
  expect(none.defer).toMatchObject({ enhanced: "4.7.4" });
});

test("a failed MTA-STS fetch without a cached policy: delivery as without a policy, reported once", async () => {
  const failed: StsLookup = { kind: "failed", failure: "sts-policy-fetch-error", detail: "HTTP 503" };
  const p = await plan(
    { hosts: [host("mx.unsigned.test", "127.0.0.21"), host("mx4.signed.test", "127.0.0.14")] },
    { sts: failed },
  );
  expect(p.hosts.map((h) => h.tls.name)).toEqual(["opportunistic", "opportunistic"]);
  expect(p.failures).toEqual([expect.objectContaining({ result: "sts-policy-fetch-error" })]);
  expect(p.hosts[0]!.report?.type).toBe("sts");
});

test("overrides and exceptions make no lookups: off, opportunistic, required, a static route, TLS-Required: No", async () => {
  const h = [host("mx1.signed.test", "127.0.0.11")];
  for (const [input, name] of [
    [{ mode: "off" as const }, "off"],
    [{ mode: "opportunistic" as const }, "opportunistic"],
    [{ mode: "required" as const, verify: true }, "required"],
    [{ viaMx: false }, "opportunistic"],
    [{ tlsRequiredNo: true }, "opportunistic"],
  ] as const) {
    dns.queries.length = 0;
    const p = await plan({ hosts: h, ...input }, { sts: stsPolicy("enforce", ["nothing.test"]) });
    expect(p.hosts[0]!.tls.name).toBe(name);
    expect(p.hosts[0]!.report).toBeUndefined();
    expect(dns.queries).toEqual([]);
  }
  const req = await plan({ hosts: h, mode: "required", verify: true });
  expect(req.hosts[0]!.tls).toMatchObject({ starttls: "require", onVerifyFailure: "defer" });
  expect(req.hosts[0]!.tls.verify!({ chain: der(good.chainPem) })).toMatchObject({ ok: true });
  expect(
    req.hosts[0]!.tls.verify!({
      chain: der(good.chainPem),
      authorizationError: { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE", message: "x" },
    }),
  ).toMatchObject({
    ok: false,
    resultType: "certificate-not-trusted",
  });
});
