import { expect, test } from "bun:test";
import { hostname } from "node:os";
import { ConfigError, parseConfigText } from "../../src/config/index.ts";

function problemsOf(text: string) {
  try {
    parseConfigText(text, "/etc/mta/mta.yaml");
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  throw new Error("expected a ConfigError");
}

test("without a cluster section there is no cluster config at all", () => {
  expect(parseConfigText("", "/etc/mta/mta.yaml").config.cluster).toBeUndefined();
});

test("a cluster section with only the Redis URL gets every default", () => {
  const { config } = parseConfigText("cluster: { redis: redis://127.0.0.1:6379 }", "/etc/mta/mta.yaml");
  expect(config.cluster).toEqual({
    redisUrl: "redis://127.0.0.1:6379",
    node: hostname()
      .replace(/[^A-Za-z0-9._-]/g, "-")
      .slice(0, 63),
    leaseMs: 10_000,
    timeoutMs: 1000,
    keyPrefix: "mta:",
    expectedNodes: 1,
  });
});

test("every cluster key is read, paths relative to the config file", () => {
  const { config } = parseConfigText(
    [
      "cluster:",
      "  redis: rediss://mta@redis.internal:6380/2",
      "  password_file: redis.pass",
      "  tls: { ca: ca.pem, server_name: redis.internal, verify: false }",
      "  node: mta-2",
      "  advertise: 10.0.0.5:8025",
      "  lease: 5s",
      "  timeout: 500ms",
      "  key_prefix: 'fleet1:'",
      "  expected_nodes: 3",
    ].join("\n"),
    "/etc/mta/mta.yaml",
  );
  expect(config.cluster).toEqual({
    redisUrl: "rediss://mta@redis.internal:6380/2",
    passwordFile: "/etc/mta/redis.pass",
    tls: { caFile: "/etc/mta/ca.pem", serverName: "redis.internal", verify: false },
    node: "mta-2",
    advertise: { host: "10.0.0.5", port: 8025 },
    leaseMs: 5000,
    timeoutMs: 500,
    keyPrefix: "fleet1:",
    expectedNodes: 3,
  });
});

test("bad cluster values are reported with their path", () => {
  expect(problemsOf("cluster: {}")[0]).toMatch(/^cluster\.redis: /);
  expect(problemsOf("cluster: { redis: http://x }")).toEqual([
    'cluster.redis: expected redis:// or rediss:// (TLS), got "http://"',
  ]);
  expect(problemsOf("cluster: { redis: 'redis://'}")[0]).toMatch(/^cluster\.redis: expected/);
  expect(problemsOf("cluster: { redis: redis://h/db1 }")[0]).toMatch(/database number/);
  expect(problemsOf("cluster: { redis: redis://h, lease: 90s }")).toEqual([
    'cluster.lease: expected 1s to 30s, got "90s"',
  ]);
  expect(problemsOf("cluster: { redis: redis://h, lease: 3s, timeout: 2s }")[0]).toMatch(
    /^cluster\.timeout: expected 50ms to a third of the lease \(1000 ms\), got "2s"/,
  );
  expect(problemsOf("cluster: { redis: redis://h, node: 'two words' }")[0]).toMatch(
    /^cluster\.node: expected a node name/,
  );
  expect(problemsOf("cluster: { redis: redis://h, expected_nodes: 0 }")[0]).toMatch(
    /^cluster\.expected_nodes/,
  );
  expect(problemsOf("cluster: { redis: redis://h, leese: 5s }")[0]).toMatch(/^cluster\.leese/);
});
