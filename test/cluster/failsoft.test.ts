import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startRedis } from "../support/redis.ts";
import { startNode, until } from "./_harness.ts";

const req = { site: "example.com", limit: 6 };
/** startNode's default lease. */
const LEASE_MS = 1000;

async function acquireAll(node: Awaited<ReturnType<typeof startNode>>, max = 10) {
  const got = [];
  for (let i = 0; i < max; i++) {
    const l = await node.leases.acquire(req);
    if (!l) break;
    got.push(l);
  }
  return got;
}

test("Redis lost mid-run: each node keeps its share (limit / nodes alive), says degraded, and returns to shared mode", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  await using c = await startNode(redis.url, { node: "c" });
  await until(() => [a, b, c].every((n) => n.registry.aliveCount === 3), 3000, "three nodes alive");
  // Shared: A takes 4, B the other 2.
  const heldA = await acquireAll(a, 4);
  expect(heldA.length).toBe(4);
  expect((await acquireAll(b)).length).toBe(2);

  await redis.kill();
  await until(() => [a, b, c].every((n) => n.mode === "local"), 3000, "local mode everywhere");
  expect(a.health().status).toBe("degraded");
  // A keeps the two oldest of its four (its share of 6 over 3 nodes); the others are taken away.
  expect(heldA.filter((l) => l.usable).length).toBe(2);
  expect(heldA.filter((l) => l.lost).length).toBe(2);
  expect(a.leases.held).toBe(2);
  expect((await acquireAll(a)).length).toBe(0);
  expect(b.leases.held).toBe(2);
  // For half a lease after the loss a node keeps to what it kept (C: nothing), so that A's extra
  // connections end before anyone opens new ones; then C's share is free (nothing was charged to it).
  expect((await acquireAll(c)).length).toBe(0);
  await Bun.sleep(LEASE_MS / 2 + 50);
  expect((await acquireAll(c)).length).toBe(2);

  await redis.start();
  await until(() => [a, b, c].every((n) => n.mode === "shared"), 8000, "shared mode everywhere");
  expect(a.health().status).toBe("ok");
  // Every lease kept through the outage is in the new Redis; the limit holds again cluster-wide.
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(6);
  expect((await acquireAll(a)).length).toBe(0);
});

test("an acquisition in flight when Redis goes away is not granted beside the connections still ending", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  await using c = await startNode(redis.url, { node: "c" });
  await until(() => [a, b, c].every((n) => n.registry.aliveCount === 3), 3000, "three nodes alive");
  // Redis holds all 6: A 4, B 2. C asks for one while Redis stops answering (SIGSTOP): unanswered,
  // Redis may have granted it or not; A's two beyond its share are still carrying their message.
  expect((await acquireAll(a, 4)).length).toBe(4);
  expect((await acquireAll(b)).length).toBe(2);
  redis.freeze();
  try {
    const inFlight = c.leases.acquire(req);
    expect(await inFlight).toBeUndefined();
    expect(c.mode).toBe("local");
    // Within the grace after the loss C holds nothing (what it kept), not its share of 2.
    expect(c.leases.held).toBe(0);
    expect(await c.leases.acquire(req)).toBeUndefined();
    await until(() => a.mode === "local" && b.mode === "local", 3000, "local mode everywhere");
    expect(a.leases.held + b.leases.held).toBe(4);
    // After the grace C's share is free.
    await Bun.sleep(LEASE_MS / 2 + 50);
    expect((await acquireAll(c)).length).toBe(2);
  } finally {
    redis.thaw();
  }
});

test("a node waiting for a slot when Redis goes away keeps to what it held during the grace", async () => {
  // A 4 s lease: a 2 s grace after the loss, far longer than the test's steps take.
  const lease = { leaseMs: 4000 };
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a", ...lease });
  await using b = await startNode(redis.url, { node: "b", ...lease });
  await using c = await startNode(redis.url, { node: "c", ...lease });
  await until(() => [a, b, c].every((n) => n.registry.aliveCount === 3), 3000, "three nodes alive");
  expect((await acquireAll(a, 3)).length).toBe(3);
  expect((await acquireAll(b, 2)).length).toBe(2);
  // C's site wants 2: it gets the last slot and waits for a second one.
  const slots = c.slots(req.site, undefined, () => {});
  try {
    slots.want(2, req.limit);
    await until(() => slots.count() === 1 && c.leases.refused > 0, 3000, "C holding 1, refused 1");
    await redis.kill();
    await until(() => [a, b, c].every((n) => n.mode === "local"), 3000, "local mode everywhere");
    await Bun.sleep(50);
    // A's third connection is still ending: C does not open its second one beside it yet.
    expect(slots.count()).toBe(1);
    await until(() => slots.count() === 2, 5000, "C at its share after the grace");
  } finally {
    slots.close();
  }
});

test("the nodes come back one at a time without the limit being exceeded", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a", leaseMs: 3000 });
  await using b = await startNode(redis.url, { node: "b", leaseMs: 3000 });
  await until(() => a.registry.aliveCount === 2 && b.registry.aliveCount === 2, 3000, "two nodes");
  await redis.kill();
  await until(() => a.mode === "local" && b.mode === "local", 3000, "local mode");
  await Bun.sleep(1550); // half a lease: the grace after the loss
  expect((await acquireAll(a)).length).toBe(3);
  expect((await acquireAll(b)).length).toBe(3);
  // Only A reaches Redis again (B's link is closed on purpose): A must stay within its share.
  await b.link.close();
  await redis.start();
  await until(() => a.mode === "rejoining", 3000, "A rejoining");
  expect((await acquireAll(a)).length).toBe(0);
  // A waited a lease period for B, which did not come back: A is shared again, but B may still be
  // delivering at its share (3) in local mode, so A leaves those 3 free in Redis.
  await until(() => a.mode === "shared", 6000, "A shared");
  expect((await acquireAll(a)).length).toBe(0);
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(3);
  // B not back within three lease periods is counted dead: its share is free again.
  let more = 0;
  for (const end = performance.now() + 9000; more === 0 && performance.now() < end; await Bun.sleep(100))
    more = (await acquireAll(a)).length;
  expect(more).toBe(3);
}, 25_000);

test("Redis unanswering (DEBUG SLEEP) longer than the command timeout: local share, then shared again", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a", commandTimeoutMs: 200 });
  await until(() => a.mode === "shared", 2000, "shared");
  const sleeping = Bun.spawn(["redis-cli", "-p", String(redis.port), "DEBUG", "SLEEP", "1.5"]);
  await until(() => a.mode === "local", 3000, "local mode while Redis sleeps");
  // Requests do not hang while Redis sleeps: the share answers at once (no slot during the grace
  // after the loss, as the node kept none).
  const t0 = performance.now();
  expect(await a.leases.acquire(req)).toBeUndefined();
  expect(performance.now() - t0).toBeLessThan(50);
  await sleeping.exited;
  await until(() => a.mode === "shared", 5000, "shared again");
});

test("Redis down at start: the node starts in local mode with the share it last knew", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mta-cluster-"));
  try {
    const stateFile = join(dir, "cluster-state.json");
    writeFileSync(stateFile, JSON.stringify({ nodesAlive: 3 }));
    // A port where nothing listens.
    await using redis = await startRedis();
    const url = redis.url;
    await redis.kill();
    const t0 = performance.now();
    await using a = await startNode(url, { node: "a", stateFile });
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(a.mode).toBe("local");
    expect(a.health()).toMatchObject({ status: "degraded", nodesAlive: 3 });
    expect((await acquireAll(a)).length).toBe(2);
    // Redis comes up: the node joins and learns it is alone.
    await redis.start();
    await until(() => a.mode === "shared", 5000, "shared");
    await until(() => a.registry.aliveCount === 1, 3000, "one node alive");
    expect(JSON.parse(readFileSync(stateFile, "utf8")).nodesAlive).toBe(1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a second running node with the same name is refused at start", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "twin", control: () => "127.0.0.1:8025" });
  expect(a.mode).toBe("shared");
  await expect(startNode(redis.url, { node: "twin" })).rejects.toThrow(
    /node name "twin" is in use by another running node \(control 127\.0\.0\.1:8025/,
  );
  // Once the first one has left, the name is free.
  await a.close();
  await using again = await startNode(redis.url, { node: "twin" });
  expect(again.mode).toBe("shared");
});
