/**
 * Several `mta serve` nodes (dist/mta) against one real redis-server: registration, /healthz when
 * Redis fails and returns, operator suspensions on every node, the fleet summary, and the command
 * line's edges for the cluster commands.
 */
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { api, clusterConfig, healthz, inject, metricsText, startNodes, until } from "../support/cluster.ts";
import { deliveryLog, runMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { startRedis } from "../support/redis.ts";
import { selfSignedCert } from "../listener/_harness.ts";
import { freePort, startSink } from "../support/sink.ts";

const env = { MTA_LOOPBACK_ONLY: "1" };

test("a node started while Redis is down delivers, says degraded, and is shared once Redis is up", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  await redis.kill();
  await using sink = await startSink({ dir: dir.path });
  await using mta = await startMta({
    dir: dir.path,
    config: clusterConfig(dir.path, redis.url, "solo", {
      extra: `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" } }`,
    }),
    env,
  });
  const h = await healthz(mta);
  expect(h.status).toBe(200);
  expect(h.json).toMatchObject({ status: "degraded", cluster: { mode: "local", node: "solo" } });
  expect(mta.logLines().some((l) => l.msg === "mta 0.1.0 started" && l.cluster === "solo (local)")).toBe(
    true,
  );
  // No attempt waits for Redis: mail flows at this node's share.
  await inject(mta, 3, (i) => `r${i}@example.net`);
  await sink.waitFor(3);
  const metrics = await metricsText(mta);
  expect(metrics).toMatch(/^mta_cluster_redis_up 0$/m);
  expect(metrics).toMatch(/^mta_cluster_mode\{mode="local"\} 1$/m);

  await redis.start();
  await until(async () => ((await healthz(mta)).json.status === "ok" ? true : undefined), 10_000);
  await until(async () =>
    (await api(mta, "GET", "/api/v1/cluster/nodes")).json.mode === "shared" ? 1 : undefined,
  );
  const nodes = await api<{ mode: string; nodes: { name: string; control: string }[] }>(
    mta,
    "GET",
    "/api/v1/cluster/nodes",
  );
  expect(nodes.json.nodes.map((n) => [n.name, n.control])).toEqual([
    ["solo", `127.0.0.1:${mta.controlPort}`],
  ]);
  expect(redis.cli("EXISTS", "mta:node:solo")).toBe("1");
  // A graceful stop leaves the registry at once.
  expect(await mta.stop()).toBe(0);
  expect(redis.cli("EXISTS", "mta:node:solo")).toBe("0");
}, 30_000);

test("Redis lost mid-run: /healthz degraded and the metric say so; back to ok when Redis returns", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  const [a, b] = await startNodes(dir.path, redis.url, 2);
  try {
    for (const n of [a!, b!])
      await until(async () =>
        (await api(n, "GET", "/api/v1/cluster/nodes")).json.nodesAlive === 2 ? 1 : undefined,
      );
    expect((await healthz(a!)).json.status).toBe("ok");
    await redis.kill();
    for (const n of [a!, b!]) {
      await until(async () => ((await healthz(n)).json.status === "degraded" ? 1 : undefined), 5000);
      const h = await healthz(n);
      expect(h.status).toBe(200);
      expect(h.json.cluster).toMatchObject({ mode: "local", nodesAlive: 2 });
    }
    expect(a!.logLines().some((l) => l.msg === "cluster degraded: each limit is this node's share")).toBe(
      true,
    );
    await redis.start();
    for (const n of [a!, b!])
      await until(async () => ((await healthz(n)).json.status === "ok" ? 1 : undefined));
  } finally {
    await Promise.all([a!.stop(), b!.stop()]);
  }
}, 30_000);

test("an operator suspension on one node holds the destination's mail on every node until resumed", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  await using sink = await startSink({ dir: dir.path });
  const nodes = await startNodes(dir.path, redis.url, 3, {
    extra: `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" } }`,
  });
  const [a, b, c] = nodes;
  try {
    const t0 = performance.now();
    const r = runMta(["queue", "suspend", "example.net", "--reason", "maintenance", "-c", a!.configFile]);
    expect(r.code).toBe(0);
    // Every other node shows it held, within 1 s.
    for (const n of [b!, c!])
      await until(async () => {
        const s = await api<{ destinations: { destination: string; state: string; reason: string }[] }>(
          n,
          "GET",
          "/api/v1/queue/summary",
        );
        // Nothing queued yet: the row is the route's next hop, the site example.net's mail queues under.
        const hop = `127.0.0.1:${sink.port}`;
        const row = s.json.destinations.find((d) => d.destination === "example.net" || d.destination === hop);
        return row?.state === "suspended" ? row : undefined;
      }, 1000);
    console.log(`operator suspension on every node after ${Math.round(performance.now() - t0)} ms`);
    // Mail given to B and C waits.
    await inject(b!, 5, (i) => `b${i}@example.net`);
    await inject(c!, 5, (i) => `c${i}@example.net`);
    await Bun.sleep(500);
    expect(sink.dumps().length).toBe(0);
    const s = runMta(["queue", "summary", "-c", c!.configFile]);
    expect(s.stdout).toMatch(
      /example\.net\s+5\s+5 .*suspended (via \S+ )?\(maintenance \(from node node-a\)\)/,
    );
    // Resumed on C (not where it was suspended): every node delivers.
    expect(runMta(["queue", "resume", "example.net", "-c", c!.configFile]).code).toBe(0);
    await sink.waitFor(10);
    expect(b!.logLines().some((l) => l.msg === "resumption from another node")).toBe(true);
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
  }
}, 30_000);

test("summary --cluster merges every node's queue and marks a node that does not answer", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  const nodes = await startNodes(dir.path, redis.url, 3, {
    lease: "10s",
    timeout: "1s",
    // Nothing reaches example.net: the mail stays queued.
    extra: 'delivery: { routes: { example.net: "127.0.0.1:9" } }',
  });
  const [a, b, c] = nodes;
  try {
    await until(async () =>
      (await api(a!, "GET", "/api/v1/cluster/nodes")).json.nodesAlive === 3 ? 1 : undefined,
    );
    await inject(a!, 2, (i) => `a${i}@example.net`);
    await inject(b!, 3, (i) => `b${i}@example.net`);
    await inject(c!, 4, (i) => `c${i}@example.org`);
    const r = runMta(["queue", "summary", "--cluster", "--json", "-c", a!.configFile]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.totals).toMatchObject({ destinations: 2, messages: 9, recipients: 9 });
    expect(s.unanswered).toEqual([]);
    expect(s.nodes.map((n: { name: string; ok: boolean }) => [n.name, n.ok])).toEqual([
      ["node-a", true],
      ["node-b", true],
      ["node-c", true],
    ]);
    const net = s.destinations.find((d: { destination: string }) => d.destination === "example.net");
    expect(net).toMatchObject({ messages: 5, nodes: ["node-a", "node-b"] });
    // C stops answering (SIGSTOP) but is still registered for its lease period.
    c!.proc.kill("SIGSTOP");
    try {
      const t = runMta(["queue", "summary", "--cluster", "-c", b!.configFile]);
      expect(t.code).toBe(0);
      expect(t.stdout).toMatch(/^node-c\s+127\.0\.0\.1:\d+\s+-\s+-\s+-\s+-\s+did not answer: /m);
      expect(t.stdout).toMatch(/^TOTAL 1 destination\(s\)\s+5\s+5 /m);
      expect(t.stdout).toContain("(1 node(s) did not answer; their mail is not counted: node-c)");
    } finally {
      c!.proc.kill("SIGCONT");
    }
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
  }
}, 30_000);

test("the cluster commands at their edges: one line, the right exit code", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  const [a] = await startNodes(dir.path, redis.url, 1);
  try {
    const cfg = a!.configFile;
    const cases: [string[], number, RegExp][] = [
      [["queue", "transfer", "-c", cfg], 64, /^mta: queue transfer: missing option --to /],
      [["queue", "transfer", "--to", "-c", cfg], 64, /^mta: queue transfer: /],
      [["queue", "transfer", "--to", "node-b", "--bogus", "-c", cfg], 64, /unknown option --bogus/],
      [["queue", "transfer", "--to", "node-b", "extra", "-c", cfg], 64, /^mta: queue transfer: /],
      [["queue", "drain", "-c", cfg], 64, /^mta: queue drain: missing option --to /],
      [
        ["queue", "drain", "--to", "node-a", "-c", cfg],
        64,
        /node-a is this node: a node cannot transfer to itself/,
      ],
      [
        ["queue", "transfer", "--to", "node-a", "-c", cfg],
        64,
        /^mta: node-a is this node: a node cannot transfer to itself$/,
      ],
      [
        ["queue", "transfer", "--to", "node-z", "-c", cfg],
        69,
        /^mta: no live node named node-z \(alive: node-a\)$/,
      ],
      [["queue", "transfer", "--to", "node-z", "--local", "-c", cfg], 64, /cannot go with --local/],
      [["queue", "transfer", "--to", "node-z", "--state", "odd", "-c", cfg], 64, /--state must be one of/],
      [["queue", "summary", "--cluster", "--local", "-c", cfg], 64, /cannot go with --local/],
    ];
    for (const [args, code, err] of cases) {
      const r = runMta(args);
      expect({ args, code: r.code }).toEqual({ args, code });
      expect(r.stderr.trim()).toMatch(err);
      expect(r.stderr).not.toContain("    at ");
    }
    // The same node name a second time: refused at start with a config error.
    const twin = join(dir.path, "twin");
    await Bun.write(join(twin, ".keep"), "");
    writeFileSync(join(twin, "mta.yaml"), clusterConfig(twin, redis.url, "node-a"));
    const r = runMta(["serve", "-c", join(twin, "mta.yaml")], { env });
    expect(r.code).toBe(78);
    expect(r.stderr.trim().split("\n").at(-1)).toMatch(
      /^mta: cluster: node name "node-a" is in use by another running node \(control 127\.0\.0\.1:\d+, started /,
    );
  } finally {
    await a!.stop();
  }
}, 30_000);

test("without a cluster section the cluster commands say so; without a daemon they need one", async () => {
  using dir = tempDir();
  await using mta = await startMta({
    dir: dir.path,
    config: testConfig(dir.path).replace(
      "control: { address: 127.0.0.1:0 }",
      `control: { address: 127.0.0.1:${freePort()} }`,
    ),
  });
  for (const args of [
    ["queue", "transfer", "--to", "x"],
    ["queue", "summary", "--cluster"],
  ]) {
    const r = runMta([...args, "-c", mta.configFile]);
    expect(r.code).toBe(64);
    expect(r.stderr.trim()).toBe(
      "mta: this node is not part of a cluster (its configuration has no cluster: section)",
    );
  }
  await mta.stop();
  const r = runMta(["queue", "transfer", "--to", "x", "-c", mta.configFile]);
  expect(r.code).toBe(69);
  expect(r.stderr).toMatch(/^mta: transfer needs a running daemon/);
}, 30_000);

test("serve and check-config refuse a Redis outside loopback under MTA_LOOPBACK_ONLY, and unreadable cluster files", () => {
  using dir = tempDir();
  const cfg = join(dir.path, "mta.yaml");
  writeFileSync(join(dir.path, "empty.password"), "\n");
  writeFileSync(join(dir.path, "ca.pem"), "not a certificate\n");
  writeFileSync(
    cfg,
    clusterConfig(dir.path, "redis://192.0.2.1:6379", "x", {
      cluster: [`  password_file: ${dir.path}/empty.password`, "  tls:", `    ca: ${dir.path}/ca.pem`].join(
        "\n",
      ),
    }),
  );
  for (const args of [["serve"], ["check-config"]]) {
    const r = runMta([...args, "-c", cfg], { env });
    expect({ args, code: r.code }).toEqual({ args, code: 78 });
    const lines = r.stderr.trim().split("\n");
    expect(lines[0]).toBe(`mta: configuration error in ${cfg}: 3 problems`);
    expect(
      lines
        .slice(1)
        .map((l) => l.replace(/^\s*\d+:\d+\s+/, ""))
        .sort(),
    ).toEqual([
      `cluster.password_file: ${dir.path}/empty.password: the first line (the password) is empty`,
      "cluster.redis: 192.0.2.1 is not a loopback address, and MTA_LOOPBACK_ONLY=1 allows nothing else",
      expect.stringMatching(new RegExp(`^cluster\\.tls\\.ca: ${dir.path}/ca\\.pem: not a PEM certificate`)),
    ]);
  }
  writeFileSync(
    cfg,
    clusterConfig(dir.path, "redis://127.0.0.1:6379", "x", { cluster: `  password_file: ${dir.path}/nope` }),
  );
  const r = runMta(["serve", "-c", cfg], { env });
  expect(r.code).toBe(78);
  expect(r.stderr).toMatch(/cluster\.password_file: cannot read \/.*\/nope: no such file or directory/);
  // A node that never started wrote nothing.
  expect(deliveryLog(dir.path)).toEqual([]);
}, 30_000);

test("Redis over TLS with a password file: the node verifies Redis's certificate against cluster.tls.ca", async () => {
  using dir = tempDir();
  const tls = selfSignedCert();
  using _cleanup = { [Symbol.dispose]: tls.dispose };
  const cert = tls.certFile;
  const key = tls.keyFile;
  await using redis = await startRedis({ password: "s3cret", tls: { certFile: cert, keyFile: key } });
  writeFileSync(join(dir.path, "redis.password"), "s3cret\n", { mode: 0o600 });
  const tlsSection = [
    `  password_file: ${join(dir.path, "redis.password")}`,
    "  tls:",
    `    ca: ${cert}`,
    "    server_name: localhost",
  ].join("\n");
  await using mta = await startMta({
    dir: dir.path,
    config: clusterConfig(dir.path, `rediss://127.0.0.1:${redis.tlsPort}`, "secure", { cluster: tlsSection }),
    env,
  });
  await until(async () => ((await healthz(mta)).json.status === "ok" ? 1 : undefined));
  expect(redis.cli("EXISTS", "mta:node:secure")).toBe("1");
  // The connections are TLS ones, and named after the node.
  const clients = redis
    .cli("CLIENT", "LIST")
    .split("\n")
    .filter((l) => / name=mta:secure /.test(l));
  expect(clients.length).toBe(2);
  await mta.stop();

  // A wrong password: the node starts anyway, degraded, and says why in its log.
  writeFileSync(join(dir.path, "redis.password"), "wrong\n");
  await using bad = await startMta({
    dir: dir.path,
    config: clusterConfig(dir.path, `rediss://127.0.0.1:${redis.tlsPort}`, "secure", { cluster: tlsSection }),
    env,
  });
  expect((await healthz(bad)).json.status).toBe("degraded");
  expect(
    bad
      .logLines()
      .some((l) => l.msg === "cannot reach Redis; retrying" && /password and TLS/.test(String(l.reason))),
  ).toBe(true);
  await bad.stop();

  // The right password but no CA: a self-signed certificate is not trusted.
  writeFileSync(join(dir.path, "redis.password"), "s3cret\n");
  await using untrusted = await startMta({
    dir: dir.path,
    config: clusterConfig(dir.path, `rediss://127.0.0.1:${redis.tlsPort}`, "secure", {
      cluster: `  password_file: ${join(dir.path, "redis.password")}`,
    }),
    env,
  });
  expect((await healthz(untrusted)).json.status).toBe("degraded");
}, 30_000);
