import { expect, test } from "bun:test";
import { closedPort } from "../support/scriptedPeer.ts";
import { countingPeer, harness, hostsRoute } from "./_harness.ts";

const MIN = 60_000;

test("a message is delivered, logged, and freed from the spool", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  const { id } = await h.send({ to: ["bob@dest.test"] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);
  expect(peer.messages[0]!.to).toEqual(["bob@dest.test"]);
  expect(h.spool.messageCount).toBe(0);
  const e = h.events.find((x) => x.type === "delivery")!;
  expect(e).toMatchObject({
    id,
    recipient: "bob@dest.test",
    sender: "alice@sender.test",
    code: 250,
    attempt: 1,
    ip: "127.0.0.1",
  });
  expect(h.metrics.render()).toContain('mta_scheduler_attempts_total{result="delivered"} 1');
});

test("transient failures are retried on the schedule, the last delay repeated, then delivered", async () => {
  await using peer = await countingPeer(0);
  let accept = false;
  peer.rcpt = (to) => (to.startsWith("busy") && !accept ? "450 4.2.0 mailbox busy" : "250 2.1.5 ok");
  await using h = await harness({ port: peer.port });
  const t0 = h.clock.now();
  const { slot } = await h.send({ to: ["busy@dest.test"] });
  await h.scheduler.idle();
  const delays: number[] = [];
  for (let i = 0; i < 3; i++) {
    expect(h.spool.attemptsOf(slot)).toBe(i + 1);
    const next = h.spool.nextAttemptOf(slot);
    delays.push(next - h.clock.now());
    // Nothing happens before the next attempt is due.
    await h.advance(next - h.clock.now() - 1);
    expect(h.spool.attemptsOf(slot)).toBe(i + 1);
    await h.advance(1);
  }
  expect(delays).toEqual([1 * MIN, 5 * MIN, 5 * MIN]);
  accept = true;
  await h.advance(5 * MIN);
  expect(peer.messages).toHaveLength(1);
  expect(h.spool.messageCount).toBe(0);
  const kinds = h.events.map((e) => `${e.type}:${e.attempt}`);
  expect(kinds).toEqual([
    "transient-failure:1",
    "transient-failure:2",
    "transient-failure:3",
    "transient-failure:4",
    "delivery:5",
  ]);
  expect(h.events.at(-1)!.queueTimeMs).toBe(h.clock.now() - t0);
});

test("retry delays carry ±10% jitter", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = () => "451 4.3.0 later";
  let r = 0;
  const seq = [0, 1, 0.25];
  await using h = await harness({
    port: peer.port,
    overrides: { random: () => seq[r++ % 3]!, retryMs: [100 * MIN] },
  });
  const slots = [];
  for (let i = 0; i < 3; i++) {
    slots.push((await h.send({ to: [`x${i}@d${i}.test`] })).slot);
    await h.scheduler.idle();
  }
  const got = slots.map((s) => h.spool.nextAttemptOf(s) - h.clock.now()).sort((a, b) => a - b);
  expect(got).toEqual([90 * MIN, 95 * MIN, 110 * MIN]);
});

test("a message past max age expires with a DSN to the sender saying 5.4.7", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = (to) => (to.startsWith("busy") ? "450 4.2.0 mailbox busy" : "250 2.1.5 ok");
  await using h = await harness({ port: peer.port, overrides: { retryMs: [MIN], maxAgeMs: 150_000 } });
  const { id, slot } = await h.send({ to: ["busy@dest.test"] });
  await h.scheduler.idle();
  await h.advance(MIN);
  await h.advance(MIN);
  expect(h.spool.attemptsOf(slot)).toBe(3);
  // The next retry would be past max age: it is due at the deadline, and expires then.
  expect(h.spool.nextAttemptOf(slot)).toBe(h.clock.now() + 30_000);
  await h.advance(30_000);
  const exp = h.events.find((e) => e.type === "expiration")!;
  expect(exp).toMatchObject({ id, recipient: "busy@dest.test", enhanced: "4.4.7" });
  expect(exp.text).toContain("450 4.2.0 mailbox busy");
  const dsnEvent = h.events.find((e) => e.type === "dsn")!;
  expect(dsnEvent).toMatchObject({ id, recipient: "alice@sender.test", action: "failed" });
  const dsn = peer.messages.find((m) => m.from === "")!;
  expect(dsn.to).toEqual(["alice@sender.test"]);
  expect(dsn.body).toContain("Action: failed");
  expect(dsn.body).toContain("Status: 5.4.7");
  expect(dsn.body).toContain("450 4.2.0 mailbox busy");
  expect(h.spool.messageCount).toBe(0);
});

test("a permanent failure sends one DSN naming only the failed recipient", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = (to) => (to.startsWith("bad") ? "550 5.1.1 no such user" : "250 2.1.5 ok");
  await using h = await harness({ port: peer.port });
  await h.send({ to: ["good@dest.test", "bad@dest.test"] });
  await h.scheduler.idle();
  expect(h.events.filter((e) => e.type === "bounce").map((e) => e.recipient)).toEqual(["bad@dest.test"]);
  expect(h.events.filter((e) => e.type === "delivery").map((e) => e.recipient)).toEqual([
    "good@dest.test",
    "alice@sender.test",
  ]);
  const dsns = peer.messages.filter((m) => m.from === "");
  expect(dsns).toHaveLength(1);
  expect(dsns[0]!.body).toContain("Final-Recipient: rfc822; bad@dest.test");
  expect(dsns[0]!.body).toContain("Status: 5.1.1");
  expect(dsns[0]!.body).not.toContain("Final-Recipient: rfc822; good@dest.test");
  expect(h.spool.messageCount).toBe(0);
});

test("a null sender never gets a DSN, and NOTIFY=NEVER suppresses it", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = () => "550 5.1.1 no such user";
  await using h = await harness({ port: peer.port });
  await h.send({ sender: "", to: ["bad@dest.test"] });
  await h.send({ to: ["bad2@dest.test"], recipients: [{ address: "bad2@dest.test", notify: ["NEVER"] }] });
  await h.scheduler.idle();
  expect(h.events.filter((e) => e.type === "bounce")).toHaveLength(2);
  expect(h.events.filter((e) => e.type === "dsn")).toHaveLength(0);
  expect(h.spool.messageCount).toBe(0);
  expect(peer.messages).toHaveLength(0);
});

test("NOTIFY=SUCCESS gets a 'delivered' DSN", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  await h.send({
    to: ["bob@dest.test"],
    recipients: [{ address: "bob@dest.test", notify: ["SUCCESS"], orcpt: "rfc822;bob@dest.test" }],
  });
  await h.scheduler.idle();
  const dsn = peer.messages.find((m) => m.from === "")!;
  expect(dsn.body).toContain("Action: delivered");
  expect(dsn.body).toContain("Original-Recipient: rfc822;bob@dest.test");
});

test("a delay warning goes out once after delayWarningMs, to recipients asking for DELAY", async () => {
  await using peer = await countingPeer(0);
  peer.rcpt = (to) => (to.startsWith("busy") || to.startsWith("quiet") ? "450 4.2.0 busy" : "250 2.1.5 ok");
  await using h = await harness({
    port: peer.port,
    overrides: { retryMs: [20 * MIN], delayWarningMs: 30 * MIN },
  });
  await h.send({
    to: ["busy@dest.test", "quiet@dest.test"],
    recipients: [{ address: "busy@dest.test" }, { address: "quiet@dest.test", notify: ["FAILURE"] }],
  });
  await h.scheduler.idle();
  await h.advance(20 * MIN);
  expect(h.events.filter((e) => e.type === "dsn")).toHaveLength(0);
  await h.advance(20 * MIN); // 40 min in queue: warn
  await h.advance(20 * MIN); // 60 min: no second warning
  const warnings = h.events.filter((e) => e.type === "delay-warning");
  expect(warnings.map((e) => e.recipient)).toEqual(["busy@dest.test"]);
  const dsns = peer.messages.filter((m) => m.from === "");
  expect(dsns).toHaveLength(1);
  expect(dsns[0]!.body).toContain("Action: delayed");
  expect(dsns[0]!.body).not.toContain("quiet@dest.test\r\nAction");
});

test("DNS permanent failure bounces every recipient 5.1.2 with a DSN", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  h.routes.set("nx.test", { kind: "permanent", enhanced: "5.1.2", reason: "nx.test: no such domain" });
  await h.send({ to: ["a@nx.test", "b@nx.test"] });
  await h.scheduler.idle();
  const bounces = h.events.filter((e) => e.type === "bounce");
  expect(bounces.map((e) => [e.recipient, e.code, e.enhanced])).toEqual([
    ["a@nx.test", 550, "5.1.2"],
    ["b@nx.test", 550, "5.1.2"],
  ]);
  const dsn = peer.messages.find((m) => m.from === "")!;
  expect(dsn.body).toContain("Status: 5.1.2");
});

test("a whole-site failure suspends the destination without burning attempts; mail flows when it is back", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port, overrides: { siteBackoffMs: [MIN, 2 * MIN] } });
  h.routes.set("down.test", hostsRoute(await closedPort()));
  const a = await h.send({ to: ["x@down.test"] });
  const b = await h.send({ to: ["y@down.test"] });
  await h.scheduler.idle();
  expect(h.spool.attemptsOf(a.slot)).toBe(0);
  expect(h.spool.attemptsOf(b.slot)).toBe(0);
  let s = h.scheduler.summary().find((x) => x.destination === "down.test")!;
  expect(s).toMatchObject({ state: "backoff", messages: 2, ready: 2 });
  expect(s.untilMs).toBe(h.clock.now() + MIN);
  expect(s.lastError).toContain("421");
  expect(h.destinationEvents.filter((e) => e.type === "suspension")).toHaveLength(1);
  // Still down after the first backoff: the next backoff is longer; still no attempt counted.
  await h.advance(MIN);
  s = h.scheduler.summary().find((x) => x.destination === "down.test")!;
  expect(s.untilMs).toBe(h.clock.now() + 2 * MIN);
  expect(h.spool.attemptsOf(a.slot)).toBe(0);
  // Other destinations are not held back.
  await h.send({ to: ["z@up.test"] });
  await h.scheduler.idle();
  expect(peer.messages.map((m) => m.to[0])).toEqual(["z@up.test"]);
  // The site comes back.
  h.routes.set("down.test", hostsRoute(peer.port));
  await h.advance(2 * MIN);
  expect(peer.messages.map((m) => m.to[0]).sort()).toEqual(["x@down.test", "y@down.test", "z@up.test"]);
  expect(
    h.events.filter((e) => e.type === "delivery" && e.destination === "down.test").map((e) => e.attempt),
  ).toEqual([1, 1]);
  expect(h.metrics.render()).toContain('mta_scheduler_attempts_total{result="site-failure"}');
});

test("a DNS transient failure is a site failure too", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  h.routes.set("flaky.test", { kind: "transient", reason: "SERVFAIL" });
  const { slot } = await h.send({ to: ["x@flaky.test"] });
  await h.scheduler.idle();
  expect(h.spool.attemptsOf(slot)).toBe(0);
  expect(h.scheduler.summary()[0]).toMatchObject({ destination: "flaky.test", state: "backoff" });
  h.routes.delete("flaky.test");
  // Nothing was scheduled: the message was held ready behind the backoff, which is lifted.
  expect(h.scheduler.flush({ destination: "flaky.test" })).toEqual({
    flushed: 1,
    backoffLifted: ["flaky.test"],
  });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(1);
});

test("flush() with no target lifts every destination's backoff, as postqueue -f does, and counts what was held", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  for (const d of ["a.test", "b.test", "c.test"]) h.routes.set(d, { kind: "transient", reason: "SERVFAIL" });
  for (const d of ["a.test", "b.test", "c.test"]) await h.send({ to: [`x@${d}`] });
  await h.scheduler.idle();
  expect(h.scheduler.summary().map((s) => s.state)).toEqual(["backoff", "backoff", "backoff"]);
  h.scheduler.suspend("c.test"); // an operator's suspension is not a backoff: flush leaves it
  for (const d of ["a.test", "b.test", "c.test"]) h.routes.delete(d);
  expect(h.scheduler.flush()).toEqual({ flushed: 2, backoffLifted: ["a.test", "b.test"] });
  await h.scheduler.idle();
  expect(peer.messages.map((m) => m.to[0]).sort()).toEqual(["x@a.test", "x@b.test"]);
  expect(h.scheduler.summary().find((s) => s.destination === "c.test")?.state).toBe("suspended");
});

test("flush names the sites whose backoff it lifted: a smarthost once, for every domain it carries", async () => {
  await using peer = await countingPeer(0);
  await using h = await harness({ port: peer.port });
  const relay = "relay.test:25";
  const down = await closedPort();
  for (const d of ["a.test", "b.test"]) h.routes.set(d, { ...hostsRoute(down), site: relay });
  for (const d of ["a.test", "b.test"]) await h.send({ to: [`x@${d}`] });
  await h.scheduler.idle();
  expect(h.scheduler.summary().map((s) => s.state)).toEqual(["backoff", "backoff"]);
  for (const d of ["a.test", "b.test"]) h.routes.set(d, { ...hostsRoute(peer.port), site: relay });
  expect(h.scheduler.flush({ destination: "a.test" })).toEqual({ flushed: 2, backoffLifted: [relay] });
  await h.scheduler.idle();
  expect(peer.messages.map((m) => m.to[0]).sort()).toEqual(["x@a.test", "x@b.test"]);
});

test("after a restart the reopened spool's deferred messages are found and delivered", async () => {
  await using peer = await countingPeer(0);
  let up = false;
  peer.rcpt = () => (up ? "250 2.1.5 ok" : "451 4.3.0 try later");
  await using h = await harness({ port: peer.port });
  const { id } = await h.send({ to: ["bob@dest.test"] });
  await h.scheduler.idle();
  const nextMs = h.spool.nextAttemptOf(h.spool.slotOf(id)!);
  await h.shutdown();
  await h.reopen();
  const s = h.scheduler.summary();
  expect(s).toHaveLength(1);
  expect(s[0]).toMatchObject({ destination: "dest.test", messages: 1, nextAttemptMs: nextMs, ready: 0 });
  up = true;
  await h.advance(nextMs - h.clock.now());
  expect(peer.messages).toHaveLength(1);
  expect(h.events.filter((e) => e.type === "delivery").map((e) => [e.id, e.attempt])).toEqual([[id, 2]]);
});

test("flush by id retries one deferred message now; flush() all of them", async () => {
  await using peer = await countingPeer(0);
  let up = false;
  peer.rcpt = () => (up ? "250 2.1.5 ok" : "451 4.3.0 try later");
  await using h = await harness({ port: peer.port });
  const a = await h.send({ to: ["a@one.test"] });
  await h.send({ to: ["b@two.test"] });
  await h.send({ to: ["c@two.test"] });
  await h.scheduler.idle();
  up = true;
  expect(h.scheduler.flush({ id: a.id }).flushed).toBe(1);
  await h.scheduler.idle();
  expect(peer.messages.map((m) => m.to[0])).toEqual(["a@one.test"]);
  expect(h.scheduler.flush().flushed).toBe(2);
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(3);
});
