/**
 * A reload in the running scheduler: ready mail is re-keyed when the routes change, live sites take
 * their new policy, and the new retry schedule applies to the next soft failure.
 */
import { expect, test } from "bun:test";
import type { DestinationPolicy, RouteDecision } from "../../src/route/index.ts";
import type { SchedulerRouter, SchedulerSettings } from "../../src/scheduler/index.ts";
import { countingPeer, harness, POLICY } from "./_harness.ts";

const SETTINGS: SchedulerSettings = {
  retryMs: [60_000, 300_000],
  maxAgeMs: 24 * 3_600_000,
  delayWarningMs: 0,
  maxConnections: 20,
};

/** A router whose table the test changes, as a reload of the configuration would. */
function mutableRouter(port: number) {
  const r = {
    version: 0,
    /** Domain -> site (absent: the domain itself). */
    sites: new Map<string, string>(),
    policies: new Map<string, Partial<DestinationPolicy>>(),
    siteOf: (d: string) => r.sites.get(d) ?? d,
    policyOf: (site: string): DestinationPolicy => ({
      ...POLICY,
      initialWindow: 10,
      ...r.policies.get(site),
    }),
    route: async (d: string): Promise<RouteDecision> => ({
      kind: "hosts",
      site: r.siteOf(d),
      hosts: [{ name: "peer.test", ip: "127.0.0.1", port }],
    }),
  };
  return r satisfies SchedulerRouter;
}

test("a reload that routes a held domain through a new next hop moves its ready mail there", async () => {
  await using peer = await countingPeer(0);
  const router = mutableRouter(peer.port);
  await using h = await harness({ port: peer.port, overrides: { router } });
  h.scheduler.suspend("held.test");
  for (let i = 0; i < 5; i++) await h.send({ to: [`u${i}@held.test`] });
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(0);
  expect(h.scheduler.summary().find((s) => s.destination === "held.test")).toMatchObject({
    ready: 5,
    state: "suspended",
  });
  router.sites.set("held.test", "relay:25");
  router.version++;
  h.scheduler.reload(SETTINGS);
  await h.scheduler.idle();
  expect(peer.messages).toHaveLength(5);
  expect(h.events.every((e) => e.type === "delivery" && e.attempt === 1)).toBe(true);
});

test("a reload gives a live site its new connection limit and the next soft failure the new retry list", async () => {
  await using peer = await countingPeer(30);
  const router = mutableRouter(peer.port);
  router.policies.set("busy.test", { maxConnections: 1 });
  await using h = await harness({ port: peer.port, overrides: { router } });
  for (let i = 0; i < 6; i++) await h.send({ to: [`a${i}@busy.test`] });
  await h.scheduler.idle();
  expect(peer.maxOpen).toBe(1);
  router.policies.set("busy.test", { maxConnections: 3 });
  h.scheduler.reload({ ...SETTINGS, retryMs: [7_000] });
  peer.maxOpen = 0;
  for (let i = 0; i < 12; i++) await h.send({ to: [`b${i}@busy.test`] });
  await h.scheduler.idle();
  expect(peer.maxOpen).toBe(3);
  peer.rcpt = () => "451 4.3.0 try later";
  const { slot } = await h.send({ to: ["soft@busy.test"] });
  await h.scheduler.idle();
  expect(h.scheduler.nextAttemptOf(slot)).toBe(h.clock.now() + 7_000);
});
