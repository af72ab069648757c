/**
 * An administrative bounce under load: 10,000 messages to one destination (with attempts to it in
 * flight) are bounced through the control API while deliveries to another destination go on to a
 * real receiving server (Postfix's smtp-sink).
 */
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HttpQueueClient, QueueOps, queueRoutes } from "../../src/admin/index.ts";
import { Deliverer, RFC5321_TIMEOUTS } from "../../src/deliverer/index.ts";
import {
  createLogger,
  DeliveryLog,
  Metrics,
  silentLogger,
  startControlServer,
} from "../../src/observe/index.ts";
import { AcceptPipeline } from "../../src/accept/index.ts";
import { Scheduler } from "../../src/scheduler/index.ts";
import { type TestRoute, testRouter } from "../support/router.ts";
import { Spool } from "../../src/spool/index.ts";
import { startSink } from "../support/sink.ts";
import { lacking } from "../support/peers.ts";

test.skipIf(lacking("smtp-sink"))(
  "a bounce of 10,000 messages to one destination while deliveries to another go on",
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "mta-queue-load-"));
    await using sink = await startSink({ dir });
    // Accepts and never greets: attempts to stuck.test stay in flight until the greeting timeout.
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const routes = new Map<string, TestRoute>([
      ["stuck.test", { kind: "hosts", hosts: [{ name: "stuck", ip: "127.0.0.1", port: silent.port }] }],
      ["ok.test", { kind: "hosts", hosts: [{ name: "sink", ip: "127.0.0.1", port: sink.port }] }],
    ]);
    const errors: string[] = [];
    const log = createLogger({ level: "error" });
    log.setReporters([{ log: (o) => errors.push(String(o.args[0])) }]);
    const metrics = new Metrics();
    const spool = await Spool.open({ dir: join(dir, "spool"), sync: false, metrics });
    const deliverer = new Deliverer({
      timeouts: { ...RFC5321_TIMEOUTS, connectMs: 1000, greetingMs: 1500 },
      maxMessagesPerConnection: 1000,
      idleTimeoutMs: 1000,
      log: silentLogger(),
    });
    const deliveryLog = new DeliveryLog(join(dir, "deliveries.jsonl"));
    // DSNs through the accept pipeline, as the engine wires it.
    const pipeline = new AcceptPipeline({ spool, deliveryLog, log: silentLogger(), metrics: new Metrics() });
    const scheduler = new Scheduler({
      spool,
      deliverer,
      dsn: pipeline,
      router: testRouter({
        route: (d) => routes.get(d) ?? { kind: "transient", reason: "no route" },
        policy: () => ({ maxConnections: 8, maxMessagesPerConnection: 1000, tls: "off", tlsVerify: false }),
      }),
      hostname: "mta.test",
      retryMs: [3_600_000],
      maxAgeMs: 86_400_000,
      delayWarningMs: 0,
      maxConnections: 100,
      onEvent: (e) => deliveryLog.write({ ...e }),
      log,
    });
    pipeline.queue = scheduler;
    const ops = new QueueOps({ spool, scheduler, deliveryLog, hostname: "mta.test", log });
    const control = startControlServer({
      host: "127.0.0.1",
      port: 0,
      token: "load-token",
      log,
      metrics,
      routes: queueRoutes(ops),
    });
    const client = new HttpQueueClient("127.0.0.1", control.port, "load-token");
    const body = new TextEncoder().encode(`Subject: load\r\n\r\n${"y".repeat(500)}\r\n`);
    try {
      scheduler.start();
      const stuck = await Promise.all(
        Array.from({ length: 10_000 }, (_, i) =>
          spool.append({
            sender: "app@origin.test",
            destination: "stuck.test",
            // Half ask for no DSN; the other half get one each, through the accept pipeline.
            recipients: [{ address: `u${i}@stuck.test`, ...(i % 2 ? { notify: ["NEVER" as const] } : {}) }],
            body,
          }),
        ),
      );
      for (const s of stuck) scheduler.enqueue(s.slot);
      await Bun.sleep(100);
      const before = scheduler.summary().find((s) => s.destination === "stuck.test")!;
      expect(before.activeConnections).toBeGreaterThan(0);

      // Deliveries to ok.test keep arriving while the bounce runs.
      let okSent = 0;
      const feeding = (async () => {
        for (let round = 0; round < 10; round++) {
          const batch = await Promise.all(
            Array.from({ length: 50 }, (_, i) =>
              spool.append({
                sender: "app@origin.test",
                destination: "ok.test",
                recipients: [{ address: `r${round}.${i}@ok.test` }],
                body,
              }),
            ),
          );
          for (const s of batch) scheduler.enqueue(s.slot);
          okSent += batch.length;
          await Bun.sleep(20);
        }
      })();
      const count = await client.bounce({ destination: "stuck.test" });
      expect(count.matched).toBe(10_000);
      const bounceStart = Date.now();
      const r = await client.bounce({ destination: "stuck.test" }, { yes: true });
      const bounceEnd = Date.now();
      await feeding;
      expect(r).toMatchObject({
        matched: 10_000,
        affected: 10_000,
        recipients: 10_000,
        dsns: 5000,
        failed: [],
      });
      await sink.waitFor(okSent, 20_000);

      const summary = await client.summary({});
      expect(summary.destinations.find((d) => d.destination === "stuck.test")?.messages ?? 0).toBe(0);
      // What is left is the 5,000 DSNs to the sender's domain (no route in this test: they wait).
      expect(spool.messageCount).toBe(5000);
      expect(summary.destinations.find((d) => d.destination === "origin.test")?.messages).toBe(5000);
      deliveryLog.flush();
      const lines = readFileSync(join(dir, "deliveries.jsonl"), "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      expect(lines.filter((l) => l.type === "admin-bounce")).toHaveLength(10_000);
      const okDeliveries = lines.filter((l) => l.type === "delivery" && l.destination === "ok.test");
      expect(okDeliveries).toHaveLength(okSent);
      // The other destination kept delivering while the bounce ran, not only after it.
      const during = okDeliveries.filter((l) => {
        const t = Date.parse(l.time);
        return t >= bounceStart && t <= bounceEnd;
      });
      expect(during.length).toBeGreaterThan(0);
      expect(lines.filter((l) => l.type === "dsn" && l.reason === "admin-bounce")).toHaveLength(5000);
      expect(lines.filter((l) => l.type === "reception" && l.dsn !== undefined)).toHaveLength(5000);
      // No bounced message was delivered as well.
      expect(lines.filter((l) => l.type === "delivery" && l.destination === "stuck.test")).toEqual([]);
      // No attempt recorded its outcome on a slot the bounce had freed (the scheduler would log it).
      expect(errors).toEqual([]);
    } finally {
      await scheduler.stop(2000);
      await deliverer.close();
      await control.stop();
      deliveryLog.close();
      await spool.close();
      silent.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  },
  30_000,
);
