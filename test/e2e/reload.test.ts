/**
 * SIGHUP through the compiled binary: each `live` key takes effect at once, observed where the mail
 * arrives (routes, retry schedule, a live site's connection limit and TLS mode) or in the log (log
 * level, every logger); `restart` keys are reported against what runs, on every reload.
 */
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { countingPeer } from "../support/countingPeer.ts";
import { controlFetch, type StartedMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { type ScriptedPeer, selfSignedCert, startScriptedPeer } from "../support/scriptedPeer.ts";
import { freePort } from "../support/sink.ts";

async function inject(mta: StartedMta, to: string, subject: string): Promise<void> {
  const r = await controlFetch(mta.dir, "/api/v1/inject", {
    method: "POST",
    body: JSON.stringify({ sender: "app@origin.test", recipients: [to], subject, text: `${subject}\n` }),
  });
  expect(r.status).toBe(200);
}

async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await Bun.sleep(25);
  }
}

/** Rewrites the configuration, sends SIGHUP, and waits for the `n`-th "configuration reloaded" line. */
async function reload(mta: StartedMta, config: string, n: number): Promise<Record<string, unknown>> {
  writeFileSync(mta.configFile, config);
  mta.proc.kill("SIGHUP");
  const reloaded = () => mta.logLines().filter((l) => l.msg === "configuration reloaded");
  await until(() => reloaded().length >= n, 10_000, `reload ${n}`);
  return reloaded()[n - 1]!;
}

/** The signal handlers are installed right after the "started" line: one request makes sure they are. */
async function ready(mta: StartedMta): Promise<void> {
  expect((await fetch(`http://127.0.0.1:${mta.controlPort}/healthz`)).status).toBe(200);
}

function received(peer: ScriptedPeer, subject: string): boolean {
  return peer.sessions.some((s) =>
    s.messages.some((m) => m.body.toString("latin1").includes(`Subject: ${subject}`)),
  );
}

test("SIGHUP moves a route: a deferred message flushed after the reload goes to the new host", async () => {
  using dir = tempDir();
  await using oldHost = await startScriptedPeer({ rcpt: () => "451 4.3.0 try later" });
  await using newHost = await startScriptedPeer();
  const config = (port: number) =>
    testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${port}" }, retry: [1h] }`);
  await using mta = await startMta({ dir: dir.path, config: config(oldHost.port) });
  await ready(mta);
  await inject(mta, "b@example.net", "moved");
  await until(
    () => oldHost.sessions.some((s) => s.commands.some((c) => c.startsWith("RCPT"))),
    10_000,
    "first try",
  );
  await reload(mta, config(newHost.port), 1);
  const r = await controlFetch(mta.dir, "/api/v1/queue/flush", {
    method: "POST",
    body: JSON.stringify({ destination: "example.net" }),
  });
  expect(((await r.json()) as { flushed: number }).flushed).toBe(1);
  await until(() => received(newHost, "moved"), 10_000, "delivery at the new host");
  expect(oldHost.sessions.length).toBe(1);
}, 30_000);

test("SIGHUP changes the retry schedule: the next soft failure is retried on the new one", async () => {
  using dir = tempDir();
  const rcpts: string[] = [];
  await using host = await startScriptedPeer({
    rcpt: (to) => {
      rcpts.push(to);
      return "451 4.3.0 try later";
    },
  });
  const config = (retry: string) =>
    testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${host.port}" }, retry: [${retry}] }`,
    );
  await using mta = await startMta({ dir: dir.path, config: config("10m") });
  await ready(mta);
  await reload(mta, config("1s"), 1);
  await inject(mta, "after@example.net", "after");
  // First attempt, then the retry a second later (not in ten minutes).
  await until(() => rcpts.filter((t) => t === "after@example.net").length >= 2, 10_000, "the retry");
}, 30_000);

test("SIGHUP changes the log level of every logger, the deliverer's included", async () => {
  using dir = tempDir();
  await using host = await startScriptedPeer();
  const config = (level: string) =>
    testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${host.port}" } }`).replace(
      "log: { level: info,",
      `log: { level: ${level},`,
    );
  await using mta = await startMta({ dir: dir.path, config: config("info") });
  await ready(mta);
  await inject(mta, "one@example.net", "one");
  await until(() => received(host, "one"), 10_000, "first delivery");
  const debug = () => mta.logLines().filter((l) => l.level === "debug" && l.module === "deliverer");
  expect(debug()).toEqual([]);
  await reload(mta, config("debug"), 1);
  await inject(mta, "two@example.net", "two");
  await until(() => received(host, "two"), 10_000, "second delivery");
  await until(() => debug().length > 0, 5_000, "a debug line from the deliverer");
  expect(debug()[0]).toMatchObject({ msg: "delivery attempt", mx: "127.0.0.1" });
}, 30_000);

test("SIGHUP changes a live site's connection limit: the sink sees the new concurrency at once", async () => {
  using dir = tempDir();
  await using sink = await countingPeer(150);
  const config = (max: number) =>
    testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" }, domains: { default: { max_connections: 20 }, example.net: { max_connections: ${max} } } }`,
    );
  await using mta = await startMta({ dir: dir.path, config: config(1) });
  await ready(mta);
  for (let i = 0; i < 8; i++) await inject(mta, `a${i}@example.net`, `a${i}`);
  await until(() => sink.messages.length >= 8, 20_000, "first batch");
  expect(sink.maxOpen).toBe(1);
  await reload(mta, config(4), 1);
  sink.maxOpen = sink.open;
  for (let i = 0; i < 24; i++) await inject(mta, `b${i}@example.net`, `b${i}`);
  await until(() => sink.messages.length >= 32, 20_000, "second batch");
  expect(sink.maxOpen).toBeGreaterThan(1);
  expect(sink.maxOpen).toBeLessThanOrEqual(4);
}, 60_000);

test("SIGHUP changes a live site's TLS mode: the next message goes over STARTTLS", async () => {
  using dir = tempDir();
  await using host = await startScriptedPeer({ tls: selfSignedCert(dir.path), ehlo: ["STARTTLS"] });
  const config = (tls: string) =>
    testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${host.port}" }, domains: { example.net: { tls: ${tls} } } }`,
    );
  await using mta = await startMta({ dir: dir.path, config: config("off") });
  await ready(mta);
  await inject(mta, "plain@example.net", "plain");
  await until(() => received(host, "plain"), 10_000, "plain delivery");
  await reload(mta, config("required"), 1);
  await inject(mta, "tls@example.net", "secure");
  await until(() => received(host, "secure"), 10_000, "TLS delivery");
  const by = (subject: string) =>
    host.sessions.find((s) =>
      s.messages.some((m) => m.body.toString("latin1").includes(`Subject: ${subject}`)),
    )!;
  expect(by("plain").tls).toBe(false);
  expect(by("secure").tls).toBe(true);
}, 30_000);

test("a restart-only change is reported on every reload against what runs, and the old listener stays", async () => {
  using dir = tempDir();
  const first = testConfig(dir.path);
  await using mta = await startMta({ dir: dir.path, config: first });
  await ready(mta);
  const moved = first.replace(
    "listen: [{ address: 127.0.0.1:0 }]",
    `listen: [{ address: 127.0.0.1:${freePort()} }]`,
  );
  expect((await reload(mta, moved, 1)).needsRestart).toEqual(["listen"]);
  expect((await reload(mta, moved, 2)).needsRestart).toEqual(["listen"]);
  // Back to what runs: nothing to restart.
  expect((await reload(mta, first, 3)).needsRestart).toBeUndefined();
  const conn = await Bun.connect({ hostname: "127.0.0.1", port: mta.smtpPorts[0]!, socket: { data() {} } });
  conn.end();
}, 30_000);

test("SIGHUP moves the delivery log: the next lines go to the new file", async () => {
  using dir = tempDir();
  await using host = await startScriptedPeer();
  const first = testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${host.port}" } }`);
  await using mta = await startMta({ dir: dir.path, config: first });
  await ready(mta);
  const moved = `${dir.path}/moved/deliveries.jsonl`;
  await reload(mta, first.replace(`deliveries: ${dir.path}/deliveries.jsonl`, `deliveries: ${moved}`), 1);
  await inject(mta, "after@example.net", "after the move");
  await until(() => received(host, "after the move"), 10_000, "delivery");
  const lines = async () =>
    (await Bun.file(moved).exists())
      ? (await Bun.file(moved).text())
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l))
      : [];
  const end = Date.now() + 5000;
  while (!(await lines()).some((e) => e.type === "delivery") && Date.now() < end) await Bun.sleep(50);
  expect((await lines()).map((e) => e.type)).toEqual(["reception", "delivery"]);
}, 30_000);
