/**
 * Test harness for the scheduler: a real spool in a temp dir, a real Deliverer, a ManualClock, and a
 * loopback SMTP peer that delays its replies and counts concurrent sessions.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Deliverer, RFC5321_TIMEOUTS } from "../../src/deliverer/index.ts";
import { ManualClock } from "../../src/lib/index.ts";
import { AcceptPipeline } from "../../src/accept/index.ts";
import { DeliveryLog, Metrics, silentLogger } from "../../src/observe/index.ts";
import type { DestinationPolicy } from "../../src/route/index.ts";
import {
  type DestinationEvent,
  Scheduler,
  type SchedulerEvent,
  type SchedulerOptions,
} from "../../src/scheduler/index.ts";
import { type NewMessage, Spool } from "../../src/spool/index.ts";
import { type TestRoute, testRouter } from "../support/router.ts";

export const FAST = {
  ...RFC5321_TIMEOUTS,
  connectMs: 1000,
  greetingMs: 1000,
  ehloMs: 1000,
  mailMs: 1000,
  rcptMs: 1000,
  dataInitMs: 1000,
  dataBlockMs: 1000,
  dataDoneMs: 2000,
  rsetMs: 1000,
  quitMs: 300,
};

export const POLICY: DestinationPolicy = {
  maxConnections: 5,
  maxMessagesPerConnection: 100,
  tls: "off",
  tlsVerify: false,
};

export interface Harness extends AsyncDisposable {
  dir: string;
  clock: ManualClock;
  spool: Spool;
  deliverer: Deliverer;
  scheduler: Scheduler;
  metrics: Metrics;
  events: SchedulerEvent[];
  destinationEvents: DestinationEvent[];
  /** Where each destination goes; tests may change it between attempts. */
  routes: Map<string, TestRoute>;
  /** Appends a message to the spool and enqueues it. */
  send(m: Partial<NewMessage> & { to: string[] }): Promise<{ id: string; slot: number }>;
  /** Advances the clock, runs what is due, and waits until the scheduler is idle. */
  advance(ms: number): Promise<void>;
  /** Stops the scheduler and closes the spool, keeping the directory (for restart tests). */
  shutdown(): Promise<void>;
  reopen(overrides?: Partial<SchedulerOptions>): Promise<void>;
}

export function hostsRoute(port: number): TestRoute {
  return { kind: "hosts", hosts: [{ name: "peer.test", ip: "127.0.0.1", port }] };
}

export async function harness(opts: {
  port: number;
  overrides?: Partial<SchedulerOptions>;
  policy?: Partial<DestinationPolicy>;
  /** Per-site policy (over `policy`); MX rollup semantics for the test router. */
  policyFor?: (site: string) => DestinationPolicy;
  rollup?: boolean;
  dir?: string;
}): Promise<Harness> {
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "mta-sched-"));
  const clock = new ManualClock();
  const metrics = new Metrics();
  const events: SchedulerEvent[] = [];
  const destinationEvents: DestinationEvent[] = [];
  const routes = new Map<string, TestRoute>();
  const deliverer = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 1000,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  const make = async (overrides?: Partial<SchedulerOptions>) => {
    const spool = await Spool.open({ dir, sync: false, clock });
    // DSNs take the product's path: the accept pipeline (no delivery log file here).
    const pipeline = new AcceptPipeline({
      spool,
      deliveryLog: new DeliveryLog(""),
      log: silentLogger(),
      metrics,
    });
    const scheduler = new Scheduler({
      spool,
      deliverer,
      dsn: pipeline,
      router: testRouter({
        route: (d) => routes.get(d) ?? hostsRoute(opts.port),
        policy: opts.policyFor ?? (() => ({ ...POLICY, ...opts.policy })),
        ...(opts.rollup ? { rollup: true } : {}),
      }),
      hostname: "mta.test",
      retryMs: [60_000, 300_000],
      maxAgeMs: 24 * 3_600_000,
      delayWarningMs: 0,
      maxConnections: 20,
      random: () => 0.5, // no jitter: exact retry times
      clock,
      log: silentLogger(),
      metrics,
      onEvent: (e) => events.push(e),
      onDestinationEvent: (e) => destinationEvents.push(e),
      ...opts.overrides,
      ...overrides,
    });
    pipeline.queue = scheduler;
    return { spool, scheduler };
  };
  let { spool, scheduler } = await make();
  scheduler.start();
  const h: Harness = {
    dir,
    clock,
    get spool() {
      return spool;
    },
    deliverer,
    get scheduler() {
      return scheduler;
    },
    metrics,
    events,
    destinationEvents,
    routes,
    async send(m) {
      const stored = await spool.append({
        sender: m.sender ?? "alice@sender.test",
        destination: m.destination ?? m.to[0]!.split("@")[1]!,
        recipients: m.recipients ?? m.to.map((address) => ({ address })),
        attributes: m.attributes ?? {},
        body: m.body ?? new TextEncoder().encode("Subject: test\r\nFrom: alice@sender.test\r\n\r\nHello\r\n"),
      });
      scheduler.enqueue(stored.slot);
      return stored;
    },
    async advance(ms) {
      clock.advance(ms);
      scheduler.tick();
      await scheduler.idle();
    },
    async shutdown() {
      await scheduler.stop(2000);
      await spool.close();
    },
    async reopen(overrides) {
      ({ spool, scheduler } = await make(overrides));
      scheduler.start();
    },
    async [Symbol.asyncDispose]() {
      await scheduler.stop(2000);
      await deliverer.close();
      await spool.close().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return h;
}

export { type CountingPeer, countingPeer } from "../support/countingPeer.ts";
