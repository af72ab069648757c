import { describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/lib/index.ts";
import { startListener } from "../../src/listener/index.ts";
import { Metrics } from "../../src/observe/index.ts";
import { Client, log, options, RecordingAcceptor, sleep } from "./_harness.ts";

async function started(over: Parameters<typeof options>[0] = {}, clock?: ManualClock) {
  const acceptor = new RecordingAcceptor();
  const metrics = new Metrics();
  const listener = await startListener(
    options(over),
    acceptor,
    clock ? { log, metrics, clock } : { log, metrics },
  );
  return {
    acceptor,
    metrics,
    listener,
    async client() {
      const c = await Client.connect(listener.port);
      await c.reply();
      await c.cmd("EHLO c.test");
      return c;
    },
    [Symbol.asyncDispose]: () => listener.close(),
  };
}

describe("limits and hygiene", () => {
  test("relay is refused with 554 5.7.1 for a client outside relay_from", async () => {
    await using t = await started({ relayFrom: [] });
    const c = await t.client();
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).text).toBe("554 5.7.1 Relay access denied");
    c.close();
  });

  test("SIZE declared above the limit gets 552 5.3.4 at MAIL", async () => {
    await using t = await started({ maxMessageBytes: 1000 });
    const c = await t.client();
    expect((await c.cmd("MAIL FROM:<a@b.c> SIZE=1001")).text).toBe(
      "552 5.3.4 Message size exceeds fixed limit",
    );
    c.close();
  });

  test("a message that grows past the limit while streaming gets 552 5.3.4 and is not accepted", async () => {
    await using t = await started({ maxMessageBytes: 1000 });
    const c = await t.client();
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    await c.reply();
    await c.reply();
    await c.reply();
    c.send(`${"x".repeat(998)}\r\n${"y".repeat(500)}\r\n.\r\n`);
    expect((await c.reply()).text).toBe("552 5.3.4 Error: message too big");
    expect(t.acceptor.messages.length).toBe(0);
    // The session goes on.
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 1001 LAST\r\n");
    await c.reply();
    await c.reply();
    c.send("z".repeat(1001));
    expect((await c.reply()).code).toBe(552);
    expect((await c.cmd("NOOP")).code).toBe(250);
    c.close();
  });

  test("recipients beyond the limit get 452 4.5.3", async () => {
    await using t = await started({ maxRecipients: 2 });
    const c = await t.client();
    await c.cmd("MAIL FROM:<a@b.c>");
    expect((await c.cmd("RCPT TO:<1@e.f>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<2@e.f>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<3@e.f>")).text).toBe("452 4.5.3 Error: too many recipients");
    c.close();
  });

  test("an overlong command line gets 500 5.5.2 and the rest of the line is ignored", async () => {
    await using t = await started({ maxLineBytes: 100 });
    const c = await t.client();
    expect((await c.cmd(`NOOP ${"x".repeat(200)}`)).text).toBe("500 5.5.2 Error: line too long");
    // A line longer than the limit, sent in pieces, gets a single reply.
    c.send(`NOOP ${"x".repeat(150)}`);
    await sleep(20);
    c.send(`${"x".repeat(150)}\r\nNOOP\r\n`);
    expect((await c.reply()).code).toBe(500);
    expect((await c.reply()).code).toBe(250);
    c.close();
  });

  test("NUL bytes, random bytes and invalid UTF-8 in commands are refused, not crashes", async () => {
    await using t = await started({ maxErrors: 1000 });
    const c = await t.client();
    expect((await c.cmd("NO\x00OP")).text).toBe("500 5.5.2 Error: NUL character in command");
    expect((await c.cmd("EHLO \xff\xfe")).text).toBe("500 5.5.2 Error: invalid UTF-8 in command");
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 256;
    for (let i = 0; i < 50; i++) {
      const junk = Buffer.from(Array.from({ length: 40 }, () => rnd()).filter((b) => b !== 10 && b !== 13));
      c.send(Buffer.concat([junk, Buffer.from("\r\n")]));
      expect((await c.reply()).code).toBeGreaterThanOrEqual(500);
    }
    expect((await c.cmd("NOOP")).code).toBe(250);
    c.close();
  });

  test("too many errors end the session with 421", async () => {
    await using t = await started({ maxErrors: 3 });
    const c = await t.client();
    await c.cmd("X1");
    await c.cmd("X2");
    c.send("X3\r\n");
    expect((await c.reply()).code).toBe(500);
    expect((await c.reply()).text).toBe("421 4.7.0 mx.test Error: too many errors");
    await c.closed();
  });

  test.each([
    ["LF.LF", "a\n.\nMAIL FROM:<evil@x>\r\n"],
    ["LF.CRLF", "a\n.\r\nMAIL FROM:<evil@x>\r\n"],
    ["CR.CR", "a\r.\rMAIL FROM:<evil@x>\r\n"],
    ["bare CR", "a\rb\r\n"],
  ])("SMTP smuggling: %s in DATA gets 521 5.5.2 and no message", async (_name, payload) => {
    await using t = await started();
    const c = await t.client();
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    await c.reply();
    await c.reply();
    await c.reply();
    c.send(`${payload}\r\n.\r\n`);
    expect((await c.reply()).text).toMatch(/^521 5\.5\.2 mx\.test Error: bare <(LF|CR)> received$/);
    await c.closed();
    expect(t.acceptor.messages.length).toBe(0);
  });

  test("a bare LF ending a command gets 521 5.5.2", async () => {
    await using t = await started();
    const c = await t.client();
    c.send("NOOP\n");
    expect((await c.reply()).text).toBe("521 5.5.2 mx.test Error: bare <LF> received");
    await c.closed();
  });

  test("with rejectBareNewlines off, bare LF is content and only CRLF.CRLF ends DATA", async () => {
    await using t = await started({ rejectBareNewlines: false });
    const c = await t.client();
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    await c.reply();
    await c.reply();
    await c.reply();
    c.send("a\n.\nMAIL FROM:<evil@x>\r\n.\r\n");
    expect((await c.reply()).code).toBe(250);
    expect(t.acceptor.messages.length).toBe(1);
    expect(t.acceptor.messages[0]!.text.endsWith("\r\na\n.\nMAIL FROM:<evil@x>\r\n")).toBe(true);
    c.close();
  });

  test("connections beyond the per-IP limit get 421 4.7.0", async () => {
    await using t = await started({ maxConnectionsPerIp: 2 });
    const a = await t.client();
    const b = await t.client();
    const c = await Client.connect(t.listener.port);
    expect((await c.reply()).text).toBe("421 4.7.0 mx.test Error: too many connections");
    await c.closed();
    expect(t.listener.connections()).toBe(2);
    a.close();
    await sleep(50);
    const d = await Client.connect(t.listener.port);
    expect((await d.reply()).code).toBe(220);
    d.close();
    b.close();
    expect(t.metrics.render()).toContain(
      'mta_listener_connections_total{listener="test",result="refused"} 1',
    );
  });

  test("a session idle past the command timeout gets 421 4.4.2 (manual clock)", async () => {
    const clock = new ManualClock();
    await using t = await started({ commandTimeoutMs: 60_000, dataTimeoutMs: 120_000 }, clock);
    const c = await t.client();
    clock.advance(59_000);
    await sleep(1100);
    expect(c.ended).toBe(false);
    clock.advance(2_000);
    expect((await c.reply(3000)).text).toBe("421 4.4.2 mx.test Error: timeout exceeded");
    await c.closed();
  });

  test("a client that sends without reading is paused: its replies do not pile up in our memory", async () => {
    await using t = await started({ maxErrors: 1_000_000 });
    const c = await t.client();
    // Never read; keep pipelining NOOPs until the server stops reading (our writes back up).
    const chunk = Buffer.from("NOOP\r\n".repeat(10_000));
    let sent = 0;
    c.socket.pause();
    while (sent < 200_000_000) {
      c.socket.write(chunk);
      sent += chunk.length;
      if (c.socket.writableLength > 8_000_000) break;
      if (sent % (chunk.length * 20) === 0) await sleep(1);
    }
    // The server stopped consuming input long before 200 MB went through.
    expect(c.socket.writableLength).toBeGreaterThan(8_000_000);
    expect(sent).toBeLessThan(200_000_000);
    c.close();
  });

  test("the global connection limit gets 421 4.7.0 too", async () => {
    await using t = await started({ maxConnections: 1 });
    const a = await t.client();
    const b = await Client.connect(t.listener.port);
    expect((await b.reply()).code).toBe(421);
    await b.closed();
    a.close();
  });

  test("a session stalled in DATA past the data timeout gets 421 4.4.2 and nothing is accepted (manual clock)", async () => {
    const clock = new ManualClock();
    await using t = await started({ commandTimeoutMs: 1_000_000, dataTimeoutMs: 60_000 }, clock);
    const c = await t.client();
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\npartial line");
    for (let i = 0; i < 3; i++) await c.reply();
    clock.advance(60_001);
    expect((await c.reply(3000)).text).toBe("421 4.4.2 mx.test Error: timeout exceeded");
    await c.closed();
    expect(t.acceptor.messages.length).toBe(0);
  });

  test("random byte streams never crash the listener; every session answers or closes", async () => {
    await using t = await started({ maxErrors: 5, rejectBareNewlines: true });
    let seed = 12345;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
    const pieces = [
      "\r\n",
      "\n",
      "\r",
      ".",
      "DATA\r\n",
      "BDAT 5\r\n",
      "MAIL FROM:<a@b.c>\r\n",
      "RCPT TO:<d@e.f>\r\n",
      "\x00",
      "\xff",
    ];
    for (let round = 0; round < 30; round++) {
      const c = await t.client();
      const parts: Buffer[] = [];
      for (let i = 0; i < 60; i++) {
        if (rnd(3) === 0) parts.push(Buffer.from(pieces[rnd(pieces.length)]!, "latin1"));
        else parts.push(Buffer.from(Array.from({ length: rnd(20) }, () => rnd(256))));
      }
      c.send(Buffer.concat(parts));
      await sleep(5);
      c.close();
    }
    // Still healthy.
    const c = await t.client();
    expect((await c.cmd("NOOP")).code).toBe(250);
    c.close();
    await sleep(50);
    expect(t.listener.connections()).toBe(0);
  });
});
