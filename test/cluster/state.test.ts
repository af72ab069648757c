import { expect, test } from "bun:test";
import type { StateChange } from "../../src/cluster/index.ts";
import { startRedis } from "../support/redis.ts";
import { startNode, until } from "./_harness.ts";

function recorder() {
  const got: { at: number; c: StateChange }[] = [];
  return { got, cb: (c: StateChange) => got.push({ at: performance.now(), c }) };
}

test("a hold set on one node reaches every other node within milliseconds, and not its own", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  await using c = await startNode(redis.url, { node: "c" });
  const [ra, rb, rc] = [recorder(), recorder(), recorder()];
  a.state.onChange(ra.cb);
  b.state.onChange(rb.cb);
  c.state.onChange(rc.cb);
  const t0 = performance.now();
  expect(
    await a.state.set({
      site: "gmail.com",
      kind: "throttle",
      reason: "421 4.7.0 try again later",
      rule: "rate-limited",
      remainingMs: 60_000,
    }),
  ).toBe(true);
  await until(() => rb.got.length === 1 && rc.got.length === 1, 1000, "both nodes told");
  const worst = Math.max(rb.got[0]!.at, rc.got[0]!.at) - t0;
  console.log(`hold reached the other nodes in ${worst.toFixed(1)} ms`);
  expect(worst).toBeLessThan(1000);
  expect(rb.got[0]!.c).toMatchObject({
    op: "set",
    hold: { site: "gmail.com", kind: "throttle", rule: "rate-limited", node: "a" },
  });
  const rem = (rb.got[0]!.c as { hold: { remainingMs: number } }).hold.remainingMs;
  expect(rem).toBeGreaterThan(59_000);
  expect(rem).toBeLessThanOrEqual(60_000);
  expect(ra.got.length).toBe(0);
  // The key carries the expiry.
  const pttl = Number(redis.cli("PTTL", "mta:state:gmail.com:throttle"));
  expect(pttl).toBeGreaterThan(59_000);

  await b.state.clear("gmail.com");
  await until(() => ra.got.length === 1 && rc.got.length === 2, 1000, "clear told");
  expect(ra.got[0]!.c).toMatchObject({ op: "clear", site: "gmail.com", node: "b" });
  expect(redis.cli("EXISTS", "mta:state:gmail.com:throttle")).toBe("0");
});

test("an operator suspension without expiry stays until cleared, and a node that starts later gets it", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await a.state.set({ site: "example.com", kind: "admin", reason: "suspended by operator" });
  await a.state.set({
    site: "short.example",
    kind: "suspend",
    reason: "4.7.28",
    rule: "blocked-temporarily",
    remainingMs: 300,
  });
  expect(redis.cli("PTTL", "mta:state:example.com:admin")).toBe("-1");
  await Bun.sleep(400); // the short one expires in Redis
  const late = recorder();
  await using c = await startNode(redis.url, { node: "late" }, late.cb);
  expect(late.got.map((g) => g.c)).toEqual([
    { op: "set", hold: { site: "example.com", kind: "admin", reason: "suspended by operator", node: "a" } },
  ]);
  // Read again: nothing new.
  await c.state.resync();
  expect(late.got.length).toBe(1);
  expect(redis.cli("EXISTS", "mta:state:short.example:suspend")).toBe("0");
});

test("a node that missed a clear while disconnected applies it when it reconnects", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await using b = await startNode(redis.url, { node: "b" });
  const rb = recorder();
  b.state.onChange(rb.cb);
  await a.state.set({ site: "example.com", kind: "admin", reason: "held" });
  await until(() => rb.got.length === 1, 1000, "set told");
  // Cut B off: kill both of its connections; clear while B reconnects.
  const ids = redis
    .cli("CLIENT", "LIST")
    .split("\n")
    .filter((l) => / name=mta:b /.test(l))
    .map((l) => /\bid=(\d+)/.exec(l)![1]!);
  expect(ids.length).toBe(2);
  for (const id of ids) redis.cli("CLIENT", "KILL", "ID", id);
  await a.state.clear("example.com");
  await until(() => b.mode === "shared" && rb.got.length === 2, 5000, "B resynced");
  expect(rb.got[1]!.c).toMatchObject({ op: "clear", site: "example.com", kinds: ["admin"] });
});

test("a hold set while Redis is unreachable is applied locally and published when Redis returns", async () => {
  await using redis = await startRedis();
  await using a = await startNode(redis.url, { node: "a" });
  await redis.kill();
  await until(() => a.mode === "local", 3000, "local");
  expect(await a.state.set({ site: "example.com", kind: "admin", reason: "held during the outage" })).toBe(
    false,
  );
  expect(a.state.unpublished).toBe(1);
  await redis.start();
  await until(() => a.mode === "shared", 5000, "shared");
  expect(a.state.unpublished).toBe(0);
  expect(JSON.parse(redis.cli("GET", "mta:state:example.com:admin"))).toMatchObject({
    reason: "held during the outage",
    node: "a",
  });
});
