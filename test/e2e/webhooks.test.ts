import { describe, expect, test } from "bun:test";
import { lacking } from "../support/peers.ts";
import {
  controlFetch,
  deliveryLog,
  type StartedMta,
  startMta,
  tempDir,
  testConfig,
  waitUntil,
} from "../support/mta.ts";
import { startSink } from "../support/sink.ts";
import { type Receiver, startReceiver } from "../support/webhookReceiver.ts";

const SECRET = "webhook-secret-for-tests-0123";
const WANTED = new Set([
  "reception",
  "delivery",
  "transient-failure",
  "bounce",
  "expiration",
  "async-bounce",
  "complaint",
  "suppressed",
]);

function config(dir: string, sinkPort: number, url: string, extra = ""): string {
  return testConfig(
    dir,
    [
      `delivery: { routes: { example.net: "127.0.0.1:${sinkPort}" }, retry: [1s] }`,
      "webhooks:",
      "  - name: app",
      `    url: ${url}`,
      `    secret: ${SECRET}`,
      "    batch_size: 50",
      "    timeout: 5s",
      "    max_retry_delay: 2s",
      extra,
    ].join("\n"),
  );
}

async function inject(mta: StartedMta, from: number, count: number): Promise<void> {
  const messages = Array.from({ length: count }, (_, i) => ({
    sender: "app@shop.test",
    recipients: [`user${from + i}@example.net`],
    subject: `message ${from + i}`,
    text: "hello",
  }));
  const res = await controlFetch(mta.dir, `/api/v1/inject`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages }),
  });
  expect(res.status).toBe(200);
}

/** The key that identifies one event line. */
const key = (e: Record<string, unknown>) => `${e.time}|${e.type}|${e.id}|${e.recipient ?? ""}`;

/** Every wanted event of the log arrived at least once, signed, and in log order per message. */
function checkDelivered(dir: string, receiver: Receiver): void {
  const logged = deliveryLog(dir).filter((e) => WANTED.has(String(e.type)));
  const got = receiver.events();
  const seen = new Set(got.map(key));
  const missing = logged.filter((e) => !seen.has(key(e)));
  expect(missing).toEqual([]);
  expect(receiver.batches.every((b) => b.signatureOk)).toBe(true);
  // Per message, the first arrival of each event follows the log's order.
  const firstAt = new Map<string, number>();
  got.forEach((e, i) => {
    if (!firstAt.has(key(e))) firstAt.set(key(e), i);
  });
  const byId = new Map<string, Record<string, unknown>[]>();
  for (const e of logged) byId.set(String(e.id), [...(byId.get(String(e.id)) ?? []), e]);
  for (const events of byId.values()) {
    const order = events.map((e) => firstAt.get(key(e))!);
    expect(order).toEqual([...order].sort((a, b) => a - b));
  }
}

describe.skipIf(lacking("smtp-sink"))("webhooks", () => {
  test("a receiver that is slow, then down, then back gets every event at least once, signed, in order per message", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using receiver = await startReceiver(SECRET);
    await using mta = await startMta({ dir: dir.path, config: config(dir.path, sink.port, receiver.url) });

    await inject(mta, 0, 20);
    await waitUntil("first events", () => receiver.events().length > 0);
    receiver.mode = { kind: "slow", delayMs: 1500 };
    await inject(mta, 20, 20);
    await Bun.sleep(2000);
    await receiver.down();
    await inject(mta, 40, 20);
    await sink.waitFor(60, 30_000);
    await Bun.sleep(2500); // mta retries into a closed port meanwhile
    const health = (await (await controlFetch(mta.dir, `/healthz`)).json()) as {
      status: string;
      webhooks: { app: { state: string; consecutiveFailures: number; lagBytes: number } };
    };
    expect(health.status).toBe("ok");
    expect(health.webhooks.app.consecutiveFailures).toBeGreaterThan(0);
    expect(health.webhooks.app.lagBytes).toBeGreaterThan(0);
    const metrics = await (await controlFetch(mta.dir, `/metrics`)).text();
    expect(metrics).toMatch(/mta_webhook_lag_bytes\{webhook="app"\} [1-9]/);
    expect(metrics).toMatch(/mta_webhook_batches_total\{.*result="error".*\} [1-9]/);
    receiver.mode = { kind: "ok" };
    receiver.up();
    await waitUntil(
      "all 60 deliveries at the receiver",
      () =>
        new Set(
          receiver
            .events()
            .filter((e) => e.type === "delivery")
            .map(key),
        ).size === 60,
    );
    checkDelivered(dir.path, receiver);
    // Mail kept flowing while the endpoint was slow and down: all 60 were delivered.
    expect(deliveryLog(dir.path).filter((e) => e.type === "delivery")).toHaveLength(60);
  }, 90_000);

  test("an endpoint answering 500 is retried with the same events until it answers 2xx", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using receiver = await startReceiver(SECRET);
    receiver.mode = { kind: "status", status: 500 };
    await using mta = await startMta({ dir: dir.path, config: config(dir.path, sink.port, receiver.url) });
    await inject(mta, 0, 5);
    await sink.waitFor(5, 20_000);
    await Bun.sleep(2000);
    expect(receiver.batches).toHaveLength(0);
    receiver.mode = { kind: "ok" };
    await waitUntil(
      "the 5 deliveries",
      () => receiver.events().filter((e) => e.type === "delivery").length >= 5,
    );
    checkDelivered(dir.path, receiver);
  }, 60_000);

  test("kill -9 of mta mid-stream loses no event: after a restart the rest arrives", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using receiver = await startReceiver(SECRET);
    receiver.mode = { kind: "slow", delayMs: 800 };
    const cfg = config(dir.path, sink.port, receiver.url);
    {
      await using mta = await startMta({ dir: dir.path, config: cfg });
      for (let i = 0; i < 4; i++) await inject(mta, i * 25, 25);
      await sink.waitFor(100, 30_000);
      await waitUntil("some batches", () => receiver.batches.length >= 2);
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    const before = receiver.events().length;
    const logged = deliveryLog(dir.path).filter((e) => WANTED.has(String(e.type))).length;
    expect(before).toBeLessThan(logged); // the kill did interrupt the stream
    receiver.mode = { kind: "ok" };
    await using again = await startMta({ dir: dir.path, config: cfg });
    void again;
    await waitUntil("every logged event", () => {
      const seen = new Set(receiver.events().map(key));
      return deliveryLog(dir.path)
        .filter((e) => WANTED.has(String(e.type)))
        .every((e) => seen.has(key(e)));
    });
    checkDelivered(dir.path, receiver);
  }, 90_000);

  test("the filter sends only the chosen event types", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using receiver = await startReceiver(SECRET);
    await using mta = await startMta({
      dir: dir.path,
      config: config(dir.path, sink.port, receiver.url, "    events: [delivery]"),
    });
    await inject(mta, 0, 5);
    await waitUntil("5 deliveries", () => receiver.events().length >= 5);
    await Bun.sleep(500);
    expect(new Set(receiver.events().map((e) => e.type))).toEqual(new Set(["delivery"]));
  }, 60_000);
});
