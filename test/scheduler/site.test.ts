/**
 * The site object on its own (no sockets): limits, suspension precedence, whole-site backoff, rule
 * firings, a reload's new policy; and the slot table's generations.
 */
import { describe, expect, test } from "bun:test";
import { AssertionError, ManualClock } from "../../src/lib/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import type { DestinationPolicy } from "../../src/route/index.ts";
import { Site, type SiteEnv } from "../../src/scheduler/index.ts";
import { SlotTable, slotOfRef } from "../../src/scheduler/_slots.ts";
import type { DestinationEvent } from "../../src/scheduler/index.ts";

const POLICY: DestinationPolicy = {
  maxConnections: 4,
  maxMessagesPerConnection: 100,
  tls: "off",
  tlsVerify: false,
};

function env(clock: ManualClock) {
  const events: DestinationEvent[] = [];
  const wakes: number[] = [];
  let flushed = 0;
  const e: SiteEnv = {
    now: () => clock.now(),
    random: () => 0.5,
    wakeAt: (_s, at) => wakes.push(at),
    flushSite: () => flushed++,
    onEvent: (ev) => events.push(ev),
    log: silentLogger(),
  };
  return { e, events, wakes, flushed: () => flushed };
}

const reply = (code: number, enhanced: string, text: string) => ({ code, enhanced, lines: [text] });

describe("Site", () => {
  test("its limit is policy x sources, capped by the window (slow start), a throttle and the global cap", () => {
    const clock = new ManualClock();
    const { e } = env(clock);
    const s = new Site(0, "d.test", { ...POLICY, initialWindow: 2 }, 2, e);
    expect(s.limit(clock.now(), 1000)).toBe(2); // the window starts at 2
    for (let i = 0; i < 10; i++) s.onSuccess();
    expect(s.limit(clock.now(), 1000)).toBe(8); // 4 per source x 2 sources
    expect(s.limit(clock.now(), 3)).toBe(3); // the global cap
    s.fireRule(
      { name: "slow", action: "throttle", forMs: 60_000, maxConnections: 1 },
      reply(421, "4.7.0", "slow down"),
    );
    expect(s.limit(clock.now(), 1000)).toBe(1);
    expect(s.state(clock.now())).toMatchObject({ state: "throttled", reason: "rule slow" });
    clock.advance(60_000);
    s.expireRestrictions(clock.now());
    expect(s.limit(clock.now(), 1000)).toBe(8);
  });

  test("whole-site failures back off by the list (last repeated) and do not stack while backing off", () => {
    const clock = new ManualClock();
    const { e, events } = env(clock);
    const s = new Site(0, "dead.test", POLICY, 1, e);
    const backoff = [1000, 5000];
    const r = reply(421, "4.4.1", "refused");
    s.onSiteFailure(r, backoff, 0);
    expect(s.suspendedUntilMs).toBe(clock.now() + 1000);
    s.onSiteFailure(r, backoff, 0); // a worker that was in flight: no longer backoff
    expect(s.suspendedUntilMs).toBe(clock.now() + 1000);
    clock.advance(1000);
    s.expireRestrictions(clock.now());
    s.onSiteFailure(r, backoff, 0);
    expect(s.suspendedUntilMs).toBe(clock.now() + 5000);
    clock.advance(5000);
    s.expireRestrictions(clock.now());
    s.onSiteFailure(r, backoff, 0);
    expect(s.suspendedUntilMs).toBe(clock.now() + 5000);
    expect(s.state(clock.now())).toMatchObject({ state: "backoff" });
    expect(events.filter((x) => x.type === "suspension").map((x) => x.kind)).toEqual([
      "site",
      "site",
      "site",
    ]);
    s.onSuccess();
    expect(s.failuresInRow).toBe(0);
  });

  test("an operator's suspension is never shortened by an automatic one; resume ends every restriction", () => {
    const clock = new ManualClock();
    const { e } = env(clock);
    const s = new Site(0, "d.test", POLICY, 1, e);
    expect(s.suspend(Number.POSITIVE_INFINITY, "admin", "maintenance")).toBe(true);
    s.onSiteFailure(reply(421, "4.4.1", "refused"), [1000], 0);
    expect(s.suspendedUntilMs).toBe(Number.POSITIVE_INFINITY);
    expect(s.state(clock.now())).toEqual({ state: "suspended", reason: "maintenance" });
    s.fireRule({ name: "b", action: "bounce", forMs: 1000 }, reply(450, "4.7.1", "go away"));
    expect(s.bouncing(clock.now())).toMatchObject({ code: 550 });
    s.resume();
    expect(s.isSuspended(clock.now())).toBe(false);
    expect(s.bouncing(clock.now())).toBeUndefined();
  });

  test("the first reply matching a rule fires it once per attempt; every failure is remembered", () => {
    const clock = new ManualClock();
    const { e, events } = env(clock);
    const s = new Site(0, "d.test", POLICY, 1, e);
    s.onReplies([
      reply(450, "4.2.0", "mailbox busy"),
      reply(421, "4.7.0", "try again later"),
      reply(421, "4.7.0", "try again later"),
    ]);
    expect(events.filter((x) => x.type === "rule").map((x) => x.rule)).toEqual(["rate-limited"]);
    expect(s.lastError).toBe("421 4.7.0 try again later");
  });

  test("a reload's policy applies at once: a new limit, a new rate; an unchanged rate keeps its bucket", () => {
    const clock = new ManualClock();
    const { e } = env(clock);
    const rate = { count: 2, perMs: 1000 };
    const s = new Site(0, "d.test", { ...POLICY, maxConnections: 1, messageRate: rate }, 1, e);
    expect(s.takeMessageToken(clock.now())).toBe(0);
    expect(s.takeMessageToken(clock.now())).toBe(0);
    expect(s.takeMessageToken(clock.now())).toBeGreaterThan(0);
    s.applyPolicy({ ...POLICY, maxConnections: 6, messageRate: { ...rate }, tls: "required" }, 1);
    expect(s.takeMessageToken(clock.now())).toBeGreaterThan(0); // same rate: not refilled by the reload
    for (let i = 0; i < 10; i++) s.onSuccess();
    expect(s.limit(clock.now(), 1000)).toBe(6);
    expect(s.policy.tls).toBe("required");
    s.applyPolicy({ ...POLICY, maxConnections: 6, messageRate: { count: 100, perMs: 1000 } }, 1);
    expect(s.takeMessageToken(clock.now())).toBe(0);
  });
});

describe("SlotTable", () => {
  test("a reference goes stale when its slot is renewed or released, and asserting it then throws", () => {
    const t = new SlotTable();
    t.ensure(5000);
    const ref = t.renew(42);
    expect(slotOfRef(ref)).toBe(42);
    expect(t.isCurrent(ref)).toBe(true);
    t.release(42); // the message left; the spool may hand the slot to another message
    expect(t.isCurrent(ref)).toBe(false);
    expect(() => t.assertCurrent(ref, "attempt outcome")).toThrow(AssertionError);
    const next = t.renew(42);
    expect(next).not.toBe(ref);
    expect(t.isCurrent(next)).toBe(true);
    expect(() => t.ensure(2 ** 24)).toThrow(AssertionError);
  });
});
