/**
 * Egress sources and pools, MX rollup sites and bounded ready queues, against a real spool, the real
 * deliverer and a loopback peer that records each session's client address and EHLO name.
 */
import { expect, test } from "bun:test";
import type { EgressSource, PoolMember } from "../../src/scheduler/index.ts";
import { countingPeer, harness, hostsRoute, POLICY } from "./_harness.ts";

const A: EgressSource = { name: "a", address: "127.0.0.2", ehloName: "a.mta.test" };
const B: EgressSource = { name: "b", address: "127.0.0.3", ehloName: "b.mta.test" };

function count<T>(xs: T[], key: (x: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[key(x)] = (out[key(x)] ?? 0) + 1;
  return out;
}

test("the sink sees the pool's source addresses with their EHLO names, in proportion to the weights", async () => {
  await using peer = await countingPeer(0);
  const pools: Record<string, PoolMember[]> = {
    main: [
      { source: A, weight: 3 },
      { source: B, weight: 1 },
    ],
  };
  await using h = await harness({
    port: peer.port,
    // One message per connection worker: every message is one source choice. The caps are above the
    // message count, so they never steer a choice (a source at its cap is skipped).
    policy: { maxConnections: 100, initialWindow: 100, maxMessagesPerConnection: 1 },
    overrides: { pools, defaultPool: "main", maxConnections: 200 },
  });
  for (let i = 0; i < 80; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(80);
  expect(count(peer.messages, (m) => m.source)).toEqual({ "127.0.0.2": 60, "127.0.0.3": 20 });
  expect(
    peer.messages.every((m) => m.ehlo === (m.source === "127.0.0.2" ? "a.mta.test" : "b.mta.test")),
  ).toBe(true);
});

test("maxConnections holds per (source x site): two sources, two connections each, four in all", async () => {
  await using peer = await countingPeer(30);
  await using h = await harness({
    port: peer.port,
    policy: { maxConnections: 2, initialWindow: 100 },
    overrides: {
      pools: {
        both: [
          { source: A, weight: 1 },
          { source: B, weight: 1 },
        ],
      },
      defaultPool: "both",
    },
  });
  for (let i = 0; i < 40; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(40);
  expect(peer.maxOpenBy.get("127.0.0.2")).toBe(2);
  expect(peer.maxOpenBy.get("127.0.0.3")).toBe(2);
  expect(peer.maxOpen).toBeLessThanOrEqual(4);
  expect(h.scheduler.summary()).toEqual([]);
});

test("maxConnectionsPerSource caps one source address across sites", async () => {
  await using peer = await countingPeer(20);
  await using h = await harness({
    port: peer.port,
    policy: { maxConnections: 5, initialWindow: 5 },
    overrides: { pools: { one: [{ source: A, weight: 1 }] }, defaultPool: "one", maxConnectionsPerSource: 3 },
  });
  for (let i = 0; i < 12; i++) {
    await h.send({ to: [`a${i}@one.test`] });
    await h.send({ to: [`b${i}@two.test`] });
  }
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(24);
  expect(peer.maxOpenBy.get("127.0.0.2")).toBe(3);
  expect([...peer.maxOpenBy.keys()]).toEqual(["127.0.0.2"]);
});

test("a message's pool attribute picks its pool, given at enqueue or learned at the first attempt", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({
    port: peer.port,
    overrides: {
      pools: { main: [{ source: A, weight: 1 }], vip: [{ source: B, weight: 1 }] },
      defaultPool: "main",
    },
  });
  h.scheduler.suspend("dest.test");
  for (let i = 0; i < 4; i++) await h.send({ to: [`plain${i}@dest.test`] });
  // Queued without a hint (as after a restart): it sits in the default pool's queue until read.
  for (let i = 0; i < 3; i++) await h.send({ to: [`late${i}@dest.test`], attributes: { pool: "vip" } });
  for (let i = 0; i < 3; i++) {
    const m = await h.spool.append({
      sender: "alice@sender.test",
      destination: "dest.test",
      recipients: [{ address: `hinted${i}@dest.test` }],
      attributes: { pool: "vip" },
      body: new TextEncoder().encode("Subject: x\r\n\r\nx\r\n"),
    });
    h.scheduler.enqueue(m.slot, { pool: "vip" });
  }
  h.scheduler.resume("dest.test");
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(10);
  const by = (prefix: string) =>
    new Set(peer.messages.filter((m) => m.to[0]!.startsWith(prefix)).map((m) => m.source));
  expect(by("plain")).toEqual(new Set(["127.0.0.2"]));
  expect(by("late")).toEqual(new Set(["127.0.0.3"]));
  expect(by("hinted")).toEqual(new Set(["127.0.0.3"]));
  expect(h.events.every((e) => e.type === "delivery" && e.attempt === 1)).toBe(true);
});

test("MX rollup: domains whose route names one site share its single connection limit and queue", async () => {
  await using peer = await countingPeer(25);
  await using h = await harness({
    port: peer.port,
    rollup: true,
    policyFor: (site) =>
      site === "bigmail"
        ? { ...POLICY, maxConnections: 2, initialWindow: 2 }
        : { ...POLICY, initialWindow: 5 },
  });
  const route = hostsRoute(peer.port);
  if (route.kind !== "hosts") throw new Error("hostsRoute gives hosts");
  for (const d of ["a.test", "b.test", "c.test"]) h.routes.set(d, { ...route, site: "bigmail" });
  for (let i = 0; i < 10; i++)
    for (const d of ["a.test", "b.test", "c.test"]) await h.send({ to: [`u${i}@${d}`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(30);
  expect(peer.maxOpen).toBe(2);
  // Message events keep the recipient domain; the operator can address the rollup by either name.
  expect(new Set(h.events.map((e) => e.destination))).toEqual(new Set(["a.test", "b.test", "c.test"]));
  h.scheduler.suspend("a.test");
  expect(h.scheduler.summary().map((s) => [s.destination, s.state])).toEqual([["bigmail", "suspended"]]);
  await h.send({ to: ["late@b.test"] });
  await h.scheduler.idle();
  expect(h.scheduler.summary().find((s) => s.destination === "b.test")).toMatchObject({
    site: "bigmail",
    state: "suspended",
    ready: 1,
  });
  h.scheduler.resume("bigmail");
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(31);
});

test("without rollup the same domains each get their own limit (the contrast)", async () => {
  await using peer = await countingPeer(25);
  await using h = await harness({
    port: peer.port,
    policy: { maxConnections: 2, initialWindow: 2 },
  });
  for (let i = 0; i < 10; i++)
    for (const d of ["a.test", "b.test", "c.test"]) await h.send({ to: [`u${i}@${d}`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(30);
  expect(peer.maxOpen).toBeGreaterThan(2);
  expect(peer.maxOpen).toBeLessThanOrEqual(6);
});

test("a stalled site's ready queue stays bounded; the overflow waits in the scheduled tier and drains later", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port, overrides: { maxReadyPerSite: 5 } });
  h.scheduler.suspend("stalled.test");
  for (let i = 0; i < 50; i++) await h.send({ to: [`u${i}@stalled.test`] });
  const gauge = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, "m").exec(h.metrics.render())?.[1]);
  const ready = () =>
    Number(/mta_scheduler_queued_messages\{tier="ready"\} (\d+)/.exec(h.metrics.render())?.[1]);
  expect(ready()).toBe(5);
  expect(gauge("mta_scheduler_overflow_messages")).toBe(45);
  for (let i = 0; i < 30; i++) {
    await h.advance(1000); // overflow comes due, finds the queue still full, and is deferred again
    expect(ready()).toBe(5);
  }
  expect(gauge("mta_scheduler_overflow_messages")).toBe(45);
  expect(h.scheduler.summary()[0]).toMatchObject({ destination: "stalled.test", messages: 50 });
  // The queue view reads each message's next attempt from the timer tier: an overflow-deferred one
  // says when it really comes round, not the (earlier) time its spool record says.
  const now = h.clock.now();
  let deferred = 0;
  h.spool.forEachLive((slot) => {
    if (h.scheduler.nextAttemptOf(slot) > now) {
      deferred++;
      expect(h.spool.nextAttemptOf(slot)).toBeLessThanOrEqual(now);
    }
  });
  expect(deferred).toBe(45);
  h.scheduler.resume("stalled.test");
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(5);
  for (let i = 0; i < 15 && peer.messages.length < 50; i++) await h.advance(1000);
  expect(peer.messages).toHaveLength(50);
  expect(gauge("mta_scheduler_overflow_messages")).toBe(0);
  // Nothing burned an attempt while it waited.
  expect(h.events.every((e) => e.type === "delivery" && e.attempt === 1)).toBe(true);
});
