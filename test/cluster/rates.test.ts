import { expect, test } from "bun:test";
import { startRedis } from "../support/redis.ts";
import { startNode, until } from "./_harness.ts";

/** Takes events as fast as allowed for `ms`, sleeping the wait the limiter names; returns how many. */
async function drive(take: () => Promise<number>, ms: number): Promise<number> {
  const end = performance.now() + ms;
  let n = 0;
  while (performance.now() < end) {
    const wait = await take();
    if (wait === 0) n++;
    else await Bun.sleep(Math.min(wait, end - performance.now()));
  }
  return n;
}

test("a message rate is one bucket for every node: 50/s from three nodes is 50/s in all", async () => {
  await using redis = await startRedis();
  const nodes = await Promise.all(["a", "b", "c"].map((node) => startNode(redis.url, { node })));
  try {
    const rate = { count: 50, perMs: 1000 };
    const ms = 3000;
    const counts = await Promise.all(
      nodes.map((n) => drive(() => n.rates.take("example.com", "msg", rate), ms)),
    );
    const total = counts.reduce((a, b) => a + b, 0);
    // GCRA from an empty bucket: a burst of 50, then one every 20 ms: 50 + 3 s x 50/s = 200.
    console.log(`50/s over 3 s from 3 nodes: ${counts.join(" + ")} = ${total} (GCRA allows 200)`);
    expect(total).toBeGreaterThanOrEqual(192);
    expect(total).toBeLessThanOrEqual(201);
    // Each node got a fair part (none was starved).
    for (const c of counts) expect(c).toBeGreaterThan(30);
  } finally {
    for (const n of nodes) await n.close();
  }
});

test("connection and message rates of a site are separate buckets, and sites do not share", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  const one = { count: 1, perMs: 60_000 };
  expect(await a.rates.take("example.com", "msg", one)).toBe(0);
  const wait = await a.rates.take("example.com", "msg", one);
  expect(wait).toBeGreaterThan(59_000);
  expect(wait).toBeLessThanOrEqual(60_000);
  expect(await a.rates.take("example.com", "conn", one)).toBe(0);
  expect(await a.rates.take("example.org", "msg", one)).toBe(0);
});

test("the rate lives on Redis's clock: a node whose wall clock is wrong changes nothing", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  const one = { count: 1, perMs: 10_000 };
  expect(await a.rates.take("example.com", "msg", one)).toBe(0);
  const realNow = Date.now;
  Date.now = () => realNow() + 3_600_000; // this node thinks it is an hour later
  try {
    expect(await a.rates.take("example.com", "msg", one)).toBeGreaterThan(9000);
  } finally {
    Date.now = realNow;
  }
});

test("with Redis down a node takes rate / nodes alive locally", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using _b = await startNode(redis.url, { node: "b" });
  await until(() => a.registry.aliveCount === 2, 3000, "two nodes");
  await redis.kill();
  await until(() => a.mode === "local", 3000, "local mode");
  const n = await drive(() => a.rates.take("example.com", "msg", { count: 40, perMs: 1000 }), 1000);
  // Share: 20/s, burst 20: 20 + 1 s x 20/s = 40 (within a couple for timer granularity).
  expect(n).toBeGreaterThanOrEqual(37);
  expect(n).toBeLessThanOrEqual(41);
});

test("the synchronous limiter the scheduler asks keeps 50/s across three nodes without waiting on Redis per message", async () => {
  await using redis = await startRedis();
  const nodes = await Promise.all(["a", "b", "c"].map((node) => startNode(redis.url, { node })));
  try {
    const rate = { count: 50, perMs: 1000 };
    const ms = 3000;
    // Each node runs its own limiter like a site would: ask, sleep the wait (or until woken), take.
    const counts = await Promise.all(
      nodes.map(async (n) => {
        let wake: (() => void) | undefined;
        const lim = n.rates.limiter("example.com", "msg", rate, () => wake?.());
        const end = performance.now() + ms;
        let taken = 0;
        while (performance.now() < end) {
          const w = lim.take();
          if (w === 0) {
            taken++;
            continue;
          }
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, Math.min(w, end - performance.now()));
          });
        }
        return taken;
      }),
    );
    const total = counts.reduce((a, b) => a + b, 0);
    console.log(
      `sync limiter, 50/s over 3 s from 3 nodes: ${counts.join(" + ")} = ${total} (GCRA allows 200)`,
    );
    expect(total).toBeGreaterThanOrEqual(190);
    expect(total).toBeLessThanOrEqual(201);
  } finally {
    for (const n of nodes) await n.close();
  }
});

test("at a high rate the limiter takes events in batches: far fewer Redis requests than events", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  const lim = a.rates.limiter("example.com", "msg", { count: 20_000, perMs: 1000 }, () => {});
  let taken = 0;
  const end = performance.now() + 500;
  while (performance.now() < end) {
    if (lim.take() === 0) taken++;
    else await Bun.sleep(1);
  }
  const requests = a.rates.sharedTakes;
  console.log(`20,000/s for 0.5 s: ${taken} events in ${requests} Redis requests`);
  expect(taken).toBeGreaterThan(1000);
  expect(taken).toBeLessThanOrEqual(20_000 + 10_000);
  expect(requests).toBeLessThan(taken / 10);
});
