/**
 * The resolver and the planner against a real validating resolver: unbound over zones signed with
 * ldns-signzone, so that "authenticated" and "bogus" come from real DNSSEC validation.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { planTls } from "../../src/tlspolicy/_plan.ts";
import { tempDir } from "../support/mta.ts";
import { breakSignature, startUnbound, type Unbound } from "../support/unbound.ts";

const dir = tempDir("mta-unbound-");
let unbound: Unbound;
let resolver: Resolver;
const hash = "ab".repeat(32);

beforeAll(async () => {
  unbound = await startUnbound(dir.path, [
    {
      name: "signed.test",
      signed: true,
      records: [
        "@ IN MX 10 mx1",
        "mx1 IN A 127.0.0.41",
        `_25._tcp.mx1 IN TLSA 3 1 1 ${hash}`,
        "mx2 IN A 127.0.0.42",
        // CNAME'd MX hosts (RFC 7672 §2.2.2).
        "alias1 IN CNAME real1",
        "real1 IN A 127.0.0.47",
        `_25._tcp.real1 IN TLSA 3 1 1 ${hash}`,
        "alias2 IN CNAME real2",
        "real2 IN A 127.0.0.48",
        `_25._tcp.alias2 IN TLSA 3 1 1 ${hash}`,
        "alias3 IN CNAME mx1.plain.test.",
        `_25._tcp.alias3 IN TLSA 3 1 1 ${hash}`,
      ],
    },
    {
      name: "bogus.test",
      signed: true,
      records: ["@ IN MX 10 mx1", "mx1 IN A 127.0.0.43", `_25._tcp.mx1 IN TLSA 3 1 1 ${hash}`],
      tamper: breakSignature("TLSA"),
    },
    {
      name: "plain.test",
      signed: false,
      records: [
        "@ IN MX 10 mx1",
        "mx1 IN A 127.0.0.44",
        `_25._tcp.mx1 IN TLSA 3 1 1 ${hash}`,
        "alias4 IN CNAME real1.signed.test.",
      ],
    },
  ]);
  resolver = createResolver({
    servers: [{ host: unbound.host, port: unbound.port }],
    timeoutMs: 1000,
    attempts: 1,
    dnssec: true,
  });
}, 30_000);
afterAll(async () => {
  await unbound[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

test("answers from a signed zone are authenticated (AD set by unbound after validating)", async () => {
  expect(await resolver.mx("signed.test")).toMatchObject({
    kind: "mx",
    authenticated: true,
    hosts: [{ exchange: "mx1.signed.test" }],
  });
  expect(await resolver.addresses("mx1.signed.test", 4)).toMatchObject({
    kind: "ok",
    addresses: ["127.0.0.41"],
    authenticated: true,
  });
  const t = await resolver.tlsa("_25._tcp.mx1.signed.test");
  expect(t).toMatchObject({
    kind: "tlsa",
    authenticated: true,
    records: [{ usage: 3, selector: 1, matchingType: 1 }],
  });
  // A signed denial (NSEC) is authenticated too.
  expect(await resolver.tlsa("_25._tcp.mx2.signed.test")).toMatchObject({
    kind: "nxdomain",
    authenticated: true,
  });
});

test("an unsigned zone answers, but not authenticated", async () => {
  const t = await resolver.tlsa("_25._tcp.mx1.plain.test");
  expect(t.kind).toBe("tlsa");
  expect("authenticated" in t).toBe(false);
});

test("a broken signature is bogus (unbound's SERVFAIL with its Extended DNS Error)", async () => {
  expect(await resolver.tlsa("_25._tcp.mx1.bogus.test")).toMatchObject({ kind: "error", error: "bogus" });
  // The rest of the zone still validates.
  expect(await resolver.addresses("mx1.bogus.test", 4)).toMatchObject({ kind: "ok", authenticated: true });
});

test("the planner: DANE for the signed MX, the bogus one taken out, the unsigned one left to other policies", async () => {
  const deps = {
    resolver,
    dane: true,
    sts: false,
    stsLookup: async () => ({ kind: "none" as const, detail: "" }),
    now: Date.now,
  };
  const signed = await planTls(
    {
      domain: "signed.test",
      hosts: [{ name: "mx1.signed.test", ip: "127.0.0.41", port: 25 }],
      viaMx: true,
      mode: "auto",
      verify: false,
    },
    deps,
  );
  expect(signed.hosts[0]!.tls).toMatchObject({ name: "dane", starttls: "require" });
  const bogus = await planTls(
    {
      domain: "bogus.test",
      hosts: [{ name: "mx1.bogus.test", ip: "127.0.0.43", port: 25 }],
      viaMx: true,
      mode: "auto",
      verify: false,
    },
    deps,
  );
  expect(bogus.hosts).toEqual([]);
  expect(bogus.failures[0]).toMatchObject({ result: "dnssec-invalid" });
  const plain = await planTls(
    {
      domain: "plain.test",
      hosts: [{ name: "mx1.plain.test", ip: "127.0.0.44", port: 25 }],
      viaMx: true,
      mode: "auto",
      verify: false,
    },
    deps,
  );
  expect(plain.hosts[0]!.tls.name).toBe("opportunistic");
});

const cnameDeps = () => ({
  resolver,
  dane: true,
  sts: false,
  stsLookup: async () => ({ kind: "none" as const, detail: "" }),
  now: Date.now,
});
const planFor = (name: string, ip: string) =>
  planTls(
    { domain: "signed.test", hosts: [{ name, ip, port: 25 }], viaMx: true, mode: "auto", verify: false },
    cnameDeps(),
  );

test("unbound: a CNAME chain inside the signed zone is authenticated, and its final owner reported", async () => {
  expect(await resolver.addresses("alias1.signed.test", 4)).toMatchObject({
    kind: "ok",
    addresses: ["127.0.0.47"],
    authenticated: true,
    canonicalName: "real1.signed.test",
    aliases: [{ owner: "alias1.signed.test", target: "real1.signed.test", authenticated: true }],
  });
  // Into the unsigned zone: the answer is insecure, the alias's own record is not.
  const r = await resolver.addresses("alias3.signed.test", 4);
  expect(r).toMatchObject({
    kind: "ok",
    addresses: ["127.0.0.44"],
    canonicalName: "mx1.plain.test",
    aliases: [{ owner: "alias3.signed.test", target: "mx1.plain.test", authenticated: true }],
  });
  expect("authenticated" in r).toBe(false);
  // Out of the unsigned zone into the signed one: the first link is insecure.
  expect(await resolver.addresses("alias4.plain.test", 4)).toMatchObject({
    kind: "ok",
    aliases: [{ owner: "alias4.plain.test", target: "real1.signed.test", authenticated: false }],
  });
});

test("unbound: the planner looks for TLSA at the expanded name of a secure alias, then at the original name", async () => {
  // TLSA at the expanded name: it is the TLSA base domain and the SNI name.
  const a = await planFor("alias1.signed.test", "127.0.0.47");
  expect(a.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "real1.signed.test" });
  // None there: the original name's records.
  const b = await planFor("alias2.signed.test", "127.0.0.48");
  expect(b.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "alias2.signed.test" });
  // A signed alias into an unsigned zone: DANE from the original name's records.
  const c = await planFor("alias3.signed.test", "127.0.0.44");
  expect(c.hosts[0]!.tls).toMatchObject({ name: "dane", servername: "alias3.signed.test" });
  // An unsigned alias: no DANE, although its target has signed TLSA records.
  const d = await planFor("alias4.plain.test", "127.0.0.47");
  expect(d.hosts[0]!.tls.name).toBe("opportunistic");
});
