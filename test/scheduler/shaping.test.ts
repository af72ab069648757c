import { expect, test } from "bun:test";
import { closedPort, startScriptedPeer } from "../support/scriptedPeer.ts";
import { countingPeer, harness, hostsRoute } from "./_harness.ts";

test("a destination's connection limit is never exceeded (sessions counted at the peer)", async () => {
  await using peer = await countingPeer(25);
  let maxActive = 0;
  await using h = await harness({
    port: peer.port,
    policy: { maxConnections: 3, initialWindow: 3 },
    overrides: { onEvent: () => (maxActive = Math.max(maxActive, h.scheduler.activeConnections())) },
  });
  for (let i = 0; i < 30; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(30);
  expect(peer.maxOpen).toBeLessThanOrEqual(3);
  expect(peer.maxOpen).toBeGreaterThanOrEqual(2);
  expect(maxActive).toBeLessThanOrEqual(3);
});

test("a connection being retired (QUIT sent, 221 slow) still counts against the limit", async () => {
  // Each message finds nothing else ready, so QUIT goes right behind it; the peer answers QUIT 200 ms
  // later. The next message may not open a second connection while the first is still closing.
  await using peer = await countingPeer(0, { quitDelayMs: 200 });
  await using h = await harness({ port: peer.port, policy: { maxConnections: 1, initialWindow: 1 } });
  for (let i = 0; i < 4; i++) {
    await h.send({ to: [`u${i}@dest.test`] });
    const want = i + 1;
    for (let n = 0; peer.messages.length < want && n < 200; n++) await Bun.sleep(5);
  }
  await h.scheduler.idle();
  for (let n = 0; peer.open > 0 && n < 200; n++) await Bun.sleep(5);
  expect(peer.messages).toHaveLength(4);
  expect(peer.sessions).toBeGreaterThanOrEqual(2); // connections were retired in between
  expect(peer.maxOpen).toBe(1);
});

test("the global connection cap holds across destinations", async () => {
  await using peer = await countingPeer(25);
  await using h = await harness({
    port: peer.port,
    policy: { maxConnections: 5, initialWindow: 5 },
    overrides: { maxConnections: 4 },
  });
  for (let i = 0; i < 15; i++) {
    await h.send({ to: [`a${i}@one.test`] });
    await h.send({ to: [`b${i}@two.test`] });
  }
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(30);
  expect(peer.maxOpen).toBeLessThanOrEqual(4);
  expect(h.scheduler.summary().every((s) => s.connectionLimit <= 4)).toBe(true);
});

test("the concurrency window opens on success up to the limit, halves on a site failure, restarts small", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port, policy: { maxConnections: 4, initialWindow: 1 } });
  for (let i = 0; i < 6; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  expect(h.scheduler.summary()).toEqual([]);
  h.scheduler.suspend("dest.test"); // only to make it show in the summary
  expect(h.scheduler.summary()[0]).toMatchObject({ window: 4, connectionLimit: 4 });
  h.scheduler.resume("dest.test");
  h.routes.set("dest.test", hostsRoute(await closedPort()));
  await h.send({ to: ["v@dest.test"] });
  await h.scheduler.idle();
  const s = h.scheduler.summary()[0]!;
  expect(s).toMatchObject({ state: "backoff", window: 2, connectionLimit: 2 });
  h.routes.delete("dest.test");
  h.scheduler.flush({ destination: "dest.test" });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(7);
});

test("a message rate holds with a manual clock (GCRA: burst, then one per interval)", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port, policy: { messageRate: { count: 2, perMs: 1000 } } });
  for (let i = 0; i < 5; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  const counts = [peer.messages.length];
  for (let i = 0; i < 4; i++) {
    await h.advance(250);
    counts.push(peer.messages.length);
  }
  // Burst of 2 at t=0, then one every 500 ms.
  expect(counts).toEqual([2, 2, 3, 3, 4]);
  await h.advance(500);
  expect(peer.messages).toHaveLength(5);
});

test("a connection rate limits how often connection workers start", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({
    port: peer.port,
    policy: { connectionRate: { count: 1, perMs: 1000 }, maxMessagesPerConnection: 1 },
  });
  for (let i = 0; i < 3; i++) await h.send({ to: [`u${i}@dest.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);
  await h.advance(999);
  expect(peer.messages).toHaveLength(1);
  await h.advance(1);
  expect(peer.messages).toHaveLength(2);
  await h.advance(1000);
  expect(peer.messages).toHaveLength(3);
});

test("a sink answering '421 4.7.0 Try again later' throttles its destination and does not slow the others", async () => {
  await using peer = await countingPeer(0);
  await using slow = await startScriptedPeer({ greeting: "421 4.7.0 Try again later" });
  await using h = await harness({ port: peer.port });
  h.routes.set("slow.test", hostsRoute(slow.port));
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await h.send({ to: [`s${i}@slow.test`] }));
  for (let i = 0; i < 10; i++) await h.send({ to: [`f${i}@fast.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(10);
  expect(
    h.events
      .filter((e) => e.destination === "fast.test")
      .every((e) => e.type === "delivery" && e.attempt === 1),
  ).toBe(true);
  for (const m of held) expect(h.spool.attemptsOf(m.slot)).toBe(0);
  const s = h.scheduler.summary().find((x) => x.destination === "slow.test")!;
  expect(s.state).toBe("backoff");
  const rule = h.destinationEvents.find((e) => e.type === "rule")!;
  expect(rule).toMatchObject({ destination: "slow.test", rule: "rate-limited", action: "throttle" });
  expect(h.metrics.render()).toContain(
    'mta_scheduler_rule_firings_total{action="throttle",rule="rate-limited"} 1',
  );
});

test("a 4xx rate-limit reply to RCPT fires the throttle rule: one connection, one message a second, for forMs", async () => {
  await using peer = await countingPeer(0);
  let limited = true;
  peer.rcpt = (to) =>
    limited && to.endsWith("@busy.test") ? "450 4.7.0 rate limit exceeded, slow down" : "250 2.1.5 ok";
  await using h = await harness({
    port: peer.port,
    policy: {
      maxConnections: 5,
      initialWindow: 5,
      rules: [
        {
          name: "rl",
          code: 450,
          text: /rate limit/,
          action: "throttle",
          forMs: 60_000,
          maxConnections: 1,
          messageRate: { count: 1, perMs: 1000 },
        },
      ],
    },
  });
  await h.send({ to: ["a@busy.test"] });
  await h.scheduler.idle();
  const s = h.scheduler.summary()[0]!;
  expect(s).toMatchObject({ destination: "busy.test", state: "throttled", connectionLimit: 1 });
  limited = false;
  for (let i = 0; i < 3; i++) await h.send({ to: [`b${i}@busy.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1); // the throttle's bucket: one a second
  await h.advance(1000);
  expect(peer.messages).toHaveLength(2);
  await h.advance(60_000);
  // The throttle ended: the rest (and a@busy.test's retry) went out.
  expect(h.scheduler.summary().filter((x) => x.state === "throttled")).toEqual([]);
  expect(peer.messages.map((m) => m.to[0]).sort()).toEqual([
    "a@busy.test",
    "b0@busy.test",
    "b1@busy.test",
    "b2@busy.test",
  ]);
});

test("a bounce rule fails the destination's whole queue with DSNs", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = (to) => (to.endsWith("@gone.test") ? "452 4.2.2 account disabled" : "250 2.1.5 ok");
  await using h = await harness({
    port: peer.port,
    policy: {
      rules: [{ name: "disabled", code: /^4/, text: /account disabled/, action: "bounce", forMs: 60_000 }],
    },
  });
  const { slot } = await h.send({ to: ["a@gone.test"] });
  await h.scheduler.idle();
  // The first reply was transient and scheduled for retry; the rule made it due now and failed it.
  expect(h.spool.isLive(slot) && h.spool.destinationOf(slot) === "gone.test").toBe(false);
  await h.send({ to: ["b@gone.test"] });
  await h.scheduler.idle();
  const bounces = h.events.filter((e) => e.type === "bounce");
  expect(bounces.map((e) => [e.recipient, e.reason])).toEqual([
    ["a@gone.test", "rule:disabled"],
    ["b@gone.test", "rule:disabled"],
  ]);
  expect(peer.messages.filter((m) => m.from === "").map((m) => /Status: (\S+)/.exec(m.body)?.[1])).toEqual([
    "5.2.2",
    "5.2.2",
  ]);
});

test("an operator's suspension holds mail until resume; a timed one ends by itself", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  h.scheduler.suspend("dest.test", undefined, "maintenance");
  await h.send({ to: ["a@dest.test"] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(0);
  expect(h.scheduler.summary()[0]).toMatchObject({ state: "suspended", reason: "maintenance", ready: 1 });
  expect(h.scheduler.summary()[0]!.untilMs).toBeUndefined();
  await h.advance(24 * 3_600_000 - 1);
  expect(peer.messages).toHaveLength(0);
  h.scheduler.resume("dest.test");
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);

  h.scheduler.suspend("dest.test", 5000);
  await h.send({ to: ["b@dest.test"] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);
  await h.advance(5000);
  expect(peer.messages).toHaveLength(2);
  expect(h.destinationEvents.map((e) => e.type)).toEqual([
    "suspension",
    "resumption",
    "suspension",
    "resumption",
  ]);
});

test("stop() starts nothing new and waits for the attempt in flight, whose outcome is recorded", async () => {
  await using peer = await countingPeer(150);
  await using h = await harness({ port: peer.port, policy: { maxConnections: 1, initialWindow: 1 } });
  await h.send({ to: ["a@dest.test"] });
  await h.send({ to: ["b@dest.test"] });
  while (h.scheduler.activeConnections() === 0) await Bun.sleep(5);
  await h.scheduler.stop(5000);
  expect(h.scheduler.activeConnections()).toBe(0);
  expect(peer.messages.map((m) => m.to[0])).toEqual(["a@dest.test"]);
  expect(h.events.map((e) => `${e.type}:${e.recipient}`)).toEqual(["delivery:a@dest.test"]);
  expect(h.spool.messageCount).toBe(1); // b stays in the spool for the next start
});

test("a rule fired on another node: applied for at most its own time here; an unknown bounce rule is not", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port, policy: { maxConnections: 3 } });
  const rows = () => h.scheduler.summary();
  // A known rule (the default "rate-limited" throttle, 10 min) said to last a year: 10 min here.
  h.scheduler.applyRemoteRule("dest.test", {
    rule: "rate-limited",
    action: "throttle",
    reply: "421 4.7.0 Try again later",
    forMs: 365 * 86_400_000,
    node: "node-b",
  });
  const t = rows().find((r) => r.state === "throttled")!;
  expect(t.reason).toBe("rule rate-limited");
  expect(t.untilMs! - h.clock.now()).toBe(10 * 60_000);
  expect(h.destinationEvents.some((e) => e.type === "rule" && e.rule === "rate-limited")).toBe(true);
  // A bounce rule this node does not have fails nothing here.
  h.scheduler.applyRemoteRule("other.test", {
    rule: "made-up",
    action: "bounce",
    reply: "550 5.7.1 go away",
    forMs: 60_000,
    node: "node-b",
  });
  await h.send({ to: ["u@other.test"] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);
  expect(h.destinationEvents.some((e) => e.rule === "made-up")).toBe(false);
  // Nonsense from Redis (no time, an unknown action) changes nothing.
  const before = JSON.stringify(rows().map((r) => [r.destination, r.state]));
  h.scheduler.applyRemoteRule("third.test", {
    rule: "x",
    action: "throttle",
    reply: "",
    forMs: Number.NaN,
    node: "n",
  });
  h.scheduler.applyRemoteRule("third.test", {
    rule: "x",
    action: "explode" as "bounce",
    reply: "",
    forMs: 1000,
    node: "n",
  });
  expect(JSON.stringify(rows().map((r) => [r.destination, r.state]))).toBe(before);
});
