/**
 * Cluster benchmarks against a real redis-server on loopback (started here, its own data dir).
 * Usage: bun bench/cluster.ts [--json] [--trials N] [--count N] [--reps N] [--quick]
 *
 * - End to end, shared vs local: the 100-destination benchmark (generator → one `mta serve` →
 *   smtp-sink, MX answers from unbound or the test DNS server) with and without a `cluster:` section,
 *   runs interleaved in the same process, medians of --reps; Redis round trips and CPU per message.
 * - Limit accuracy: three `mta serve` nodes (dist/mta) sending one site's mail to a counting sink that
 *   records every session and arrival: configured vs observed maximum connections and rate.
 * - Shared state propagation: a rule firing (a throttle hold) set on one node until the two other
 *   nodes applied it (pub/sub), p50 and p99 over N trials.
 * - Dead-node slot recovery: a node in a child process holds every slot of a site and is killed -9;
 *   the time until another node holds them, p50 and p99 over trials, for a 2 s lease (the bound is
 *   one lease period after the dead node's last renewal).
 * - Redis cost: a connection lease acquired and released (what each connection pays), and a GCRA
 *   take (what each message pays when a message rate is set and the rate is low enough that no
 *   reserve is kept), as operations per second with 100 in flight, and the node's CPU per operation.
 * Figures only; never passes or fails. Loopback only.
 */

import { join } from "node:path";
import { inject as injectApi, startNodes } from "../test/support/cluster.ts";
import { startCountingSink as startSessionSink } from "../test/support/countingSink.ts";
import { startDnsServer } from "../test/support/dnsServer.ts";
import { startRedis } from "../test/support/redis.ts";
import { spawnNode, startNode } from "../test/cluster/_harness.ts";
import { inject } from "./_injector.ts";
import {
  cpuSeconds,
  destinationZone,
  fmt,
  freePort,
  median,
  printTable,
  type Row,
  startBenchMta,
  startCountingSink,
  startUnbound,
  tmp,
  UNBOUND,
  waitCount,
} from "./_support.ts";

const json = process.argv.includes("--json");
const quick = process.argv.includes("--quick");
const arg = (name: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) || 0 : 0;
};
const trials = arg("--trials") || (quick ? 40 : 200);
const count = arg("--count") || (quick ? 5000 : 20_000);
const reps = arg("--reps") || (quick ? 1 : 3);
const TOKEN = "bench-cluster-token";

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

async function propagation(url: string): Promise<number[]> {
  const nodes = await Promise.all(["a", "b", "c"].map((node) => startNode(url, { node })));
  const [a, b, c] = nodes as [(typeof nodes)[0], (typeof nodes)[0], (typeof nodes)[0]];
  const got = new Map<string, number>();
  const seen = (site: string) => {
    got.set(site, (got.get(site) ?? 0) + 1);
  };
  b.state.onChange((ch) => ch.op === "set" && seen(ch.hold.site));
  c.state.onChange((ch) => ch.op === "set" && seen(ch.hold.site));
  const times: number[] = [];
  for (let i = 0; i < trials; i++) {
    const site = `site${i}.test`;
    const t0 = performance.now();
    await a.state.set({
      site,
      kind: "throttle",
      reason: "421 4.7.0 try again later",
      rule: "rate-limited",
      remainingMs: 60_000,
    });
    while ((got.get(site) ?? 0) < 2) await new Promise((r) => setImmediate(r));
    times.push(performance.now() - t0);
  }
  for (const n of nodes) await n.close();
  return times;
}

async function deadNodeRecovery(url: string, rounds: number): Promise<number[]> {
  const leaseMs = 2000;
  const out: number[] = [];
  await using b = await startNode(url, { node: "survivor", leaseMs });
  for (let r = 0; r < rounds; r++) {
    const site = `dead${r}.test`;
    await using child = await spawnNode(url, { node: `doomed${r}`, leaseMs });
    await child.ask({ op: "acquire", site, limit: 3, count: 3 });
    // Let at least one renewal happen, so that the measure is of a node that was alive and renewing.
    await Bun.sleep(leaseMs / 2);
    const req = { site, limit: 3 };
    let held = 0;
    b.leases.onFree(async (s) => {
      if (s !== site) return;
      while (held < 3 && (await b.leases.acquire(req))) held++;
    });
    while (held < 3 && (await b.leases.acquire(req))) held++;
    const t0 = performance.now();
    await child.kill("SIGKILL");
    while (held < 3) await Bun.sleep(1);
    out.push(performance.now() - t0);
  }
  return out;
}

async function redisCost(
  url: string,
): Promise<{ leaseOps: number; leaseCpuUs: number; gcraOps: number; gcraCpuUs: number }> {
  await using a = await startNode(url, { node: "cost", leaseMs: 10_000 });
  const run = async (n: number, op: () => Promise<unknown>) => {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        while (next++ < n) await op();
      }),
    );
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { ops: n / wall, cpuUs: (cpu.user + cpu.system) / n };
  };
  let k = 0;
  const lease = await run(20_000, async () => {
    const l = await a.leases.acquire({ site: `cost${k++ % 100}.test`, limit: 1_000_000 });
    l?.release();
  });
  const gcra = await run(20_000, () =>
    a.rates.take("cost.test", "msg", { count: 1_000_000_000, perMs: 1000 }),
  );
  return { leaseOps: lease.ops, leaseCpuUs: lease.cpuUs, gcraOps: gcra.ops, gcraCpuUs: gcra.cpuUs };
}

// ---------------------------------------------------------------- end to end, shared vs local

async function controlGet(port: number, path: string): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
}

/** Redis round trips so far: the count of the mta_cluster_redis_seconds histogram. */
function redisTrips(metrics: string): number {
  const m = /^mta_cluster_redis_seconds_count (\d+)/m.exec(metrics);
  return m ? Number(m[1]) : 0;
}

interface E2eRun {
  rate: number;
  cpuMs: number;
  /** Redis round trips per delivered message (shared mode). */
  redisPerMsg: number;
}

/** One run of the 100-destination benchmark through one `mta serve`: with a cluster: section (shared) or not. */
async function e2eOnce(redisUrl: string | undefined, dests: number): Promise<E2eRun> {
  using dir = tmp("mta-bench-cluster-");
  const sinkPort = freePort();
  using sink = startCountingSink(dir.path, `0.0.0.0:${sinkPort}`);
  await Bun.sleep(300);
  const zone = destinationZone(dests);
  await using dns = UNBOUND ? await startUnbound(dir.path, zone) : await startDnsServer(zone);
  await using mta = await startBenchMta(
    dir.path,
    [
      "hostname: bench.mta.test",
      `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
      "listen: [{ address: 127.0.0.1:0, max_connections_per_ip: 5000 }]",
      `control: { address: 127.0.0.1:0, token: ${TOKEN} }`,
      `dns: { servers: ["127.0.0.1:${dns.port}"] }`,
      `delivery: { port: ${sinkPort}, max_connections: 5000, domains: { default: { max_connections: 50 } } }`,
      `log: { level: info, format: json, deliveries: "" }`,
      ...(redisUrl
        ? [
            "cluster:",
            `  redis: ${redisUrl}`,
            "  node: bench",
            `  key_prefix: "b${Math.random().toString(36).slice(2, 8)}:"`,
          ]
        : []),
    ].join("\n"),
  );
  if (redisUrl)
    for (const end = Date.now() + 10_000; Date.now() < end; await Bun.sleep(20)) {
      const r = (await (await controlGet(mta.controlPort, "/api/v1/cluster/nodes")).json()) as {
        mode?: string;
      };
      if (r.mode === "shared") break;
    }
  const metrics = async () => (await controlGet(mta.controlPort, "/metrics")).text();
  const trips0 = redisTrips(await metrics());
  const cpu0 = cpuSeconds(mta.pid);
  const t0 = performance.now();
  await inject({
    host: "127.0.0.1",
    port: mta.smtpPort,
    count,
    sessions: 50,
    sizeBytes: 1000,
    domain: (s) => `d${s % dests}.test`,
  });
  const got = await waitCount(sink.received, count, 180_000);
  const wallS = (performance.now() - t0) / 1000;
  const cpuMs = ((cpuSeconds(mta.pid) - cpu0) * 1000) / count;
  const trips = redisTrips(await metrics()) - trips0;
  return { rate: got / wallS, cpuMs, redisPerMsg: trips / count };
}

// ---------------------------------------------------------------- limit accuracy

interface Accuracy {
  connections: number;
  rate: number;
  messages: number;
  maxSessions: number;
  steadyRate: number;
}

/** Three nodes, one site limited to `connections` and `rate`/s, `messages` spread over them. */
async function accuracy(
  redisUrl: string,
  connections: number,
  rate: number,
  messages: number,
): Promise<Accuracy> {
  using dir = tmp("mta-bench-accuracy-");
  await using sink = await startSessionSink();
  const nodes = await startNodes(dir.path, redisUrl, 3, {
    hostnames: true,
    extra: `delivery: { routes: { acc.test: "127.0.0.1:${sink.port}" }, domains: { acc.test: { max_connections: ${connections}, message_rate: ${rate}/s } } }`,
    cluster: `  key_prefix: "a${Math.random().toString(36).slice(2, 8)}:"`,
  });
  try {
    const per = Math.floor(messages / 3);
    await Promise.all(nodes.map((m, k) => injectApi(m, per, (i) => `r${k}-${i}@acc.test`)));
    await sink.waitFor(per * 3, 300_000);
    const a = sink.arrivals;
    const spanMs = a[a.length - 1]!.atMs - a[0]!.atMs;
    return {
      connections,
      rate,
      messages: a.length,
      maxSessions: sink.maxConcurrent(),
      // A burst of the rate's count first (GCRA), then the rate.
      steadyRate: ((a.length - rate) * 1000) / spanMs,
    };
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
  }
}

await using redis = await startRedis();
const e2e: { local: E2eRun[]; shared: E2eRun[] } = { local: [], shared: [] };
for (let r = 0; r < reps; r++) {
  // Interleaved, so that the machine's load drifts over both alike.
  e2e.local.push(await e2eOnce(undefined, 100));
  e2e.shared.push(await e2eOnce(redis.url, 100));
}
const acc = [
  await accuracy(redis.url, 6, 50, quick ? 1500 : 3000),
  await accuracy(redis.url, 12, 200, quick ? 3000 : 6000),
];
const prop = await propagation(redis.url);
const dead = await deadNodeRecovery(redis.url, Math.max(3, Math.min(20, Math.floor(trials / 20))));
const cost = await redisCost(redis.url);
const localRate = median(e2e.local.map((r) => r.rate));
const sharedRate = median(e2e.shared.map((r) => r.rate));
const rangeOf = (xs: number[]) => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;
const rows: Row[] = [
  {
    figure: "end to end, local mode (no cluster:)",
    conditions: `1 node, 100 destinations, ${count.toLocaleString("en-US")} msgs of 1 KB, 50 inbound sessions, fdatasync on; median of ${reps} (runs ${rangeOf(e2e.local.map((r) => r.rate))}); CPU ${fmt(median(e2e.local.map((r) => r.cpuMs)), 3)} ms/msg`,
    mta: localRate,
    unit: "msgs/s",
  },
  {
    figure: "end to end, shared mode (cluster: with Redis)",
    conditions: `same, interleaved; runs ${rangeOf(e2e.shared.map((r) => r.rate))}; CPU ${fmt(median(e2e.shared.map((r) => r.cpuMs)), 3)} ms/msg; ${fmt(median(e2e.shared.map((r) => r.redisPerMsg)), 2)} Redis round trips per message`,
    mta: sharedRate,
    unit: "msgs/s",
  },
  {
    figure: "shared / local end-to-end rate",
    conditions: "goal ≥ 80%",
    mta: (100 * sharedRate) / localRate,
    unit: "%",
  },
  ...acc.flatMap((x): Row[] => [
    {
      figure: `limit accuracy: max connections (configured ${x.connections})`,
      conditions: `3 nodes, one site, ${x.messages} msgs, ${x.rate}/s; sessions open at once at the sink`,
      mta: x.maxSessions,
      unit: "connections",
    },
    {
      figure: `limit accuracy: rate (configured ${x.rate}/s)`,
      conditions: `3 nodes, ${x.connections} connections, ${x.messages} msgs; arrivals after the first burst of ${x.rate}, over the run (${fmt((100 * (x.steadyRate - x.rate)) / x.rate, 1)}%)`,
      mta: x.steadyRate,
      unit: "msgs/s",
    },
  ]),

  {
    figure: "rule firing / suspension reaches every node, p50",
    conditions: `3 nodes, one Redis on loopback, ${prop.length} trials`,
    mta: median(prop),
    unit: "ms",
  },
  {
    figure: "rule firing / suspension reaches every node, p99",
    conditions: `3 nodes, ${prop.length} trials`,
    mta: percentile(prop, 99),
    unit: "ms",
  },
  {
    figure: "dead node's slots back (kill -9), p50",
    conditions: `lease 2 s, 3 slots, ${dead.length} trials (bound: one lease after its last renewal)`,
    mta: median(dead),
    unit: "ms",
  },
  {
    figure: "dead node's slots back (kill -9), p99",
    conditions: `lease 2 s, ${dead.length} trials`,
    mta: percentile(dead, 99),
    unit: "ms",
  },
  {
    figure: "connection lease acquire + release",
    conditions: "100 in flight, 100 sites",
    mta: cost.leaseOps,
    unit: "pairs/s",
  },
  {
    figure: "node CPU per lease acquire + release",
    conditions: "100 in flight",
    mta: cost.leaseCpuUs,
    unit: "µs",
  },
  {
    figure: "GCRA take (one message's token)",
    conditions: "100 in flight, one site",
    mta: cost.gcraOps,
    unit: "ops/s",
  },
  { figure: "node CPU per GCRA take", conditions: "100 in flight", mta: cost.gcraCpuUs, unit: "µs" },
];
printTable("Cluster (Redis) costs and timings", rows);
if (json) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
console.error(
  `bench/cluster: propagation ms ${fmt(Math.min(...prop), 2)}..${fmt(Math.max(...prop), 2)}; dead ${dead.map((d) => fmt(d)).join(", ")}`,
);
