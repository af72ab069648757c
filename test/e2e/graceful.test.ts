import { expect, test } from "bun:test";
import { runMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { startSink } from "../support/sink.ts";
import { rawSession } from "../support/smtpClient.ts";

test("SIGTERM lets a session in DATA finish with 250, answers the idle one 421, and the message is kept", async () => {
  using dir = tempDir();
  const config = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }");
  let id: string;
  {
    await using mta = await startMta({ dir: dir.path, config });
    const port = mta.smtpPorts[0]!;
    const idle = await rawSession(port);
    expect(await idle.reply()).toStartWith("220");
    const busy = await rawSession(port);
    expect(await busy.reply()).toStartWith("220");
    busy.socket.write("EHLO client.test\r\n");
    expect(await busy.reply()).toStartWith("250");
    busy.socket.write("MAIL FROM:<a@app.test>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    expect(await busy.reply()).toStartWith("250");
    expect(await busy.reply()).toStartWith("250");
    expect(await busy.reply()).toStartWith("354");
    busy.socket.write("Subject: in flight\r\n\r\nfirst half\r\n");
    await Bun.sleep(100);
    mta.proc.kill("SIGTERM");
    expect(await idle.reply()).toMatch(/^421 /);
    await Bun.sleep(100);
    busy.socket.write("second half\r\n.\r\n");
    const done = await busy.reply();
    expect(done).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/);
    id = /queued as ([0-9A-Z]{14})/.exec(done)![1]!;
    expect(await mta.proc.exited).toBe(0);
  }
  const listed = runMta(["queue", "list", "--json", "-c", `${dir.path}/mta.yaml`]);
  expect(listed.code).toBe(0);
  expect(JSON.parse(listed.stdout).messages.map((m: { id: string }) => m.id)).toContain(id);
}, 30_000);

/** Opens a session and starts a transaction to `rcpt`, up to the 354. */
async function inData(port: number, rcpt: string) {
  const s = await rawSession(port);
  expect(await s.reply()).toStartWith("220");
  s.socket.write(`EHLO client.test\r\nMAIL FROM:<a@app.test>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
  for (const code of ["250", "250", "250", "354"]) expect(await s.reply()).toStartWith(code);
  return s;
}

/** Sends a message body over `ms` in `pieces` writes, then the final dot. */
async function slowBody(s: Awaited<ReturnType<typeof inData>>, token: string, ms: number, pieces = 6) {
  s.socket.write(`Subject: ${token}\r\n\r\n`);
  for (let i = 0; i < pieces; i++) {
    await Bun.sleep(ms / pieces);
    if (s.isClosed()) return;
    s.socket.write(`line ${i} of ${token}\r\n`);
  }
  s.socket.write(".\r\n");
}

/** What a new connection gets: its first reply, or "" when it is refused or closed first. */
async function greeting(port: number): Promise<string> {
  try {
    const s = await rawSession(port);
    const first = await s.reply();
    s.socket.end();
    return first;
  } catch {
    return "";
  }
}

test("SIGTERM during a DATA that takes 3 s: 250 within the default grace, and delivered after restart", async () => {
  using dir = tempDir();
  await using sink = await startSink({ dir: dir.path });
  const dead = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }");
  {
    await using mta = await startMta({ dir: dir.path, config: dead });
    const port = mta.smtpPorts[0]!;
    const s = await inData(port, "b@example.net");
    const body = slowBody(s, "three-seconds", 3000);
    await Bun.sleep(200);
    const t0 = performance.now();
    mta.proc.kill("SIGTERM");
    await mta.waitForLog((r) => r.msg === "stopping");
    // Stopping: no new session is served (the port is closed, or a late one gets 421).
    expect(await greeting(port)).not.toStartWith("220");
    await body;
    const done = await s.reply();
    expect(done).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/);
    expect(performance.now() - t0).toBeGreaterThan(2500);
    expect(await s.reply()).toMatch(/^421 4\.3\.2 /); // then the shutdown goodbye
    expect(await mta.proc.exited).toBe(0);
  }
  const live = testConfig(dir.path, `delivery: { routes: { example.net: '127.0.0.1:${sink.port}' } }`);
  await using again = await startMta({ dir: dir.path, config: live });
  const got = await sink.waitFor(1, 15_000);
  expect(again.proc.exitCode).toBeNull();
  expect(got[0]).toContain("Subject: three-seconds");
  expect(got[0]).toContain("line 5 of three-seconds");
}, 40_000);

test("past shutdown_grace a session still in DATA gets 421 and nothing of its message is kept", async () => {
  using dir = tempDir();
  const config = testConfig(
    dir.path,
    "shutdown_grace: 1s\ndelivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }",
  );
  {
    await using mta = await startMta({ dir: dir.path, config });
    const s = await inData(mta.smtpPorts[0]!, "b@example.net");
    const body = slowBody(s, "too-slow", 3000);
    await Bun.sleep(100);
    const t0 = performance.now();
    mta.proc.kill("SIGTERM");
    expect(await s.reply()).toMatch(/^421 4\.3\.2 /);
    const waited = performance.now() - t0;
    expect(waited).toBeGreaterThan(800);
    expect(waited).toBeLessThan(2500);
    await body;
    expect(await mta.proc.exited).toBe(0);
  }
  const listed = runMta(["queue", "list", "--json", "-c", `${dir.path}/mta.yaml`]);
  expect(listed.code).toBe(0);
  expect(JSON.parse(listed.stdout).messages).toEqual([]);
}, 30_000);

test("a second SIGTERM ends the grace at once: the session still in DATA gets 421 and the daemon exits 0", async () => {
  using dir = tempDir();
  const config = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }");
  await using mta = await startMta({ dir: dir.path, config });
  const s = await inData(mta.smtpPorts[0]!, "b@example.net");
  const body = slowBody(s, "hurried", 10_000);
  await Bun.sleep(100);
  const t0 = performance.now();
  mta.proc.kill("SIGTERM");
  await mta.waitForLog((r) => r.msg === "stopping");
  await Bun.sleep(300);
  mta.proc.kill("SIGTERM");
  expect(await s.reply()).toMatch(/^421 4\.3\.2 /);
  expect(performance.now() - t0).toBeLessThan(3000);
  expect(await mta.proc.exited).toBe(0);
  await body;
}, 30_000);
