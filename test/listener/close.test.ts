import { describe, expect, test } from "bun:test";
import { type AcceptResult, startListener } from "../../src/listener/index.ts";
import { Client, log, options, RecordingAcceptor, sleep } from "./_harness.ts";

describe("graceful close", () => {
  test("close stops accepting, answers idle sessions 421, lets a session in DATA finish", async () => {
    const acceptor = new RecordingAcceptor();
    const listener = await startListener(options(), acceptor, { log });
    const idle = await Client.connect(listener.port);
    await idle.reply();
    await idle.cmd("EHLO c.test");
    const inData = await Client.connect(listener.port);
    await inData.reply();
    inData.send("EHLO c.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    for (let i = 0; i < 4; i++) await inData.reply();
    inData.send("Subject: partial\r\n");
    await sleep(20);

    const closing = listener.close({ graceMs: 5000 });
    expect((await idle.reply()).text).toBe("421 4.3.2 mx.test Service shutting down");
    await idle.closed();
    // New connections are refused.
    await expect(Client.connect(listener.port)).rejects.toThrow();

    inData.send("\r\nbody\r\n.\r\n");
    expect((await inData.reply()).code).toBe(250);
    expect((await inData.reply()).code).toBe(421);
    await inData.closed();
    await closing;
    expect(acceptor.messages.length).toBe(1);
    expect(listener.connections()).toBe(0);
  });

  test("after graceMs a session still in DATA gets 421; one with the acceptor gets its answer first", async () => {
    let release: (r: AcceptResult) => void = () => {};
    const acceptor = {
      accept: () => new Promise<AcceptResult>((r) => (release = r)),
    };
    const listener = await startListener(options(), acceptor, { log });
    const slow = await Client.connect(listener.port);
    await slow.reply();
    slow.send("EHLO c.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    for (let i = 0; i < 4; i++) await slow.reply();
    const busy = await Client.connect(listener.port);
    await busy.reply();
    busy.send("EHLO c.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    for (let i = 0; i < 4; i++) await busy.reply();
    busy.send("x\r\n.\r\n");
    await sleep(20);

    const closing = listener.close({ graceMs: 100 });
    expect((await slow.reply()).text).toBe("421 4.3.2 mx.test Service shutting down");
    await slow.closed();
    await sleep(50);
    expect(busy.ended).toBe(false);
    release({ ok: true, ids: ["ID1"] });
    expect((await busy.reply()).text).toBe("250 2.0.0 Ok: queued as ID1");
    expect((await busy.reply()).code).toBe(421);
    await closing;
  });
});
