/**
 * `mta queue transfer` between two `mta serve` nodes (dist/mta) with a real redis-server and Postfix's
 * smtp-sink behind the receiving node: schedule and history kept, events in both delivery logs, and
 * 10,000 messages moved with the sender killed -9 halfway and the transfer run again.
 */
import { expect, test } from "bun:test";
import { spawn } from "bun";
import { api, inject, startNodes, until } from "../support/cluster.ts";
import { deliveryLog, MTA, runMta, startMta, tempDir } from "../support/mta.ts";
import { startRedis } from "../support/redis.ts";
import { startSink } from "../support/sink.ts";

const env = { MTA_LOOPBACK_ONLY: "1" };

/** Node A keeps everything (its route is refused); node B delivers to the sink. */
function routes(sinkPort: number) {
  return (node: string) =>
    node === "node-a"
      ? 'delivery: { routes: { example.net: "127.0.0.1:9" }, retry: [1h] }'
      : `delivery: { routes: { example.net: "127.0.0.1:${sinkPort}" } }`;
}

test("a transferred message keeps its arrival, attempts and schedule, and both delivery logs say so", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  await using sink = await startSink({ dir: dir.path });
  const [a, b] = await startNodes(dir.path, redis.url, 2, { extra: routes(sink.port) });
  try {
    await inject(a!, 3, (i) => `r${i}@example.net`);
    await inject(a!, 1, () => "x@example.org", "other");
    const before = runMta(["queue", "list", "--json", "-c", a!.configFile]);
    const listed = JSON.parse(before.stdout).messages as {
      id: string;
      arrivalMs: number;
      destination: string;
    }[];
    expect(listed.length).toBe(4);
    // B holds example.net for now, so that the moved messages can be looked at before delivery.
    await api(b!, "POST", "/api/v1/queue/suspend", { destination: "example.net", forMs: 600_000 });
    const r = runMta([
      "queue",
      "transfer",
      "--to",
      "node-b",
      "--destination",
      "example.net",
      "-c",
      a!.configFile,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe("3 of 3 message(s) moved to node-b (3 recipient(s) in 1 batch(es))");
    // The other destination stayed on A.
    const left = JSON.parse(runMta(["queue", "list", "--json", "-c", a!.configFile]).stdout).messages;
    expect(left.map((m: { destination: string }) => m.destination)).toEqual(["example.org"]);
    // On B, each one with its original arrival time.
    const moved = JSON.parse(runMta(["queue", "list", "--json", "-c", b!.configFile]).stdout).messages as {
      id: string;
      arrivalMs: number;
      attempts: number;
    }[];
    expect(moved.map((m) => m.arrivalMs).sort()).toEqual(
      listed
        .filter((m) => m.destination === "example.net")
        .map((m) => m.arrivalMs)
        .sort(),
    );
    const outs = await until(() => {
      const l = deliveryLog(a!.dir).filter((e) => e.type === "transfer-out");
      return l.length === 3 ? l : undefined;
    });
    const ins = await until(() => {
      const l = deliveryLog(b!.dir).filter((e) => e.type === "transfer-in");
      return l.length === 3 ? l : undefined;
    });
    for (const o of outs) {
      expect(o).toMatchObject({ to: "node-b", destination: "example.net", recipients: 1 });
      const i = ins.find((x) => x.originalId === o.id);
      expect(i).toMatchObject({ id: o.newId, from: "node-a", destination: "example.net" });
    }
    // On A the message is done: handed to the next hop, with the reply that says where.
    const shown = runMta(["queue", "show", String(outs[0]!.id), "-c", a!.configFile]);
    expect(shown.code).toBe(65);
    // B delivers them once resumed.
    expect(runMta(["queue", "resume", "example.net", "-c", b!.configFile]).code).toBe(0);
    const dumps = await sink.waitFor(3);
    expect(dumps.every((d) => /Subject: msg \d/.test(d))).toBe(true);
    // Transfer again: nothing left to move.
    const again = runMta([
      "queue",
      "transfer",
      "--to",
      "node-b",
      "--destination",
      "example.net",
      "-c",
      a!.configFile,
    ]);
    expect(again.stdout.trim()).toBe("0 of 0 message(s) moved to node-b (0 recipient(s) in 0 batch(es))");
  } finally {
    await Promise.all([a!.stop(), b!.stop()]);
  }
}, 60_000);

test("a node refuses a batch meant for another node or coming from itself, and malformed batches", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  const [b] = await startNodes(dir.path, redis.url, 1); // node-a
  try {
    const instance = "test-instance";
    const post = (body: unknown) => api(b!, "POST", "/api/v1/cluster/transfer-in", body);
    let r = await post({ from: { node: "node-a", instance }, to: "node-a", messages: [] });
    expect(r).toEqual({ status: 409, json: { error: "node node-a refuses a transfer to itself" } });
    r = await post({ from: { node: "node-x", instance }, to: "node-q", messages: [] });
    expect(r).toEqual({ status: 409, json: { error: "this is node node-a, not node-q: transfer refused" } });
    const good = {
      id: "X1",
      sender: "a@b.test",
      destination: "example.net",
      arrivalMs: 1,
      attempts: 0,
      nextAttemptMs: 1,
      recipients: [{ address: "r@example.net" }],
      attributes: {},
      body: Buffer.from("Subject: x\r\n\r\nhi\r\n").toString("base64"),
    };
    for (const [bad, message] of [
      [{ ...good, body: "@@@" }, "transfer: messages[0].body must be base64"],
      [{ ...good, recipients: [] }, "transfer: messages[0].recipients must be a non-empty list"],
      [{ ...good, attempts: -1 }, "transfer: messages[0].attempts must be a number >= 0"],
      [{ ...good, recipients: [{ address: "r@x", notify: ["SOMETIMES"] }] }, "NOTIFY"],
    ] as const) {
      r = await post({ from: { node: "node-x", instance }, to: "node-a", messages: [bad] });
      expect(r.status).toBe(400);
      expect(String(r.json.error)).toContain(message === "NOTIFY" ? "notify must list" : message);
    }
    r = await api(b!, "POST", "/api/v1/cluster/transfer-in", "not an object");
    expect(r.status).toBe(400);
    r = await post({ from: { node: "node-x", instance }, to: "node-a", messages: Array(1001).fill(good) });
    expect(r).toEqual({ status: 400, json: { error: "transfer: at most 1000 messages a batch, got 1001" } });
    // A good one is taken once, however often it is sent.
    const first = await post({ from: { node: "node-x", instance }, to: "node-a", messages: [good] });
    const second = await post({ from: { node: "node-x", instance }, to: "node-a", messages: [good] });
    expect(first.status).toBe(200);
    const a1 = (first.json.accepted as { newId: string; duplicate: boolean }[])[0]!;
    const a2 = (second.json.accepted as { newId: string; duplicate: boolean }[])[0]!;
    expect(a1.duplicate).toBe(false);
    expect(a2).toEqual({ id: "X1", newId: a1.newId, duplicate: true } as never);
    expect(JSON.parse(runMta(["queue", "list", "--json", "-c", b!.configFile]).stdout).matched).toBe(1);
  } finally {
    await b!.stop();
  }
}, 30_000);

test("10,000 messages moved with the sender killed -9 halfway and the transfer run again: none lost", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  await using sink = await startSink({ dir: dir.path });
  const [a, b] = await startNodes(dir.path, redis.url, 2, {
    extra: routes(sink.port),
    lease: "5s",
    timeout: "1s",
  });
  const N = 10_000;
  let a2: Awaited<ReturnType<typeof startMta>> | undefined;
  try {
    await inject(a!, N, (i) => `r${i}@example.net`);
    expect(
      JSON.parse(runMta(["queue", "summary", "--json", "-c", a!.configFile]).stdout).totals.messages,
    ).toBe(N);
    const cli = spawn([MTA, "queue", "transfer", "--to", "node-b", "-c", a!.configFile], {
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, ...env },
    });
    // Halfway (as B's log sees it): kill -9 the sender.
    await until(
      () => (deliveryLog(b!.dir).filter((e) => e.type === "transfer-in").length >= N / 2 ? 1 : undefined),
      120_000,
    );
    a!.proc.kill("SIGKILL");
    await a!.proc.exited;
    const cliCode = await cli.exited;
    const cliErr = await new Response(cli.stderr).text();
    expect(cliCode).not.toBe(0);
    expect(cliErr).toMatch(/^mta: /);
    // Start A again on the same spool and run the transfer again.
    a2 = await startMta({ dir: a!.dir, config: await Bun.file(a!.configFile).text(), env });
    const rest = runMta(["queue", "transfer", "--to", "node-b", "--json", "-c", a!.configFile], { env });
    expect(rest.code).toBe(0);
    const res = JSON.parse(rest.stdout);
    expect(res.failed).toEqual([]);
    const left = JSON.parse(runMta(["queue", "summary", "--json", "-c", a!.configFile]).stdout).totals
      .messages;
    expect(left).toBe(0);
    // Every message arrives at the sink; count the copies of each.
    await sink.waitFor(N, 180_000);
    await Bun.sleep(1000); // late duplicates would arrive now
    const seen = new Map<string, number>();
    for (const d of sink.dumps()) {
      const m = /Subject: msg (\d+)/.exec(d);
      if (m) seen.set(m[1]!, (seen.get(m[1]!) ?? 0) + 1);
    }
    const duplicates = [...seen.values()].reduce((s, n) => s + n - 1, 0);
    console.log(
      `10,000 messages, sender killed -9 after ${N / 2}+ had moved: second run moved ${res.moved} (${res.alreadyThere} already there), ${seen.size} distinct delivered, ${duplicates} duplicate(s)`,
    );
    expect(seen.size).toBe(N);
    // A duplicate needs the receiver to forget what it took (a restart): not here. Bounded anyway by a batch.
    expect(duplicates).toBeLessThanOrEqual(100);
  } finally {
    await a2?.stop();
    await b!.stop();
    await a!.stop();
  }
}, 300_000);

test("transfer needs the node to be alive: a node killed -9 leaves the registry within its lease", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  const [a, b] = await startNodes(dir.path, redis.url, 2, { lease: "2s" });
  try {
    await until(async () =>
      (await api(a!, "GET", "/api/v1/cluster/nodes")).json.nodesAlive === 2 ? 1 : undefined,
    );
    b!.proc.kill("SIGKILL");
    await b!.proc.exited;
    const t0 = Date.now();
    await until(async () => {
      const r = runMta(["queue", "transfer", "--to", "node-b", "-c", a!.configFile]);
      return r.code === 69 && /no live node named node-b/.test(r.stderr) ? r : undefined;
    }, 5000);
    expect(Date.now() - t0).toBeLessThan(4000);
  } finally {
    await a!.stop();
  }
}, 30_000);

test("drain: a typo changes nothing; then the node stops taking mail, moves everything and exits", async () => {
  using dir = tempDir();
  await using redis = await startRedis();
  await using sink = await startSink({ dir: dir.path });
  const [a, b] = await startNodes(dir.path, redis.url, 2, { extra: routes(sink.port) });
  try {
    await inject(a!, 50, (i) => `r${i}@example.net`);
    await until(async () =>
      (await api(a!, "GET", "/api/v1/cluster/nodes")).json.nodesAlive === 2 ? 1 : undefined,
    );
    const typo = runMta(["queue", "drain", "--to", "node-x", "-c", a!.configFile]);
    expect(typo.code).toBe(69);
    expect(typo.stderr.trim()).toBe("mta: no live node named node-x (alive: node-a, node-b)");
    // Still taking mail.
    await inject(a!, 1, () => "late@example.net", "late");
    const r = runMta(["queue", "drain", "--to", "node-b", "-c", a!.configFile]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(
      "drained: 51 message(s) moved to node-b (51 recipient(s)); the daemon is stopping",
    );
    expect(await a!.proc.exited).toBe(0);
    expect(a!.logLines().some((l) => l.msg === "drained; stopping")).toBe(true);
    await sink.waitFor(51, 30_000);
  } finally {
    await Promise.all([a!.stop(), b!.stop()]);
  }
}, 60_000);
