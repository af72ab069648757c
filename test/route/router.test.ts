/**
 * The routing step: sites (queue keys) from static routes, MX and rollups; policies per site; reload.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { parseConfigText } from "../../src/config/index.ts";
import { createResolver } from "../../src/dns/index.ts";
import { Router } from "../../src/route/index.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";

let dns: DnsServer;
beforeAll(async () => {
  dns = await startDnsServer({
    "a.test": { mx: [{ exchange: "mx1.bigmail.test", preference: 10 }] },
    "b.test": { mx: [{ exchange: "mx2.bigmail.test", preference: 10 }] },
    "c.test": { mx: [{ exchange: "mx.c.test", preference: 10 }] },
    "mx1.bigmail.test": { a: ["127.0.0.21"] },
    "mx2.bigmail.test": { a: ["127.0.0.22"] },
    "mx.c.test": { a: ["127.0.0.23"] },
    "relay.test": { a: ["127.0.0.30"] },
  });
});
afterAll(() => dns.close());

function router(yaml: string): Router {
  const { config } = parseConfigText(
    `dns: { servers: ["127.0.0.1:${dns.port}"], timeout: 1s }\n${yaml}`,
    "/x/mta.yaml",
  );
  return new Router(
    config,
    createResolver({ servers: [{ host: "127.0.0.1", port: dns.port }], timeoutMs: 1000, attempts: 1 }),
  );
}

test("a static route's next hop is the site of every domain it carries, known without a lookup", async () => {
  const r = router(
    [
      "delivery:",
      '  routes: { "*": "relay.test:2525", example.net: ["127.0.0.9:25", "127.0.0.10:25"], other.net: "relay.test:2525" }',
      "  domains:",
      "    example.net: { max_connections: 3 }",
      '    "relay.test:2525": { max_connections: 7 }',
    ].join("\n"),
  );
  expect(r.siteOf("x.test")).toBe("relay.test:2525");
  expect(r.siteOf("other.net")).toBe("relay.test:2525");
  expect(r.siteOf("sub.example.net")).toBe("127.0.0.9:25,127.0.0.10:25");
  expect(await r.route("x.test")).toEqual({
    kind: "hosts",
    site: "relay.test:2525",
    hosts: [{ name: "relay.test", ip: "127.0.0.30", port: 2525 }],
  });
  // The hop's own entry, else the entry of the route's key, else default.
  expect(r.policyOf("relay.test:2525").maxConnections).toBe(7);
  expect(r.policyOf("127.0.0.9:25,127.0.0.10:25").maxConnections).toBe(3);
  expect(r.policyOf("c.test").maxConnections).toBe(20);
});

test("with rollups a domain's site is learned from its MX, and a reload forgets it", async () => {
  const yaml = (mx: string) => `delivery: { domains: { bigmail: { mx: ["${mx}"], max_connections: 2 } } }`;
  const r = router(yaml("*.bigmail.test"));
  expect(r.rollups).toBe(true);
  expect(r.siteOf("a.test")).toBeUndefined();
  expect((await r.route("a.test")).site).toBe("bigmail");
  expect((await r.route("b.test")).site).toBe("bigmail");
  expect((await r.route("c.test")).site).toBe("c.test");
  expect(r.siteOf("a.test")).toBe("bigmail");
  expect(r.policyOf("bigmail").maxConnections).toBe(2);
  const v = r.version;
  const { config } = parseConfigText(yaml("mx1.bigmail.test"), "/x/mta.yaml");
  r.reload(config);
  expect(r.version).toBe(v + 1);
  expect(r.siteOf("a.test")).toBeUndefined();
  expect((await r.route("b.test")).site).toBe("b.test");
});

test("without rollups or routes a domain is its own site; DNS trouble keeps it there", async () => {
  const r = router("");
  expect(r.siteOf("c.test")).toBe("c.test");
  expect(await r.route("nowhere.test")).toMatchObject({
    kind: "permanent",
    site: "nowhere.test",
    enhanced: "5.1.2",
  });
});

test("a new MX destination's MTA-STS question goes out with its MX question, not after the MX host's address", async () => {
  const { TlsPolicies } = await import("../../src/tlspolicy/index.ts");
  const { silentLogger } = await import("../../src/observe/index.ts");
  const { tempDir } = await import("../support/mta.ts");
  using dir = tempDir();
  const resolver = createResolver({
    servers: [{ host: "127.0.0.1", port: dns.port }],
    timeoutMs: 1000,
    attempts: 1,
  });
  const policies = TlsPolicies.open({
    spoolDir: dir.path,
    resolver,
    prefer: "ipv4",
    dane: { enabled: false },
    mtaSts: { enabled: true, port: 443, fetchTimeoutMs: 1000, maxPolicyBytes: 65536 },
    tlsRpt: {
      enabled: false,
      intervalMs: 86_400_000,
      organization: "t",
      contact: "t",
      submitter: "t",
      from: "t@t",
      submitMail: async () => {},
    },
    log: silentLogger(),
  });
  try {
    const { config } = parseConfigText(`dns: { servers: ["127.0.0.1:${dns.port}"] }`, "/x/mta.yaml");
    const r = new Router(config, resolver, policies);
    const from = dns.queries.length;
    const d = await r.route("c.test", { tls: { requiredNo: false } });
    expect(d).toMatchObject({ kind: "hosts", hosts: [{ name: "mx.c.test", ip: "127.0.0.23" }] });
    const asked = dns.queries.slice(from).map((q) => `${q.type} ${q.name}`);
    // The TXT is asked once, and before the A question that needed the MX answer first.
    expect(asked.filter((q) => q === "TXT _mta-sts.c.test")).toHaveLength(1);
    expect(asked.indexOf("TXT _mta-sts.c.test")).toBeLessThan(asked.indexOf("A mx.c.test"));
    expect(asked.indexOf("MX c.test")).toBeLessThan(asked.indexOf("A mx.c.test"));
    // `tls: opportunistic` plans nothing from DNS: no MTA-STS question at all.
    const { config: opp } = parseConfigText(
      `dns: { servers: ["127.0.0.1:${dns.port}"] }\ndelivery: { domains: { default: { tls: opportunistic } } }`,
      "/x/mta.yaml",
    );
    const before = dns.queries.length;
    await new Router(
      opp,
      createResolver({ servers: [{ host: "127.0.0.1", port: dns.port }], timeoutMs: 1000, attempts: 1 }),
      policies,
    ).route("a.test", { tls: { requiredNo: false } });
    expect(dns.queries.slice(before).map((q) => q.type)).not.toContain("TXT");
  } finally {
    await policies.close();
  }
});
