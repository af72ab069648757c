/**
 * Cluster benchmarks against a real redis-server on loopback (started here, its own data dir).
 * Usage: bun bench/cluster.ts [--json] [--trials N]
 *
 * - Shared state propagation: a hold set on one node until the two other nodes applied it
 *   (pub/sub), p50 and p99 over N trials.
 * - Dead-node slot recovery: a node in a child process holds every slot of a site and is killed -9;
 *   the time until another node holds them, p50 and p99 over trials, for a 2 s lease (the bound is
 *   one lease period after the dead node's last renewal).
 * - Redis cost: a connection lease acquired and released (what each connection pays), and a GCRA
 *   take (what each message pays when a message rate is set and the rate is low enough that no
 *   reserve is kept), as operations per second with 100 in flight, and the node's CPU per operation.
 * Figures only; never passes or fails. Loopback only.
 */

import { startRedis } from "../test/support/redis.ts";
import { spawnNode, startNode } from "../test/cluster/_harness.ts";
import { fmt, median, printTable, type Row } from "./_support.ts";

const json = process.argv.includes("--json");
const trials = Number(process.argv[process.argv.indexOf("--trials") + 1] ?? 0) || 200;

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

await using redis = await startRedis();
const prop = await propagation(redis.url);
const dead = await deadNodeRecovery(redis.url, Math.max(3, Math.min(20, Math.floor(trials / 20))));
const cost = await redisCost(redis.url);
const rows: Row[] = [
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
