import { afterAll, beforeAll, expect, test } from "bun:test";
import { createResolver, orderMxHosts, type Resolver, resolveDestination } from "../../src/dns/index.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";

let dns: DnsServer;
let resolver: Resolver;

beforeAll(async () => {
  dns = await startDnsServer({
    "multi.test": {
      mx: [
        { exchange: "b.multi.test", preference: 20 },
        { exchange: "a.multi.test", preference: 10 },
      ],
    },
    "a.multi.test": { a: ["127.0.0.10"], aaaa: ["::1"] },
    "b.multi.test": { a: ["127.0.0.11"] },
    "implicit.test": { a: ["127.0.0.12"] },
    "nullmx.test": { mx: [{ exchange: ".", preference: 0 }] },
    "servfail.test": { mode: "servfail" },
    "brokenmx.test": { mx: [{ exchange: "nowhere.test", preference: 10 }] },
    "flakymx.test": { mx: [{ exchange: "flaky.test", preference: 10 }] },
    "flaky.test": { mode: "servfail" },
  });
  resolver = createResolver({ servers: [{ host: dns.host, port: dns.port }], timeoutMs: 200, attempts: 1 });
});
afterAll(() => dns.close());

test("MX hosts come in preference order, preferred family first; the other family of a host that has one comes on demand", async () => {
  const v4 = await resolveDestination(resolver, "multi.test", { prefer: "ipv4", port: 2525 });
  if (v4.kind !== "hosts") throw new Error("expected hosts");
  expect(v4.hosts).toEqual([
    { name: "a.multi.test", ip: "127.0.0.10", port: 2525, preference: 10 },
    { name: "b.multi.test", ip: "127.0.0.11", port: 2525, preference: 20 },
  ]);
  // No AAAA question was asked yet: it is asked only when none of the IPv4 addresses answers.
  expect(dns.queries.some((q) => q.type === "AAAA" && q.name === "a.multi.test")).toBe(false);
  expect(await v4.more!()).toEqual([{ name: "a.multi.test", ip: "::1", port: 2525, preference: 10 }]);
  // b.multi.test has no AAAA at all: it keeps its MX position with its A address, preferring IPv6.
  const v6 = await resolveDestination(resolver, "multi.test", { prefer: "ipv6" });
  if (v6.kind !== "hosts") throw new Error("expected hosts");
  expect(v6.hosts.map((h) => h.ip)).toEqual(["::1", "127.0.0.11"]);
  expect((await v6.more!()).map((h) => h.ip)).toEqual(["127.0.0.10"]);
  const only4 = await resolveDestination(resolver, "multi.test", { prefer: "ipv6", families: [4] });
  expect(only4).toEqual({
    kind: "hosts",
    hosts: [
      { name: "a.multi.test", ip: "127.0.0.10", port: 25, preference: 10 },
      { name: "b.multi.test", ip: "127.0.0.11", port: 25, preference: 20 },
    ],
  });
});

test("no MX record means the domain itself is the mail exchanger (implicit MX)", async () => {
  const r = await resolveDestination(resolver, "implicit.test", { prefer: "ipv4" });
  if (r.kind !== "hosts") throw new Error("expected hosts");
  expect(r.hosts).toEqual([{ name: "implicit.test", ip: "127.0.0.12", port: 25, preference: 0 }]);
  expect(await r.more!()).toEqual([]);
});

test("NXDOMAIN bounces with 5.1.2 and a null MX with 5.1.10", async () => {
  expect(await resolveDestination(resolver, "missing.test", { prefer: "ipv4" })).toMatchObject({
    kind: "permanent",
    enhanced: "5.1.2",
  });
  expect(await resolveDestination(resolver, "nullmx.test", { prefer: "ipv4" })).toMatchObject({
    kind: "permanent",
    enhanced: "5.1.10",
  });
});

test("SERVFAIL defers; MX hosts without any address bounce unless a lookup failed", async () => {
  expect((await resolveDestination(resolver, "servfail.test", { prefer: "ipv4" })).kind).toBe("transient");
  expect(await resolveDestination(resolver, "brokenmx.test", { prefer: "ipv4" })).toMatchObject({
    kind: "permanent",
    enhanced: "5.4.4",
  });
  expect((await resolveDestination(resolver, "flakymx.test", { prefer: "ipv4" })).kind).toBe("transient");
});

test("an address literal needs no DNS", async () => {
  expect(await resolveDestination(resolver, "[127.0.0.5]", { prefer: "ipv4" })).toEqual({
    kind: "hosts",
    hosts: [{ name: "127.0.0.5", ip: "127.0.0.5", port: 25, preference: 0 }],
  });
  expect(await resolveDestination(resolver, "[IPv6:::1]", { prefer: "ipv4" })).toMatchObject({
    kind: "hosts",
    hosts: [{ ip: "::1" }],
  });
});

test("equal preferences are shuffled, lower preferences always come first", () => {
  const hosts = [
    { id: "c", preference: 20 },
    { id: "a1", preference: 10 },
    { id: "a2", preference: 10 },
    { id: "a3", preference: 10 },
  ];
  const firsts = new Set<string>();
  let seed = 1;
  const random = () => {
    seed = (seed * 16807) % 2147483647;
    return seed / 2147483647;
  };
  for (let i = 0; i < 50; i++) {
    const o = orderMxHosts(hosts, random);
    expect(o[3]!.id).toBe("c");
    firsts.add(o[0]!.id);
  }
  expect(firsts).toEqual(new Set(["a1", "a2", "a3"]));
});
