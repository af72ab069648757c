/**
 * The routing step through the compiled binary: a static route's next hop is the queue key, so a
 * smarthost is one destination with one connection limit however many domains it carries.
 */
import { expect, test } from "bun:test";
import { countingPeer } from "../support/countingPeer.ts";
import { startDnsServer } from "../support/dnsServer.ts";
import { join } from "node:path";
import { controlFetch, deliveryLog, runMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { lacking } from "../support/peers.ts";
import { startSink } from "../support/sink.ts";

async function injectMany(dir: string, recipients: string[]): Promise<void> {
  const messages = recipients.map((to, i) => ({
    sender: "app@origin.test",
    recipients: [to],
    message: `From: app@origin.test\r\nTo: ${to}\r\nSubject: ${i}\r\n\r\nbody ${i}\r\n`,
  }));
  const r = await controlFetch(dir, "/api/v1/inject", {
    method: "POST",
    body: JSON.stringify({ messages }),
  });
  expect(r.status).toBe(200);
  expect(((await r.json()) as { accepted: number }).accepted).toBe(recipients.length);
}

async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await Bun.sleep(25);
  }
}

test("2,000 messages to 2,000 domains through one smarthost route: never more connections than the route's limit", async () => {
  using dir = tempDir();
  // Each DATA is answered after 20 ms, so connections overlap and the limit is what holds them back.
  await using relay = await countingPeer(20);
  const hop = `127.0.0.1:${relay.port}`;
  await using _mta = await startMta({
    dir: dir.path,
    config: testConfig(
      dir.path,
      [
        `delivery: { routes: { "*": "${hop}" }, max_connections: 5000,`,
        `  domains: { default: { max_connections: 50 }, "${hop}": { max_connections: 4 } } }`,
      ].join("\n"),
    ),
  });
  const recipients = Array.from({ length: 2000 }, (_, i) => `u${i}@d${i}.test`);
  await injectMany(dir.path, recipients);
  await until(() => relay.messages.length >= 2000, 60_000, `${relay.messages.length} of 2000 at the relay`);
  expect(new Set(relay.messages.flatMap((m) => m.to)).size).toBe(2000);
  expect(relay.maxOpen).toBeLessThanOrEqual(4);
  expect(relay.maxOpen).toBeGreaterThan(1);
  // Connections were reused across domains: one destination, not 2,000.
  expect(relay.sessions).toBeLessThan(100);
}, 90_000);

test("the queue view names the next hop as the site of every domain it carries", async () => {
  using dir = tempDir();
  await using _mta = await startMta({
    dir: dir.path,
    // Nothing listens at port 9: the relay is down, mail waits under its next hop.
    config: testConfig(dir.path, `delivery: { routes: { "*": "127.0.0.1:9" }, retry: [1h] }`),
  });
  await injectMany(dir.path, ["a@one.test", "b@two.test"]);
  const summary = async () =>
    (await (await controlFetch(dir.path, "/api/v1/queue/summary?sort=destination")).json()) as {
      destinations: { destination: string; site: string | null; state: string; messages: number }[];
    };
  let rows = (await summary()).destinations;
  for (let i = 0; i < 100 && !rows.some((r) => r.state === "backoff"); i++) {
    await Bun.sleep(50);
    rows = (await summary()).destinations;
  }
  // One row per recipient domain, both backing off with their shared site and naming it; the site
  // gets no row of its own (it would read as a second, empty destination).
  expect(rows.map((r) => [r.destination, r.site, r.state, r.messages])).toEqual([
    ["one.test", "127.0.0.1:9", "backoff", 1],
    ["two.test", "127.0.0.1:9", "backoff", 1],
  ]);
  // What the operator reads: two destinations, each saying which hop holds it.
  const cli = runMta(["queue", "summary", "--sort", "destination", "-c", join(dir.path, "mta.yaml")]);
  expect(cli.code).toBe(0);
  const lines = cli.stdout.trim().split("\n");
  expect(lines.filter((l) => / via 127\.0\.0\.1:9 /.test(l)).map((l) => l.split(/\s+/)[0])).toEqual([
    "one.test",
    "two.test",
  ]);
  expect(lines.some((l) => l.startsWith("127.0.0.1:9"))).toBe(false);
  expect(lines.at(-1)).toMatch(/^TOTAL 2 destination\(s\)\s+2\s+2 /);
}, 30_000);

test.skipIf(lacking("smtp-sink"))(
  "when no IPv4 address of the MX answers, its IPv6 address is looked up and tried in the same attempt",
  async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path, host: "::1" });
    await using dns = await startDnsServer({
      "dual.test": { mx: [{ exchange: "mx.dual.test", preference: 10 }] },
      // Nothing listens at 127.0.0.2 on the sink's port: refused; the sink is at ::1.
      "mx.dual.test": { a: ["127.0.0.2"], aaaa: ["::1"] },
    });
    await using _mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        [`dns: { servers: ["127.0.0.1:${dns.port}"], timeout: 1s }`, `delivery: { port: ${sink.port} }`].join(
          "\n",
        ),
      ),
    });
    await injectMany(dir.path, ["someone@dual.test"]);
    await sink.waitFor(1, 15_000);
    let events = deliveryLog(dir.path);
    for (let i = 0; i < 100 && !events.some((e) => e.type === "delivery"); i++) {
      await Bun.sleep(50);
      events = deliveryLog(dir.path);
    }
    expect(events.find((e) => e.type === "delivery")).toMatchObject({ ip: "::1", attempt: 1 });
    expect(events.some((e) => e.type === "transient-failure" || e.type === "suspension")).toBe(false);
    // The AAAA question came after the A question, not with it.
    const asked = dns.queries.filter((q) => q.name === "mx.dual.test").map((q) => q.type);
    expect(asked).toEqual(["A", "AAAA"]);
  },
  30_000,
);
