import { expect, test } from "bun:test";
import { startRedis } from "../support/redis.ts";
import { spawnNode, startNode, until } from "./_harness.ts";

test("two nodes never hold more than a site's connection limit between them", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  const req = { site: "example.com", limit: 6 };
  const fromA = await Promise.all(Array.from({ length: 4 }, () => a.leases.acquire(req)));
  const fromB = await Promise.all(Array.from({ length: 4 }, () => b.leases.acquire(req)));
  expect(fromA.filter(Boolean).length).toBe(4);
  expect(fromB.filter(Boolean).length).toBe(2);
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(6);
  // Another site has its own limit.
  expect(await b.leases.acquire({ site: "other.example", limit: 6 })).toBeDefined();
});

test("a source x site limit holds across nodes next to the site's own limit", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  const req = { site: "example.com", limit: 10, source: { address: "192.0.2.1", limit: 3 } };
  const got = await Promise.all([
    ...Array.from({ length: 2 }, () => a.leases.acquire(req)),
    ...Array.from({ length: 2 }, () => b.leases.acquire(req)),
  ]);
  expect(got.filter(Boolean).length).toBe(3);
  // A refused source x site acquisition took nothing from the site's own limit.
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(3);
  expect(
    await a.leases.acquire({ site: "example.com", limit: 10, source: { address: "192.0.2.2", limit: 3 } }),
  ).toBeDefined();
});

test("a released lease wakes the node waiting for that site through pub/sub", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a", leaseMs: 10_000 });
  await using b = await startNode(redis.url, { node: "b", leaseMs: 10_000 });
  const req = { site: "example.com", limit: 1 };
  const held = await a.leases.acquire(req);
  expect(held).toBeDefined();
  expect(await b.leases.acquire(req)).toBeUndefined();
  let woken = 0;
  b.leases.onFree((site) => {
    if (site === "example.com") woken = performance.now();
  });
  const t0 = performance.now();
  held!.release();
  await until(() => woken > 0, 2000, "the free message");
  expect(woken - t0).toBeLessThan(500); // far sooner than the 10 s lease: it was the release
  expect(await b.leases.acquire(req)).toBeDefined();
});

test("the slots of a node killed with -9 come back within one lease period", async () => {
  await using redis = await startRedis();
  const leaseMs = 1500;
  await using child = await spawnNode(redis.url, { node: "doomed", leaseMs });
  expect((await child.ask({ op: "acquire", site: "example.com", limit: 3, count: 3 })).granted).toBe(3);
  await using b = await startNode(redis.url, { node: "b", leaseMs });
  const req = { site: "example.com", limit: 3 };
  expect(await b.leases.acquire(req)).toBeUndefined();
  let got = 0;
  b.leases.onFree(async () => {
    while ((await b.leases.acquire(req)) !== undefined) got++;
  });
  const killedAt = performance.now();
  await child.kill("SIGKILL");
  const ms = await until(() => got === 3, 3 * leaseMs, "the dead node's slots");
  console.log(`slots of a node killed -9 came back after ${Math.round(ms)} ms (lease ${leaseMs} ms)`);
  expect(performance.now() - killedAt).toBeLessThanOrEqual(leaseMs + 200);
});

test("a node paused longer than its lease finds its leases lost and stops using them", async () => {
  await using redis = await startRedis();
  const leaseMs = 1000;
  await using child = await spawnNode(redis.url, { node: "sleepy", leaseMs, commandTimeoutMs: 5000 });
  expect((await child.ask({ op: "acquire", site: "example.com", limit: 2, count: 2 })).granted).toBe(2);
  expect((await child.ask({ op: "status" })).usable).toBe(2);
  await using b = await startNode(redis.url, { node: "b", leaseMs });
  const req = { site: "example.com", limit: 2 };
  child.proc.kill("SIGSTOP");
  await Bun.sleep(leaseMs * 1.5);
  // Redis let the paused node's leases expire: the other node gets both slots.
  expect(await b.leases.acquire(req)).toBeDefined();
  expect(await b.leases.acquire(req)).toBeDefined();
  child.proc.kill("SIGCONT");
  const status = await child.ask({ op: "status" });
  // The first thing the woken node knows: it may not use what it could not renew.
  expect(status.usable).toBe(0);
  await until(() => child.events.filter((e) => e.event === "lost").length === 2, 2000, "lost events");
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(2);
});
