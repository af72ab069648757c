/**
 * The app's side of shaping: configuration keys for sources, pools and MX rollups, the router naming
 * a rollup site, the pools handed to the scheduler, and the X-MTA-Pool header taken out at accept.
 */
import { expect, test } from "bun:test";
import { takePoolHeader } from "../../src/accept/index.ts";
import { egressPools } from "../../src/app/index.ts";
import { hasRollups, mxMatches, policyOf, siteFor } from "../../src/route/index.ts";
import { ConfigError, parseConfigText } from "../../src/config/index.ts";

const YAML = [
  "delivery:",
  "  sources:",
  "    ip2: { address: 127.0.0.2, ehlo: two.mta.test }",
  "    ip3: { address: 127.0.0.3 }",
  "  pools:",
  "    bulk: [{ source: ip2, weight: 3 }, ip3]",
  "  max_ready_per_site: 500",
  "  domains:",
  "    default: { max_connections: 10 }",
  "    gmail: { mx: ['*.google.com', 'ASPMX.example.'], max_connections: 40, pool: bulk }",
  "    own.test: { max_connections: 2 }",
].join("\n");

test("sources, pools, rollups and the ready bound load from YAML into scheduler options", () => {
  const { config } = parseConfigText(YAML, "/x/mta.yaml");
  expect(config.delivery.maxReadyPerSite).toBe(500);
  expect(config.delivery.maxConnectionsPerSource).toBe(20000);
  expect(config.delivery.domains.gmail!.mx).toEqual(["*.google.com", "aspmx.example"]);
  const { pools, defaultPool } = egressPools(config);
  expect(defaultPool).toBe("default");
  expect(pools.bulk).toEqual([
    { source: { name: "ip2", address: "127.0.0.2", ehloName: "two.mta.test" }, weight: 3 },
    { source: { name: "ip3", address: "127.0.0.3" }, weight: 1 },
  ]);
  // Without a pool named "default", every source with weight 1.
  expect(pools.default!.map((m) => [m.source.name, m.weight])).toEqual([
    ["ip2", 1],
    ["ip3", 1],
  ]);
  expect(policyOf(config.delivery.domains, "gmail")).toMatchObject({ maxConnections: 40, pool: "bulk" });
  expect(policyOf(config.delivery.domains, "other.test").pool).toBeUndefined();
  expect(hasRollups(config)).toBe(true);
});

test("a domain whose MX matches a rollup's pattern gets the rollup as its site; its own entry wins", () => {
  const { config } = parseConfigText(YAML, "/x/mta.yaml");
  const domains = config.delivery.domains;
  expect(mxMatches("*.google.com", "ASPMX.L.GOOGLE.COM.")).toBe(true);
  expect(mxMatches("*.google.com", "google.com")).toBe(false);
  expect(mxMatches("*.google.com", "evilgoogle.com")).toBe(false);
  expect(siteFor(domains, "example.net", ["alt1.aspmx.l.google.com"])).toBe("gmail");
  expect(siteFor(domains, "example.org", ["aspmx.example"])).toBe("gmail");
  expect(siteFor(domains, "example.com", ["mx.example.com"])).toBeUndefined();
  expect(siteFor(domains, "own.test", ["aspmx.l.google.com"])).toBeUndefined();
});

test("a pool naming an unknown source, or a policy naming an unknown pool, is a config error", () => {
  const bad = [
    "delivery:",
    "  sources: { ip2: { address: 127.0.0.2 } }",
    "  pools: { p: [ip9] }",
    "  domains: { x.test: { pool: nope } }",
  ].join("\n");
  let problems: string[] = [];
  try {
    parseConfigText(bad, "/x/mta.yaml");
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    problems = err.problems.map((p) => p.message);
  }
  expect(problems.join("\n")).toContain('no source named "ip9"');
  expect(problems.join("\n")).toContain('no pool named "nope"');
});

test("X-MTA-Pool is taken out of the header (folded lines too) and nowhere else", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  const dec = (b: Uint8Array) => new TextDecoder().decode(b);
  const a = takePoolHeader(enc("Subject: a\r\nX-MTA-Pool: bulk\r\nFrom: x\r\n\r\nX-MTA-Pool: body\r\n"));
  expect(a.pool).toBe("bulk");
  expect(dec(a.message)).toBe("Subject: a\r\nFrom: x\r\n\r\nX-MTA-Pool: body\r\n");
  const b = takePoolHeader(enc("x-mta-pool:  vip\r\n  tail\r\nSubject: b\r\n\r\nbody\r\n"));
  expect(b.pool).toBe("vip tail");
  expect(dec(b.message)).toBe("Subject: b\r\n\r\nbody\r\n");
  const c = enc("Subject: c\r\n\r\nX-MTA-Pool: body\r\n");
  expect(takePoolHeader(c)).toEqual({ message: c });
});
