/**
 * `mta queue` as a child process (the real citty command tree, run by bun): tables, --json, exit
 * codes, against a live control API and against a stopped spool.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { QueueOps, queueRoutes } from "../../src/admin/index.ts";
import { Metrics, silentLogger, startControlServer } from "../../src/observe/index.ts";
import { Spool } from "../../src/spool/index.ts";

const SRC = resolve(import.meta.dir, "../../src");
const BUN = process.execPath;
let dir = "";
let main = "";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "mta-queue-cli-"));
  main = join(dir, "main.ts");
  writeFileSync(
    main,
    [
      `import { defineCommand } from "citty";`,
      `import { run } from "${SRC}/cli/_run.ts";`,
      `import queue from "${SRC}/cli/queue.ts";`,
      `const main = defineCommand({ meta: { name: "mta" }, subCommands: { queue } });`,
      "process.exitCode = await run(main, process.argv.slice(2));",
    ].join("\n"),
  );
  const spool = await Spool.open({ dir: join(dir, "spool"), sync: false, segmentSizeBytes: 4096 });
  const now = Date.now();
  for (let i = 0; i < 40; i++) {
    const d = i < 30 ? "big.test" : "small.test";
    const { slot } = await spool.append({
      sender: i % 2 ? "app@origin.test" : "",
      destination: d,
      recipients: [{ address: `u${i}@${d}` }],
      body: new TextEncoder().encode(`Subject: m${i}\r\n\r\n${"x".repeat(200)}\r\n`),
      arrivalMs: now - (40 - i) * 60_000,
    });
    await spool.recordOutcome(slot, {
      recipients: [{ index: 0, state: "pending", reply: "421 4.4.2 connection dropped" }],
      attempts: 2,
      nextAttemptMs: now + 3_600_000,
    });
  }
  await spool.close();
  writeConfig(0);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeConfig(controlPort: number): void {
  writeFileSync(
    join(dir, "mta.yaml"),
    [
      "hostname: mta.test",
      `spool: { dir: ${join(dir, "spool")}, sync: false, segment_size: 4096 }`,
      `control: { address: 127.0.0.1:${controlPort} }`,
      `log: { deliveries: ${join(dir, "deliveries.jsonl")} }`,
    ].join("\n"),
  );
}

async function mta(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn([BUN, main, "queue", ...args, "-c", join(dir, "mta.yaml")], {
    stdout: "pipe",
    stderr: "pipe",
    cwd: resolve(import.meta.dir, "../.."),
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
}

test("summary, list and show print tables offline, and --json gives the API's shapes", async () => {
  const s = await mta("summary");
  expect(s.code).toBe(0);
  expect(s.stdout).toMatch(
    /^DESTINATION\s+MSGS\s+RCPTS\s+BYTES\s+OLDEST\s+NEXT\s+CONNS\s+STATE\s+LAST ERROR$/m,
  );
  // Ages are read at the moment the command runs: a slow machine adds seconds (40m1s, in 59m59s).
  expect(s.stdout).toMatch(/^big\.test\s+30\s+30\s+.*\s+40m(\d+s)?\s+in (1h|59m\d+s)\s+0\s+idle/m);
  expect(s.stdout).toMatch(/^TOTAL 2 destination\(s\)\s+40\s+40/m);
  expect(s.stdout).toContain("read from the spool directory");
  const top = JSON.parse((await mta("summary", "--top", "1", "--sort", "oldest", "--json")).stdout);
  expect(top.destinations.map((r: { destination: string }) => r.destination)).toEqual(["big.test"]);
  expect(top.omitted).toBe(1);

  const l = await mta("list", "--destination", "small.test", "--older-than", "5m");
  expect(l.code).toBe(0);
  expect(l.stdout).toContain("6 message(s)");
  const ids = [...l.stdout.matchAll(/^([0-9A-Z]{14})\s+small\.test/gm)].map((m) => m[1]!);
  expect(ids).toHaveLength(6);
  const sh = await mta("show", ids[0]!, "--body");
  expect(sh.code).toBe(0);
  expect(sh.stdout).toContain("last reply: 421 4.4.2 connection dropped");
  expect(sh.stdout).toContain("Subject: m30");
  expect(sh.stdout).toContain("x".repeat(200));
});

test("usage errors exit 64, an unknown id 65, suspend without a daemon 69", async () => {
  expect((await mta("summary", "--sort", "size")).code).toBe(64);
  expect((await mta("list", "--older-than", "soon")).code).toBe(64);
  const unknown = await mta("show", "0000000000000Z");
  expect(unknown.code).toBe(65);
  expect(unknown.stderr).toContain("no message 0000000000000Z");
  const s = await mta("suspend", "big.test", "--for", "2h");
  expect(s.code).toBe(69);
  expect(s.stderr).toContain("needs a running daemon");
});

test("through a live control API the output is the same; actions count first, act with --yes", async () => {
  const offline = JSON.parse((await mta("list", "--json")).stdout);
  const spool = await Spool.open({ dir: join(dir, "spool"), sync: false, segmentSizeBytes: 4096 });
  const ops = new QueueOps({ spool, hostname: "mta.test" });
  // As `mta serve` runs it: TCP without a token, and the control socket in the spool directory, which
  // is the way in for root and the daemon's user (TCP alone would refuse /api/ without a token).
  const control = startControlServer({
    host: "127.0.0.1",
    port: 0,
    socketPath: join(dir, "spool", "control.sock"),
    log: silentLogger(),
    metrics: new Metrics(),
    routes: queueRoutes(ops),
  });
  writeConfig(control.port);
  try {
    const live = JSON.parse((await mta("list", "--json")).stdout);
    delete live.nowMs;
    delete offline.nowMs;
    expect(live).toEqual(offline);
    const count = await mta("delete", "--destination", "small.test");
    expect(count.code).toBe(0);
    expect(count.stdout).toContain("10 message(s) match");
    expect(count.stdout).toContain("run again with --yes");
    expect(spool.messageCount).toBe(40);
    const del = await mta("delete", "--destination", "small.test", "--yes");
    expect(del.stdout).toContain("10 of 10 message(s) deleted");
    expect(spool.messageCount).toBe(30);
    const st = await mta("stats");
    expect(st.stdout).toMatch(/^messages:\s+30$/m);
  } finally {
    await control.stop();
    await spool.close();
    writeConfig(0);
  }
});

test("verify exits 0 on a sound spool and 65 naming the segment and offset of a damaged record", async () => {
  const ok = await mta("verify");
  expect(ok.code).toBe(0);
  expect(ok.stdout.trim().split("\n").at(-1)).toBe("ok");
  const segs = readdirSync(join(dir, "spool", "segments"))
    .filter((n) => n.endsWith(".seg"))
    .sort();
  expect(segs.length).toBeGreaterThan(2);
  const sealed = join(dir, "spool", "segments", segs[0]!);
  const fd = openSync(sealed, "r+");
  writeSync(fd, Buffer.from([0xff, 0xfe, 0xfd]), 0, 3, Math.floor(statSync(sealed).size / 2));
  const bad = await mta("verify");
  expect(bad.code).toBe(65);
  expect(bad.stdout).toContain(`DAMAGED ${segs[0]} offset`);
});
