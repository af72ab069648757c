/**
 * The daemon's HTTP surface beyond `mta queue`: `/metrics` read back by an independent Prometheus
 * text-format parser, and `POST /api/v1/inject` refusing bad input whole (nothing half-accepted).
 * The real Engine (spool, scheduler, accept pipeline) with deliveries off, behind a real control server.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Engine } from "../../src/app/index.ts";
import { injectHandler } from "../../src/accept/index.ts";
import { QueueOps, queueRoutes } from "../../src/admin/index.ts";
import { parseConfigText } from "../../src/config/index.ts";
import { type ControlServer, silentLogger, startControlServer } from "../../src/observe/index.ts";

interface Family {
  name: string;
  help: string;
  type: "COUNTER" | "GAUGE" | "HISTOGRAM" | "SUMMARY" | "UNTYPED";
  metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string> }[];
}
const parsePrometheus = (
  (await import("parse-prometheus-text-format" as string)) as { default: (t: string) => Family[] }
).default;

let dir = "";
let engine: Engine;
let control: ControlServer;
const TOKEN = "api-test-token";
const AUTH = { authorization: `Bearer ${TOKEN}` };
let base = "";
const MAX = 2000;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "mta-queue-api-"));
  const { config } = parseConfigText(
    [
      "hostname: mta.test",
      `spool: { dir: ${join(dir, "spool")}, sync: false }`,
      // Loopback only: DNS lookups go to a port where nothing answers, never to the machine's resolver.
      'dns: { servers: ["127.0.0.1:9"], timeout: 1s, attempts: 1 }',
      `log: { deliveries: ${join(dir, "deliveries.jsonl")} }`,
    ].join("\n"),
    join(dir, "mta.yaml"),
  );
  engine = await Engine.start(config, { log: silentLogger(), deliver: false });
  const ops = new QueueOps({
    spool: engine.spool,
    scheduler: engine.scheduler,
    deliveryLog: engine.deliveryLog,
    hostname: "mta.test",
    metrics: engine.metrics,
  });
  control = startControlServer({
    host: "127.0.0.1",
    port: 0,
    token: TOKEN,
    log: silentLogger(),
    metrics: engine.metrics,
    routes: {
      ...queueRoutes(ops),
      "POST /api/v1/inject": injectHandler(engine.pipeline, { hostname: "mta.test", maxMessageBytes: MAX }),
    },
  });
  base = `http://127.0.0.1:${control.port}`;
});

afterAll(async () => {
  await control.stop();
  await engine.stop(100);
  rmSync(dir, { recursive: true, force: true });
});

function inject(body: string): Promise<Response> {
  return fetch(`${base}/api/v1/inject`, {
    method: "POST",
    body,
    headers: { ...AUTH, "content-type": "application/json" },
  });
}

async function refused(body: string, status: number, error: string, index?: number): Promise<void> {
  const before = engine.spool.messageCount;
  const res = await inject(body);
  const json = (await res.json()) as { error: string; index?: number };
  expect(res.status).toBe(status);
  expect(json.error).toContain(error);
  if (index !== undefined) expect(json.index).toBe(index);
  expect(engine.spool.messageCount).toBe(before);
}

const good = { sender: "app@origin.test", recipients: ["a@one.test"], subject: "hi", text: "hello" };

test("inject: malformed JSON, missing fields and oversize bodies get 4xx naming the item; nothing is half-accepted", async () => {
  await refused("{not json", 400, "malformed JSON");
  await refused(JSON.stringify({ messages: [] }), 400, '"messages" is empty');
  await refused(JSON.stringify({ recipients: ["a@one.test"], text: "x" }), 400, 'missing "sender"', 0);
  await refused(
    JSON.stringify({ messages: [good, { sender: "app@origin.test", text: "x" }] }),
    400,
    'missing "recipients"',
    1,
  );
  await refused(
    JSON.stringify({ messages: [good, good, { sender: "app@origin.test", recipients: ["a@one.test"] }] }),
    400,
    'missing "message", "messageBase64" or parts',
    2,
  );
  await refused(
    JSON.stringify({
      messages: [good, { ...good, subject: undefined, text: undefined, messageBase64: "**" }],
    }),
    400,
    '"messageBase64" is not base64',
    1,
  );
  await refused(
    JSON.stringify({
      messages: [{ sender: "a@b.test", recipients: ["c@d.test"], message: "x", messageBase64: "eA==" }],
    }),
    400,
    'give "message" or "messageBase64", not both',
    0,
  );
  await refused(
    JSON.stringify({
      messages: [
        good,
        {
          sender: "a@b.test",
          recipients: ["c@d.test"],
          messageBase64: Buffer.alloc(MAX + 1, 0x78).toString("base64"),
        },
      ],
    }),
    413,
    "over the limit",
    1,
  );
  await refused(
    JSON.stringify({ messages: [good, { ...good, recipients: ["not an address"] }] }),
    400,
    "not an address",
    1,
  );
  await refused(
    JSON.stringify({ messages: [good, { ...good, headers: { "Bad Name": "x" } }] }),
    400,
    "not a valid header",
    1,
  );
  await refused(
    JSON.stringify({ messages: [good, { ...good, text: "x".repeat(MAX + 1) }] }),
    413,
    "over the limit",
    1,
  );
  await refused(
    JSON.stringify({
      messages: [good, { sender: "a@b.test", recipients: ["c@d.test"], message: "x".repeat(MAX + 1) }],
    }),
    413,
    "over the limit",
    1,
  );
});

test("inject: a good batch is answered with one id per message part after the append", async () => {
  const before = engine.spool.messageCount;
  const res = await inject(
    JSON.stringify({
      messages: [
        good,
        { sender: "", recipients: ["x@one.test", "y@two.test"], message: "Subject: raw\n\nbody\n" },
      ],
    }),
  );
  expect(res.status).toBe(200);
  const json = (await res.json()) as { accepted: number; messages: { index: number; ids: string[] }[] };
  expect(json.accepted).toBe(2);
  expect(json.messages[0]!.ids).toHaveLength(1);
  expect(json.messages[1]!.ids).toHaveLength(2); // one spool message per recipient domain
  expect(engine.spool.messageCount).toBe(before + 3);
  const shown = (await (
    await fetch(`${base}/api/v1/queue/messages/${json.messages[1]!.ids[0]}?body=1`, { headers: AUTH })
  ).json()) as {
    body: string;
    headers: { name: string }[];
  };
  expect(shown.body).toContain("Subject: raw\r\n\r\nbody\r\n");
  expect(shown.headers.map((h) => h.name)).toEqual(expect.arrayContaining(["Date", "Message-ID", "Subject"]));
});

test("inject: messageBase64 carries any bytes (ISO-8859-1, bare CR kept as CRLF) and marks 8-bit as 8BITMIME", async () => {
  const latin1 = Buffer.from(
    "Subject: caf\xe9\nContent-Type: text/plain; charset=ISO-8859-1\n\nd\xe9j\xe0 vu\n",
    "latin1",
  );
  const res = await inject(
    JSON.stringify({
      sender: "a@origin.test",
      recipients: ["b@one.test"],
      messageBase64: latin1.toString("base64"),
    }),
  );
  expect(res.status).toBe(200);
  const { messages } = (await res.json()) as { messages: { ids: string[] }[] };
  const shown = (await (
    await fetch(`${base}/api/v1/queue/messages/${messages[0]!.ids[0]}?body=1`, { headers: AUTH })
  ).json()) as {
    body: string;
    attributes: Record<string, string>;
  };
  // The show API gives the bytes as Latin-1 text: each byte survived as it was sent.
  expect(shown.body).toContain("Subject: caf\xe9\r\n");
  expect(shown.body).toContain("\r\n\r\nd\xe9j\xe0 vu\r\n");
  expect(shown.attributes.body).toBe("8BITMIME");
});

test("every HTTP error has a JSON body: 413 for a request over the limit, 400 for a bad path or forMs", async () => {
  // A 300 MB request: refused from its Content-Length with a JSON body, before the body is read
  // (a raw request: fetch would correct the header to the length of what it sends).
  const raw = await new Promise<string>((resolve, reject) => {
    let got = "";
    Bun.connect({
      hostname: "127.0.0.1",
      port: control.port,
      socket: {
        open(sock) {
          sock.write(
            `POST /api/v1/inject HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: ${300 * 1024 * 1024}\r\n\r\n{"messages":[`,
          );
        },
        data(sock, d) {
          got += d.toString();
          if (got.includes("\r\n\r\n") && got.trimEnd().endsWith("}")) {
            sock.end();
            resolve(got);
          }
        },
        close: () => resolve(got),
        connectError: (_s, e) => reject(e),
      },
    });
  });
  expect(raw).toStartWith("HTTP/1.1 413");
  expect(raw.toLowerCase()).toContain("content-type: application/json");
  expect(JSON.parse(raw.slice(raw.indexOf("\r\n\r\n") + 4)).error).toContain("over the limit");
  // A chunked body (no Content-Length) that grows past the limit: the same answer, when enough arrived.
  const small = startControlServer({
    host: "127.0.0.1",
    port: 0,
    token: TOKEN,
    log: silentLogger(),
    metrics: engine.metrics,
    maxBodyBytes: 1024,
    routes: {
      "POST /api/v1/inject": injectHandler(engine.pipeline, { hostname: "mta.test", maxMessageBytes: MAX }),
    },
  });
  try {
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < 4; i++) c.enqueue(new TextEncoder().encode("x".repeat(600)));
        c.close();
      },
    });
    const r = await fetch(`http://127.0.0.1:${small.port}/api/v1/inject`, {
      method: "POST",
      body: stream,
      headers: { ...AUTH, "content-type": "application/json" },
    });
    expect(r.status).toBe(413);
    expect(((await r.json()) as { error: string }).error).toContain("over the limit of 1024 bytes");
  } finally {
    await small.stop();
  }
  const bad = await fetch(`${base}/api/v1/queue/messages/%ZZ`, { headers: AUTH });
  expect(bad.status).toBe(400);
  expect(((await bad.json()) as { error: string }).error).toContain("percent-encoding");
  const forMs = await fetch(`${base}/api/v1/queue/suspend`, {
    method: "POST",
    body: JSON.stringify({ destination: "x.test", forMs: 1e308 }),
    headers: { ...AUTH, "content-type": "application/json" },
  });
  expect(forMs.status).toBe(400);
  expect(((await forMs.json()) as { error: string }).error).toContain("at most 100 years");
  const missing = await fetch(`${base}/api/v1/nothing`);
  expect(missing.status).toBe(404);
  expect(((await missing.json()) as { error: string }).error).toContain("no such endpoint");
});

test("/metrics parses as Prometheus text format, names follow mta_<module>_<thing>_<unit>, queue series are right", async () => {
  await inject(JSON.stringify(good));
  const res = await fetch(`${base}/metrics`, { headers: AUTH });
  expect(res.headers.get("content-type")).toContain("text/plain");
  const families = parsePrometheus(await res.text());
  const byName = new Map(families.map((f) => [f.name, f]));
  for (const f of families) {
    expect(f.name).toMatch(/^(mta|process)_[a-z0-9_]+$/);
    expect(f.help.length).toBeGreaterThan(0);
    if (f.type === "COUNTER") expect(f.name).toEndWith("_total");
  }
  for (const name of [
    "mta_accept_messages_total",
    "mta_spool_messages",
    "mta_spool_segments",
    "mta_scheduler_queued_messages",
    "mta_scheduler_connections_active",
    "mta_queue_messages",
    "mta_queue_recipients",
    "mta_queue_bytes",
    "mta_queue_oldest_message_age_seconds",
    "mta_queue_admin_messages_total",
    "process_resident_memory_bytes",
  ])
    expect(byName.has(name)).toBe(true);
  const value = (name: string) => Number(byName.get(name)!.metrics[0]!.value);
  expect(value("mta_queue_messages")).toBe(engine.spool.messageCount);
  expect(value("mta_queue_messages")).toBeGreaterThan(0);
  expect(value("mta_queue_bytes")).toBeGreaterThan(0);
  expect(value("mta_queue_oldest_message_age_seconds")).toBeGreaterThanOrEqual(0);
  expect(byName.get("mta_accept_messages_total")!.type).toBe("COUNTER");

  // The admin counter moves with a delete.
  const del = (await (
    await fetch(`${base}/api/v1/queue/delete`, {
      method: "POST",
      body: JSON.stringify({ destination: "one.test", yes: true }),
      headers: { ...AUTH, "content-type": "application/json" },
    })
  ).json()) as { affected: number };
  const after = parsePrometheus(await (await fetch(`${base}/metrics`, { headers: AUTH })).text()).find(
    (f) => f.name === "mta_queue_admin_messages_total",
  )!;
  expect(after.metrics.find((m) => m.labels?.action === "delete")?.value).toBe(String(del.affected));
});
