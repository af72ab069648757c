/**
 * Shared limits as a remote site sees them: three `mta serve` nodes (dist/mta) against one real
 * redis-server deliver to one counting sink on loopback, which records every session's opening and
 * closing and every message's arrival by node (its EHLO name).
 *
 * - a site limited to 6 connections and 50 msgs/s cluster-wide, 3,000 messages over three nodes;
 * - kill -9 of the node holding the most slots: the others use them within one lease period;
 * - Redis stopped mid-run: every node at its share (2 connections), degraded; back: shared again;
 * - a 421 4.7.0 "try again later" on one node throttles the site on all three within 1 s;
 * - connections bound to a source address: the limit per (source x site) holds for the fleet.
 */
import { expect, test } from "bun:test";
import { api, healthz, inject, metricsText, startNodes, until } from "../support/cluster.ts";
import { startCountingSink } from "../support/countingSink.ts";
import { tempDir } from "../support/mta.ts";
import { lacking } from "../support/peers.ts";
import { startRedis } from "../support/redis.ts";

const SITE = "limited.test";
const LEASE_MS = 2000;

function siteConfig(port: number, policy: string, delivery = ""): string {
  return `delivery: { routes: { ${SITE}: "127.0.0.1:${port}" }, retry: [1s], ${delivery} domains: { ${SITE}: { ${policy} } } }`;
}

const nodeOf = (client: string) => client.replace(/\.test$/, "");

test.skipIf(lacking("redis-server"))(
  "three nodes, one site of 6 connections and 50 msgs/s: 3,000 messages never exceed 6 sessions, rate within 5%",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    await using sink = await startCountingSink();
    const nodes = await startNodes(dir.path, redis.url, 3, {
      hostnames: true,
      extra: siteConfig(sink.port, "max_connections: 6, message_rate: 50/s"),
    });
    try {
      await Promise.all(nodes.map((m, k) => inject(m, 1000, (i) => `r${k}-${i}@${SITE}`)));
      await sink.waitFor(3000, 150_000);
      const a = sink.arrivals;
      const first = a[0]!.atMs;
      const last = a[a.length - 1]!.atMs;
      // GCRA: a burst of the rate's count, then one every 20 ms.
      const rate = ((a.length - 50) * 1000) / (last - first);
      const max = sink.maxConcurrent();
      const byNode = Object.fromEntries(
        nodes.map((n) => [n.node, a.filter((x) => nodeOf(x.client) === n.node).length]),
      );
      console.log(
        `shared limits: ${a.length} messages in ${((last - first) / 1000).toFixed(1)} s, ` +
          `steady rate ${rate.toFixed(2)}/s (limit 50/s), max sessions ${max} (limit 6), by node ${JSON.stringify(byNode)}`,
      );
      expect(a.length).toBe(3000);
      expect(max).toBeLessThanOrEqual(6);
      expect(max).toBeGreaterThanOrEqual(3);
      expect(Math.abs(rate - 50) / 50).toBeLessThanOrEqual(0.05);
      for (const n of nodes) expect(byNode[n.node]).toBe(1000);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  200_000,
);

test.skipIf(lacking("redis-server"))(
  "kill -9 of the node holding the most slots: the others use them within one lease period",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    // Each message takes 150 ms at the dot: sessions stay busy, every node wants every slot.
    await using sink = await startCountingSink({ dataDelayMs: 150 });
    const nodes = await startNodes(dir.path, redis.url, 3, {
      hostnames: true,
      lease: `${LEASE_MS}ms`,
      extra: siteConfig(sink.port, "max_connections: 6"),
    });
    try {
      await Promise.all(nodes.map((m, k) => inject(m, 400, (i) => `k${k}-${i}@${SITE}`)));
      await until(() => (sink.open() >= 6 ? true : undefined));
      await Bun.sleep(500);
      const open = nodes.map((n) => sink.open(`${n.node}.test`));
      const k = open.indexOf(Math.max(...open));
      const victim = nodes[k]!;
      const others = nodes.filter((n) => n !== victim).map((n) => `${n.node}.test`);
      const held = open[k]!;
      expect(held).toBeGreaterThanOrEqual(1);
      const killedAt = performance.now();
      victim.proc.kill("SIGKILL");
      await victim.proc.exited;
      const backAt = await until(
        () => sink.firstTimeOpen(6, killedAt, (c) => others.includes(c)),
        LEASE_MS * 3,
      );
      const ms = backAt - killedAt;
      console.log(
        `kill -9 of ${victim.node} holding ${held} of 6 slots: the other two hold all 6 after ${ms.toFixed(0)} ms (lease ${LEASE_MS} ms)`,
      );
      // One lease period on a quiet machine (1.6-2.0 s measured); the bound leaves room for a loaded
      // one (timers late on 2 shared cores), where one run in six took 4.3 s.
      expect(ms).toBeLessThanOrEqual(2 * LEASE_MS + 500);
      expect(sink.maxConcurrent()).toBeLessThanOrEqual(6);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  60_000,
);

test.skipIf(lacking("redis-server"))(
  "Redis stopped mid-run: each node delivers at its share (2 of 6), degraded; Redis back: shared, limit held",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    await using sink = await startCountingSink({ dataDelayMs: 100 });
    const nodes = await startNodes(dir.path, redis.url, 3, {
      hostnames: true,
      extra: siteConfig(sink.port, "max_connections: 6", "idle_timeout: 1s,"),
    });
    const allDegraded = () =>
      until(async () => {
        const hs = await Promise.all(nodes.map((n) => healthz(n)));
        return hs.every((h) => h.json.status === "degraded") ? true : undefined;
      }, 5000);
    try {
      await Promise.all(nodes.map((m, k) => inject(m, 600, (i) => `d${k}-${i}@${SITE}`)));
      await until(() => (sink.open() >= 6 ? true : undefined));
      await redis.kill();
      await allDegraded();
      const degradedAt = performance.now();
      for (const n of nodes) {
        const h = await healthz(n);
        expect(h.status).toBe(200);
        expect(h.json.cluster).toMatchObject({ mode: "local", nodesAlive: 3 });
        expect(await metricsText(n)).toMatch(/^mta_cluster_mode\{mode="local"\} 1$/m);
      }
      // Connections beyond the share end after the message in hand; then each node keeps 2.
      await Bun.sleep(3000);
      const from = degradedAt + 1000;
      const to = performance.now();
      const share = nodes.map((n) => sink.maxConcurrent(from, to, (c) => c === `${n.node}.test`));
      const delivered = nodes.map((n) => sink.arrivalsBetween(from, to, `${n.node}.test`).length);
      console.log(
        `Redis down: max sessions per node ${JSON.stringify(share)} (share 2), delivered per node in 2 s ${JSON.stringify(delivered)}`,
      );
      for (const s of share) expect(s).toBeLessThanOrEqual(2);
      for (const d of delivered) expect(d).toBeGreaterThan(0);
      expect(sink.maxConcurrent(from, to)).toBeLessThanOrEqual(6);

      const restartedAt = performance.now();
      await redis.start();
      await until(async () => {
        const rs = await Promise.all(nodes.map((n) => api(n, "GET", "/api/v1/cluster/nodes")));
        return rs.every((r) => r.json.mode === "shared") ? true : undefined;
      }, 10_000);
      for (const n of nodes) expect((await healthz(n)).json.status).toBe("ok");
      await Bun.sleep(1500);
      const after = sink.maxConcurrent(restartedAt, performance.now());
      console.log(`Redis back: max sessions ${after} (limit 6)`);
      expect(after).toBeLessThanOrEqual(6);
      expect(sink.maxConcurrent()).toBeLessThanOrEqual(6);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  90_000,
);

test.skipIf(lacking("redis-server"))(
  "a node that gets mail later: the first gives slots back only after the connections under them closed",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    // Each message takes 150 ms at the dot: a connection given up is still carrying one for a while.
    await using sink = await startCountingSink({ dataDelayMs: 150 });
    const nodes = await startNodes(dir.path, redis.url, 2, {
      hostnames: true,
      extra: siteConfig(sink.port, "max_connections: 6", "idle_timeout: 1s,"),
    });
    try {
      await inject(nodes[0]!, 300, (i) => `f0-${i}@${SITE}`);
      await until(() => (sink.open("node-a.test") >= 6 ? true : undefined));
      const later = performance.now();
      await inject(nodes[1]!, 300, (i) => `f1-${i}@${SITE}`);
      // node-b is refused, node-a falls to its fair part (3 of 6) and gives the others back.
      await until(() => (sink.open("node-b.test") >= 3 ? true : undefined), 15_000);
      await Bun.sleep(1000);
      const max = sink.maxConcurrent(later, performance.now());
      const by = nodes.map((n) => sink.open(`${n.node}.test`));
      console.log(
        `slots moving to a node that came later: max sessions ${max} (limit 6), open now by node ${JSON.stringify(by)}`,
      );
      expect(max).toBeLessThanOrEqual(6);
      expect(sink.maxConcurrent()).toBeLessThanOrEqual(6);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  60_000,
);

test.skipIf(lacking("redis-server"))(
  "a 421 4.7.0 on one node throttles the site on all three within 1 s (measured at the sink)",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    const trigger = `trigger@${SITE}`;
    await using sink = await startCountingSink({
      rcpt: (to) => (to === trigger ? "421 4.7.0 Try again later, closing connection" : undefined),
    });
    const nodes = await startNodes(dir.path, redis.url, 3, {
      hostnames: true,
      extra: siteConfig(sink.port, "max_connections: 6, message_rate: 30/s"),
    });
    try {
      // node-b and node-c first; once the rate's first burst is over, node-a's 20 messages and its
      // trigger behind them (a node's queue is in arrival order): steady traffic from every node.
      await Promise.all(nodes.slice(1).map((m, k) => inject(m, 300, (i) => `t${k + 1}-${i}@${SITE}`)));
      await sink.waitFor(60, 20_000);
      await inject(nodes[0]!, 20, (i) => `t0-${i}@${SITE}`);
      await inject(nodes[0]!, 1, () => trigger, "trigger");
      await inject(nodes[0]!, 200, (i) => `t0-${i + 20}@${SITE}`);
      const refused = await until(() => sink.refusals[0], 20_000);
      const t = refused.atMs;
      expect(nodeOf(refused.client)).toBe("node-a");
      await Bun.sleep(4000);
      const before = nodes.map((n) => sink.arrivalsBetween(t - 1000, t, `${n.node}.test`).length);
      const after = sink.arrivalsBetween(t + 1000, t + 4000);
      console.log(
        `421 on node-a: ${JSON.stringify(before)} messages by node in the second before, ${after.length} in the 3 s ` +
          `from 1 s after (throttle rule: 1 connection, 1/s) by ${JSON.stringify(after.map((x) => nodeOf(x.client)))}`,
      );
      // Every node was sending (30/s between them) before the 421.
      for (const b of before) expect(b).toBeGreaterThanOrEqual(3);
      // One message a second for the whole site (one bucket for every node), plus the bucket of 1.
      expect(after.length).toBeLessThanOrEqual(5);
      // Each other node logged the firing it applied, with the node it came from.
      const lags: number[] = [];
      for (const n of nodes.slice(1)) {
        const line = await until(
          () =>
            n
              .logLines()
              .find((l) => l.msg === "backoff rule fired" && l.node === "node-a" && l.action === "throttle"),
          2000,
        );
        expect(line.destination).toBe(`127.0.0.1:${sink.port}`);
        lags.push(Date.parse(String(line.time)) - refused.wallMs);
      }
      console.log(
        `the firing applied on node-b and node-c ${JSON.stringify(lags)} ms after the 421 left the sink`,
      );
      for (const lag of lags) expect(lag).toBeLessThan(1000);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  60_000,
);

test.skipIf(lacking("redis-server"))(
  "connections bound to a source address: per (source x site) slots, 4 at most from 127.0.0.2 over three nodes",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    await using sink = await startCountingSink({ dataDelayMs: 50 });
    const nodes = await startNodes(dir.path, redis.url, 3, {
      hostnames: true,
      extra: siteConfig(
        sink.port,
        "max_connections: 4",
        "sources: { s2: { address: 127.0.0.2 } }, pools: { default: [s2] },",
      ),
    });
    try {
      await Promise.all(nodes.map((m, k) => inject(m, 100, (i) => `s${k}-${i}@${SITE}`)));
      await until(() => (sink.open() >= 4 ? true : undefined));
      // A source x site lease key is held in Redis while they send.
      const keys = redis.cli("KEYS", "mta:lease:*|src:*");
      await sink.waitFor(300, 60_000);
      const max = sink.maxConcurrent();
      console.log(`bound to 127.0.0.2: max sessions ${max} (limit 4 per source x site); keys ${keys}`);
      expect(keys).toContain(`|src:127.0.0.2`);
      expect(max).toBeLessThanOrEqual(4);
      expect(sink.sessions.every((r) => r.address === "127.0.0.2")).toBe(true);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  },
  90_000,
);
