/**
 * `mta queue` operations: every command through the control API of a live daemon (real spool, real
 * scheduler and deliverer, real HTTP) and on the same spool once stopped (LocalQueueClient), with
 * identical answers; actions recorded in the spool and the delivery log.
 */
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  HttpQueueClient,
  LocalQueueClient,
  openQueueClient,
  QueueError,
  QueueOps,
  queueRoutes,
} from "../../src/admin/index.ts";
import { AcceptPipeline } from "../../src/accept/index.ts";
import { type Config, parseConfigText } from "../../src/config/index.ts";
import { Deliverer, RFC5321_TIMEOUTS } from "../../src/deliverer/index.ts";
import { DeliveryLog, Metrics, silentLogger, startControlServer } from "../../src/observe/index.ts";
import { Scheduler } from "../../src/scheduler/index.ts";
import { type TestRoute, testRouter } from "../support/router.ts";
import { Spool } from "../../src/spool/index.ts";

const HOUR = 3_600_000;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "mta-queue-"));
  dirs.push(d);
  return d;
}

const TOKEN = "queue-test-token";
const AUTH = { authorization: `Bearer ${TOKEN}` };
const JSON_AUTH = { ...AUTH, "content-type": "application/json" };

function configFor(dir: string, controlPort = 0): Config {
  return parseConfigText(
    [
      "hostname: mta.test",
      `spool: { dir: ${join(dir, "spool")}, sync: false }`,
      `control: { address: 127.0.0.1:${controlPort}, token: ${TOKEN} }`,
      // Loopback only: DNS lookups go to a port where nothing answers, never to the machine's resolver.
      'dns: { servers: ["127.0.0.1:9"], timeout: 1s, attempts: 1 }',
      `log: { deliveries: ${join(dir, "deliveries.jsonl")} }`,
    ].join("\n"),
    join(dir, "mta.yaml"),
  ).config;
}

/** 30 messages to three destinations from two senders, all deferred for an hour after one attempt. */
const T0 = Date.now();
async function fill(dir: string): Promise<void> {
  const spool = await Spool.open({ dir: join(dir, "spool"), sync: false });
  const now = T0;
  for (let i = 0; i < 30; i++) {
    const d = `d${i % 3}.test`;
    const n = 1 + (i % 2);
    const { slot } = await spool.append({
      sender: i % 5 === 0 ? "alerts@origin.test" : "app@origin.test",
      destination: d,
      recipients: Array.from({ length: n }, (_, r) => ({ address: `u${i}.${r}@${d}` })),
      attributes: { listener: "test" },
      body: new TextEncoder().encode(
        `From: app@origin.test\r\nTo: u${i}@${d}\r\nSubject: message ${i}\r\n  folded\r\n\r\nbody ${i}\r\n`,
      ),
      arrivalMs: now - (30 - i) * 60_000,
    });
    await spool.recordOutcome(slot, {
      recipients: Array.from({ length: n }, (_, index) => ({
        index,
        state: "pending" as const,
        reply: "451 4.3.0 try later",
      })),
      attempts: 1,
      nextAttemptMs: now + HOUR + i * 1000,
    });
  }
  await spool.close();
}

const FAST = { ...RFC5321_TIMEOUTS, connectMs: 500, greetingMs: 500, quitMs: 200 };

interface Live {
  client: HttpQueueClient;
  ops: QueueOps;
  spool: Spool;
  scheduler: Scheduler;
  metrics: Metrics;
  port: number;
  stop(): Promise<void>;
}

/** The daemon's pieces, wired as the daemon wires them; routes default to a closed port. */
async function startLive(dir: string, routes = new Map<string, TestRoute>()): Promise<Live> {
  const metrics = new Metrics();
  const spool = await Spool.open({ dir: join(dir, "spool"), sync: false, metrics });
  const deliverer = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 1000,
    log: silentLogger(),
    metrics,
  });
  const deliveryLog = new DeliveryLog(join(dir, "deliveries.jsonl"));
  // DSNs through the accept pipeline, as the engine wires it.
  const pipeline = new AcceptPipeline({ spool, deliveryLog, log: silentLogger(), metrics: new Metrics() });
  const scheduler = new Scheduler({
    spool,
    deliverer,
    dsn: pipeline,
    router: testRouter({
      route: (d) =>
        routes.get(d) ?? { kind: "hosts", hosts: [{ name: "closed.test", ip: "127.0.0.1", port: 9 }] },
      policy: () => ({ maxConnections: 10, maxMessagesPerConnection: 100, tls: "off", tlsVerify: false }),
    }),
    hostname: "mta.test",
    retryMs: [HOUR],
    maxAgeMs: 5 * 24 * HOUR,
    delayWarningMs: 0,
    maxConnections: 200,
    onEvent: (e) => deliveryLog.write({ ...e }),
    log: silentLogger(),
    metrics,
  });
  pipeline.queue = scheduler;
  const ops = new QueueOps({
    spool,
    scheduler,
    deliveryLog,
    hostname: "mta.test",
    metrics,
    log: silentLogger(),
  });
  const control = startControlServer({
    host: "127.0.0.1",
    port: 0,
    token: TOKEN,
    log: silentLogger(),
    metrics,
    routes: queueRoutes(ops),
  });
  scheduler.start();
  return {
    client: new HttpQueueClient("127.0.0.1", control.port, TOKEN),
    ops,
    spool,
    scheduler,
    metrics,
    port: control.port,
    async stop() {
      await scheduler.stop(1000);
      await deliverer.close();
      await control.stop();
      deliveryLog.close();
      await spool.close();
    },
  };
}

function withoutClock<T>(v: T): T {
  return JSON.parse(JSON.stringify(v, (k, x) => (k === "nowMs" ? undefined : x)));
}

function stripStats(s: Record<string, unknown>): Record<string, unknown> {
  // Counters of the running process, not of the spool's content.
  const { groupCommit: _g, bodyCache: _b, compactions: _c, ...rest } = s;
  return rest;
}

test("every read command answers the same through a live daemon's control API and on the stopped spool", async () => {
  const dir = tmp();
  await fill(dir);
  const live = await startLive(dir);
  const ask = async (c: HttpQueueClient | LocalQueueClient) => {
    const list = await c.list({});
    const id = list.messages[3]!.id;
    return {
      summary: await c.summary({}),
      top2: await c.summary({ top: 2, sort: "oldest" }),
      byDest: await c.list({ destination: "d1.test" }),
      bySender: await c.list({ sender: "alerts@origin.test" }),
      deferred: await c.list({ state: "deferred", olderThanMs: 10 * 60_000, limit: 5 }),
      active: await c.list({ state: "active" }),
      list,
      show: await c.show(id, { body: true }),
      stats: stripStats((await c.stats()) as unknown as Record<string, unknown>),
      verify: await c.verify(),
      dryBounce: await c.bounce({ destination: "d2.test" }),
    };
  };
  const viaDaemon = await ask(live.client);
  await live.stop();
  const viaSpool = await ask(new LocalQueueClient(configFor(dir)));

  expect(withoutClock(viaSpool)).toEqual(withoutClock(viaDaemon));
  // And the answers are right, not just equal.
  const s = viaDaemon.summary;
  expect(s.totals).toMatchObject({ destinations: 3, messages: 30, recipients: 45 });
  expect(s.destinations.map((r) => [r.destination, r.messages, r.recipients])).toEqual([
    ["d0.test", 10, 15],
    ["d1.test", 10, 15],
    ["d2.test", 10, 15],
  ]);
  expect(s.destinations[0]!.nextAttemptMs).toBeGreaterThan(Date.now() + HOUR - 60_000);
  expect(viaDaemon.top2.destinations.map((r) => r.destination)).toEqual(["d0.test", "d1.test"]);
  expect(viaDaemon.top2.omitted).toBe(1);
  expect(viaDaemon.byDest.matched).toBe(10);
  expect(viaDaemon.byDest.messages.every((m) => m.destination === "d1.test")).toBe(true);
  expect(viaDaemon.bySender.matched).toBe(6);
  // Arrived i*1 min after T0-30min; older than 10 min: i = 0..20.
  expect(viaDaemon.deferred).toMatchObject({ matched: 21 });
  expect(viaDaemon.deferred.messages).toHaveLength(5);
  expect(viaDaemon.active.matched).toBe(0);
  const show = viaDaemon.show;
  expect(show.recipients[0]).toMatchObject({ state: "pending", lastReply: "451 4.3.0 try later" });
  // Outcomes recorded without a TLS note (as by a version before them): `tls` is null, not absent.
  expect(show.recipients.map((r) => r.tls)).toEqual(show.recipients.map(() => null));
  expect(show.attempts).toBe(1);
  expect(show.headers).toContainEqual({ name: "Subject", value: "message 3 folded" });
  expect(show.body).toContain("body 3\r\n");
  expect(viaDaemon.verify.ok).toBe(true);
  expect(viaDaemon.dryBounce).toMatchObject({ action: "bounce", matched: 10, done: false, affected: 0 });
});

test("actions give the same answers live and offline; suspend and resume need the daemon", async () => {
  const a = tmp();
  const b = tmp();
  await fill(a);
  await fill(b);
  const live = await startLive(a);
  const local = new LocalQueueClient(configFor(b));
  // Connections in flight are the running process's state (the flushed message may be in an attempt
  // right then), not the spool's content.
  const strip = (r: unknown) =>
    JSON.parse(
      JSON.stringify(r, (k, x) =>
        k === "sample" ? (x as string[]).length : k === "live" || k === "activeConnections" ? undefined : x,
      ),
    );
  const run = async (c: HttpQueueClient | LocalQueueClient) => {
    const first = (await c.list({ destination: "d0.test", sender: "app@origin.test" })).messages[0]!.id;
    return {
      flushOne: await c.flush({ id: first }),
      noSelector: await c.bounce({}).catch((e: QueueError) => [e.code, e.status]),
      unknown: await c.show("0000000000000Z").catch((e: QueueError) => [e.code, e.status]),
      badState: await c.list({ state: "nonsense" as "active" }).catch((e: QueueError) => [e.code, e.status]),
      count: await c.bounce({ destination: "d1.test" }),
      bounce: await c.bounce({ destination: "d1.test" }, { yes: true }),
      del: await c.delete({ sender: "alerts@origin.test" }, { yes: true }),
      after: (await c.summary({})).totals,
    };
  };
  const viaDaemon = await run(live.client);
  const viaSpool = await run(local);
  expect(strip(viaSpool)).toEqual(strip(viaDaemon));
  expect(viaDaemon.flushOne).toEqual({ flushed: 1, backoffLifted: [], live: true });
  expect(viaSpool.flushOne).toEqual({ flushed: 1, backoffLifted: [], live: false });
  expect(viaDaemon.noSelector).toEqual(["usage", 400]);
  expect(viaDaemon.unknown).toEqual(["data", 404]);
  expect(viaDaemon.bounce).toMatchObject({
    matched: 10,
    done: true,
    affected: 10,
    recipients: 15,
    dsns: 10,
    failed: [],
  });
  // 6 from alerts@ minus the 2 of them already bounced with d1.test.
  expect(viaDaemon.del).toMatchObject({ matched: 4, affected: 4, recipients: 6, dsns: 0 });
  // 30 - 10 bounced - 4 deleted + 10 DSNs to origin.test.
  expect(viaDaemon.after.messages).toBe(26);

  // Suspensions live in the daemon.
  expect(await live.client.suspend("d0.test", 2 * HOUR)).toMatchObject({ destination: "d0.test" });
  const rows = (await live.client.summary({})).destinations;
  let row = rows.find((r) => r.destination === "d0.test")!;
  expect(row).toMatchObject({ state: "suspended", reason: "suspended by operator" });
  // Held: suspended, or backing off after a site failure (origin.test's DSNs meet a closed port).
  const held = rows.filter((r) => r.state === "suspended" || r.state === "backoff");
  expect((await live.client.list({ state: "held" })).matched).toBe(held.reduce((n, r) => n + r.messages, 0));
  await live.client.resume("d0.test");
  row = (await live.client.summary({})).destinations.find((r) => r.destination === "d0.test")!;
  expect(row.state).not.toBe("suspended");
  const offline = await local.suspend("d0.test").catch((e: QueueError) => e);
  expect(offline).toBeInstanceOf(QueueError);
  expect((offline as QueueError).code).toBe("unavailable");
  expect((offline as QueueError).message).toContain("needs a running daemon");
  await live.stop();

  // Recorded in the spool and the delivery log, the same way on both sides.
  for (const dir of [a, b]) {
    const spool = await Spool.openReadOnly({ dir: join(dir, "spool") });
    expect(spool.recovery.messages).toBe(26);
    const dests = spool.countsByDestination();
    expect(dests.has("d1.test")).toBe(false);
    expect(dests.get("origin.test")?.messages).toBe(10);
    await spool.close();
    const lines = readFileSync(join(dir, "deliveries.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === "admin-bounce")).toHaveLength(15);
    // alerts@ sent i = 0, 5, 15, 20 (10 and 25 went with d1.test): 1 + 2 + 2 + 1 recipients.
    expect(lines.filter((l) => l.type === "admin-delete")).toHaveLength(6);
    expect(lines.filter((l) => l.type === "dsn" && l.reason === "admin-bounce")).toHaveLength(10);
  }
  // The offline flush was recorded: that message is due at once on the next start.
  const spool = await Spool.openReadOnly({ dir: join(b, "spool") });
  const ops = new QueueOps({ spool, hostname: "mta.test" });
  expect(ops.list({ state: "active", destination: "d0.test" }).matched).toBe(1);
  await spool.close();
});

test("a live bounce holds the destination while attempts to it are in flight, then resumes it", async () => {
  const dir = tmp();
  // A peer that accepts and never greets: attempts stay in flight until the greeting timeout.
  const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const routes = new Map<string, TestRoute>([
    ["slow.test", { kind: "hosts", hosts: [{ name: "slow", ip: "127.0.0.1", port: silent.port }] }],
  ]);
  const live = await startLive(dir, routes);
  try {
    for (let i = 0; i < 5; i++) {
      const { slot } = await live.spool.append({
        sender: "",
        destination: "slow.test",
        recipients: [{ address: `u${i}@slow.test` }],
        body: new TextEncoder().encode("Subject: x\r\n\r\nx\r\n"),
      });
      live.scheduler.enqueue(slot);
    }
    await Bun.sleep(50);
    expect(live.scheduler.summary()[0]!.activeConnections).toBeGreaterThan(0);
    const r = await live.client.bounce({ destination: "slow.test" }, { yes: true });
    expect(r).toMatchObject({ matched: 5, affected: 5, failed: [] });
    const s = (await live.client.summary({})).destinations.find((x) => x.destination === "slow.test");
    expect(s?.messages ?? 0).toBe(0);
    expect(s?.state ?? "idle").not.toBe("suspended");
  } finally {
    await live.stop();
    silent.stop(true);
  }
});

test("openQueueClient picks the daemon when its control API answers, else the spool", async () => {
  const dir = tmp();
  await fill(dir);
  const live = await startLive(dir);
  try {
    const viaDaemon = await openQueueClient(configFor(dir, live.port));
    expect(viaDaemon.mode).toBe("daemon");
    expect((await viaDaemon.summary()).totals.messages).toBe(30);
    // Offline read-only commands work next to a daemon (no lock); actions are refused by the lock.
    const local = await openQueueClient(configFor(dir, live.port), { prefer: "local" });
    expect(local.mode).toBe("local");
    expect((await local.summary()).totals.messages).toBe(30);
    expect(local.flush({}).then(() => "flushed")).rejects.toMatchObject({ code: "spool-locked" });
  } finally {
    await live.stop();
  }
  const after = await openQueueClient(configFor(dir, live.port), { timeoutMs: 300 });
  expect(after.mode).toBe("local");
  expect((await after.flush({})).flushed).toBe(30);
});

test("control API: bad requests get 4xx JSON errors", async () => {
  const dir = tmp();
  await fill(dir);
  const live = await startLive(dir);
  try {
    const base = `http://127.0.0.1:${live.port}`;
    const bad = await fetch(`${base}/api/v1/queue/bounce`, {
      method: "POST",
      body: "{nope",
      headers: JSON_AUTH,
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toContain("malformed JSON");
    const top = await fetch(`${base}/api/v1/queue/summary?top=abc`, { headers: AUTH });
    expect(top.status).toBe(400);
    const sort = await fetch(`${base}/api/v1/queue/summary?sort=size`, { headers: AUTH });
    expect(((await sort.json()) as { error: string }).error).toContain("sort must be one of");
    const susp = await fetch(`${base}/api/v1/queue/suspend`, {
      method: "POST",
      body: "{}",
      headers: JSON_AUTH,
    });
    expect(susp.status).toBe(400);
    const none = await fetch(`${base}/api/v1/queue/messages/NOPE`, { headers: AUTH });
    expect(none.status).toBe(404);
  } finally {
    await live.stop();
  }
});
