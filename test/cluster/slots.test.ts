import { expect, test } from "bun:test";
import { startRedis } from "../support/redis.ts";
import { startNode, until } from "./_harness.ts";

test("two nodes wanting a site's whole limit share it, and slots move to the node that still wants them", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  let changedA = 0;
  let changedB = 0;
  const sa = a.slots("example.com", undefined, () => changedA++);
  const sb = b.slots("example.com", undefined, () => changedB++);
  sa.want(4, 6);
  await until(() => sa.count() === 4, 2000, "A holds four");
  sb.want(6, 6);
  await until(() => sb.count() === 2, 2000, "B holds the other two");
  await Bun.sleep(100);
  expect([sa.count(), sb.count()]).toEqual([4, 2]);
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(6);
  expect(changedA + changedB).toBeGreaterThanOrEqual(6);
  // A needs none any more: after its linger (250 ms) its slots go to B, which was refused and is woken.
  const t0 = performance.now();
  sa.want(0, 6);
  await until(() => sb.count() === 6, 2000, "B holds all six");
  console.log(
    `slots moved from a node that no longer wants them in ${Math.round(performance.now() - t0)} ms`,
  );
  expect(sa.count()).toBe(0);
  sa.close();
  sb.close();
  await until(() => redis.cli("EXISTS", "mta:lease:example.com") === "0", 2000, "all released");
});

test("a lower cluster-wide limit (a throttle) is reached by giving back the surplus", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  const s = a.slots("example.com", undefined, () => {});
  s.want(4, 4);
  await until(() => s.count() === 4, 2000, "four");
  s.want(4, 1);
  await until(() => s.count() === 1, 2000, "down to one");
  await until(() => redis.cli("ZCARD", "mta:lease:example.com") === "1", 2000, "one in Redis");
  s.close();
});

test("a lost lease lowers the count at once and says so", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a", commandTimeoutMs: 200 });
  await using _b = await startNode(redis.url, { node: "b" });
  await until(() => a.registry.aliveCount === 2, 3000, "two nodes");
  let changes = 0;
  const s = a.slots("example.com", undefined, () => changes++);
  s.want(4, 4);
  await until(() => s.count() === 4, 2000, "four");
  const before = changes;
  // Redis gone: A's share of 4 over 2 nodes is 2.
  await redis.kill();
  await until(() => a.mode === "local", 3000, "local");
  expect(s.count()).toBe(2);
  expect(changes).toBeGreaterThan(before);
  s.close();
});

test("a node that must share falls to its fair part at once, but gives a slot back only once its connection closed", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  // A's site has 6 connections open (each carrying a message) under 6 slots.
  let open = 6;
  const sa = a.slots(
    "example.com",
    undefined,
    () => {},
    250,
    () => open,
  );
  sa.want(6, 6);
  await until(() => sa.count() === 6, 2000, "A holds six");
  const sb = b.slots("example.com", undefined, () => {});
  sb.want(6, 6);
  // B is refused; at A's next renewal A sees it waiting: A's part is 3 of 6 from then on.
  await until(
    () => {
      sa.want(6, 6);
      return sa.allowed() === 3;
    },
    3000,
    "A down to its fair part",
  );
  // Its 6 connections are still open: none of their slots goes to B, however long they take.
  await Bun.sleep(600);
  sa.want(6, 6);
  expect(sa.count()).toBe(6);
  expect(sb.count()).toBe(0);
  // Three of them ended (after the message in hand): their slots go to B.
  open = 3;
  sa.want(6, 6);
  await until(() => sb.count() === 3, 3000, "B holds three");
  expect(sa.count()).toBe(3);
  expect(Number(redis.cli("ZCARD", "mta:lease:example.com"))).toBe(6);
  sa.close();
  sb.close();
});
