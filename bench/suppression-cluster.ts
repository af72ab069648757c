/**
 * The suppression list shared by cluster nodes: two nodes in this process (each its own list in its
 * own directory, fdatasync on, its own Redis connections) against a real redis-server on loopback.
 * Usage: bun bench/suppression-cluster.ts [--trials=200] [--bulk=100000] [--json]
 *
 * - Propagation: one address added on node A (resolved once durable there) until node B's list
 *   refuses it (durable on B too), p50 and p99 over the trials.
 * - Bulk: one call adding `bulk` addresses on A (an import) until B holds them all, changes/s.
 * - Catch-up: B stopped while A adds `bulk` more, then B started: the time until B holds them all.
 * The RCPT check itself is the single-node one (bench/suppression.ts): nothing of this is on its path.
 * Figures only; never passes or fails. Loopback only. No Postfix column (Postfix has no shared list).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import { SUPPRESSION_STREAM_MAX_ENTRIES, SuppressionSharing } from "../src/app/_suppressShare.ts";
import type { Cluster } from "../src/cluster/index.ts";
import { createLogger } from "../src/observe/index.ts";
import { SuppressionList } from "../src/suppression/index.ts";
import { startNode } from "../test/cluster/_harness.ts";
import { startRedis } from "../test/support/redis.ts";
import { benchArgs, printTable, type Row } from "./_support.ts";

const args = benchArgs();
const trials = Number(args.get("trials") ?? 200);
const bulk = Number(args.get("bulk") ?? 100_000);
const log = createLogger({ level: "warn", format: "json" });

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

interface Node {
  cluster: Cluster;
  list: SuppressionList;
  sharing: SuppressionSharing;
  close(): Promise<void>;
}

async function node(url: string, name: string, dir: string): Promise<Node> {
  const cluster = await startNode(url, { node: name });
  const list = await SuppressionList.open({ dir: join(dir, name), shared: true });
  const sharing = new SuppressionSharing(
    list,
    cluster.sharedLog("suppression", SUPPRESSION_STREAM_MAX_ENTRIES),
    {
      node: name,
      log,
    },
  );
  sharing.start();
  return {
    cluster,
    list,
    sharing,
    async close() {
      await sharing.stop();
      await list.close();
      await cluster.close();
    },
  };
}

async function until(pred: () => boolean, timeoutMs = 120_000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!pred()) {
    if (performance.now() > end) throw new Error(`timed out: ${pred}`);
    await new Promise((r) => setImmediate(r));
  }
}

const dir = fs.mkdtempSync(join(os.tmpdir(), "mta-bench-supcluster-"));
await using redis = await startRedis();
const rows: Row[] = [];
try {
  const a = await node(redis.url, "a", dir);
  let b = await node(redis.url, "b", dir);
  await until(() => a.list.sharedPosition.epoch !== "" && b.list.sharedPosition.epoch !== "");

  const times: number[] = [];
  for (let i = 0; i < trials; i++) {
    const address = `p${i}@example.net`;
    const t0 = performance.now();
    await a.list.add([{ address }]);
    await until(() => b.list.has(address));
    times.push(performance.now() - t0);
  }
  const cond = "2 nodes in one process, fdatasync on, redis-server on loopback, shared 2-core machine";
  rows.push({
    figure: "propagation p50 (add on A → refused on B)",
    conditions: `${trials} trials; ${cond}`,
    mta: percentile(times, 50),
    unit: "ms",
  });
  rows.push({
    figure: "propagation p99",
    conditions: `${trials} trials; ${cond}`,
    mta: percentile(times, 99),
    unit: "ms",
  });

  const t1 = performance.now();
  await a.list.add(Array.from({ length: bulk }, (_, i) => ({ address: `bulk${i}@example.net` })));
  const last = `bulk${bulk - 1}@example.net`;
  await until(() => b.list.has(last) && b.list.has("bulk0@example.net"));
  rows.push({
    figure: "bulk replication (one import on A until B holds all)",
    conditions: `${bulk.toLocaleString("en-US")} addresses; ${cond}`,
    mta: bulk / ((performance.now() - t1) / 1000),
    unit: "changes/s",
  });

  await b.close();
  await a.list.add(Array.from({ length: bulk }, (_, i) => ({ address: `later${i}@example.net` })));
  await until(() => a.list.ownPendingCount === 0);
  const t2 = performance.now();
  b = await node(redis.url, "b", dir);
  await until(() => b.list.has(`later${bulk - 1}@example.net`));
  rows.push({
    figure: "catch-up of a node that was stopped",
    conditions: `${bulk.toLocaleString("en-US")} changes made meanwhile; from start to holding all; ${cond}`,
    mta: (performance.now() - t2) / 1000,
    unit: "s",
  });
  await b.close();
  await a.close();
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
printTable("Suppression list shared by cluster nodes", rows);
if (args.has("json")) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
