/**
 * SuppressionSharing between two nodes in this process (each its own list and Cluster) against a real
 * redis-server, with no metrics registry (a node's optional parts must not change what it does).
 */
import { expect, test } from "bun:test";
import { join } from "node:path";
import { SUPPRESSION_STREAM_MAX_ENTRIES, SuppressionSharing } from "../../src/app/_suppressShare.ts";
import { silentLogger } from "../../src/observe/index.ts";
import { SuppressionList } from "../../src/suppression/index.ts";
import { startNode, until } from "../cluster/_harness.ts";
import { tempDir } from "../support/mta.ts";
import { lacking } from "../support/peers.ts";
import { startRedis } from "../support/redis.ts";

async function node(url: string, name: string, dir: string) {
  const cluster = await startNode(url, { node: name });
  const list = await SuppressionList.open({ dir: join(dir, name), shared: true, sync: false });
  const sharing = new SuppressionSharing(
    list,
    cluster.sharedLog("suppression", SUPPRESSION_STREAM_MAX_ENTRIES),
    {
      node: name,
      log: silentLogger(),
    },
  );
  sharing.start();
  return {
    list,
    async [Symbol.asyncDispose]() {
      await sharing.stop();
      await list.close();
      await cluster.close();
    },
  };
}

test.skipIf(lacking("redis-server"))(
  "without metrics: an add and a remove on one node reach the other; an import of 5,000 too",
  async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    await using a = await node(redis.url, "a", dir.path);
    await using b = await node(redis.url, "b", dir.path);
    await until(
      () => a.list.sharedPosition.epoch !== "" && b.list.sharedPosition.epoch !== "",
      5000,
      "both joined",
    );
    await a.list.add([{ address: "x@example.net", reason: "complaint" }]);
    await until(() => b.list.has("x@example.net"), 5000, "b has x");
    expect(b.list.check("x@example.net")).toEqual({ scope: "", reason: "complaint" });
    await b.list.remove([{ address: "x@example.net" }]);
    await until(() => !a.list.has("x@example.net"), 5000, "a lost x");
    await a.list.add(Array.from({ length: 5000 }, (_, i) => ({ address: `u${i}@example.net` })));
    await until(() => b.list.count === 5000, 10_000, "b has 5000");
    await until(() => a.list.ownPendingCount === 0 && b.list.ownPendingCount === 0, 5000, "nothing pending");
    expect(Number(redis.cli("HLEN", "mta:log:suppression:state"))).toBe(5000);
  },
);
