import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Listener, startListener } from "../../src/listener/index.ts";
import { Client, log, options, RecordingAcceptor } from "./_harness.ts";

let listener: Listener;
const acceptor = new RecordingAcceptor();

beforeAll(async () => {
  listener = await startListener(options(), acceptor, { log });
});
afterAll(async () => {
  await listener.close();
});

async function hello(): Promise<Client> {
  const c = await Client.connect(listener.port);
  expect((await c.reply()).text).toBe("220 mx.test ESMTP");
  expect((await c.cmd("EHLO client.test")).code).toBe(250);
  return c;
}

describe("ESMTP session", () => {
  test("EHLO lists the extensions", async () => {
    const c = await Client.connect(listener.port);
    await c.reply();
    const r = await c.cmd("EHLO client.test");
    expect(r.lines).toEqual([
      "250-mx.test",
      "250-PIPELINING",
      "250-SIZE 1000000",
      "250-8BITMIME",
      "250-SMTPUTF8",
      "250-ENHANCEDSTATUSCODES",
      "250-DSN",
      "250-CHUNKING",
      "250 BINARYMIME",
    ]);
    expect((await c.cmd("QUIT")).text).toBe("221 2.0.0 Bye");
    await c.closed();
  });

  test("a message is handed to the acceptor byte-exact, dot-unstuffed, behind our Received header", async () => {
    const c = await hello();
    expect(
      (await c.cmd("MAIL FROM:<sender@example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=e+2B1")).text,
    ).toBe("250 2.1.0 Ok");
    expect(
      (await c.cmd("RCPT TO:<a@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@example.org")).code,
    ).toBe(250);
    expect((await c.cmd("RCPT TO:<b@example.net>")).text).toBe("250 2.1.5 Ok");
    expect((await c.cmd("DATA")).code).toBe(354);
    const before = acceptor.messages.length;
    c.send("Subject: hi\r\n\r\n..leading dot\r\ncaf\xc3\xa9\r\n.\r\n");
    expect((await c.reply()).text).toMatch(/^250 2\.0\.0 Ok: queued as ID\d+$/);
    const got = acceptor.messages[before]!;
    expect(got.envelope).toMatchObject({
      sender: "sender@example.com",
      recipients: [
        { address: "a@example.org", notify: ["FAILURE", "DELAY"], orcpt: "rfc822;a@example.org" },
        { address: "b@example.net" },
      ],
      envId: "e+1",
      ret: "HDRS",
      smtputf8: false,
      body: "8BITMIME",
      listener: "test",
      clientAddress: "127.0.0.1",
      helo: "client.test",
    });
    const bytes = got.message;
    const bodyAt = got.text.indexOf("Subject: hi");
    expect(got.text.slice(0, bodyAt)).toMatch(
      /^Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(mta\) with ESMTP;\r\n\t\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$/,
    );
    expect(Buffer.from(bytes.subarray(bodyAt)).toString("latin1")).toBe(
      "Subject: hi\r\n\r\n.leading dot\r\ncaf\xc3\xa9\r\n",
    );
    c.close();
  });

  test("a pipelined burst is answered in order", async () => {
    const c = await hello();
    const before = acceptor.messages.length;
    c.send(
      "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<bad>\r\nDATA\r\nbody\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
    );
    const codes = [];
    for (let i = 0; i < 8; i++) codes.push((await c.reply()).code);
    expect(codes).toEqual([250, 250, 501, 354, 250, 250, 250, 221]);
    expect(acceptor.messages[before]!.envelope.sender).toBe("");
    await c.closed();
  });

  test("a conversation split at every byte gets the same replies", async () => {
    const script = "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    for (let cut = 1; cut < script.length; cut += 1) {
      const c = await Client.connect(listener.port);
      await c.reply();
      c.send(script.slice(0, cut));
      await Bun.sleep(1);
      c.send(script.slice(cut));
      const codes = [];
      for (let i = 0; i < 6; i++) codes.push((await c.reply()).code);
      expect(codes).toEqual([250, 250, 250, 354, 250, 221]);
      c.close();
    }
  });

  test("out-of-order commands get the right codes", async () => {
    const c = await Client.connect(listener.port);
    await c.reply();
    expect((await c.cmd("MAIL FROM:<a@b.c>")).text).toBe("503 5.5.1 Error: send HELO/EHLO first");
    expect((await c.cmd("HELO")).code).toBe(501);
    expect((await c.cmd("HELO c.test")).text).toBe("250 mx.test");
    expect((await c.cmd("MAIL FROM:<a@b.c> SIZE=10")).code).toBe(555); // no parameters after HELO
    expect((await c.cmd("RCPT TO:<a@b.c>")).text).toBe("503 5.5.1 Error: need MAIL command");
    expect((await c.cmd("DATA")).code).toBe(503);
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("MAIL FROM:<a@b.c>")).text).toBe("503 5.5.1 Error: nested MAIL command");
    expect((await c.cmd("DATA")).text).toBe("554 5.5.1 Error: no valid recipients");
    expect((await c.cmd("DATA now")).code).toBe(501);
    expect((await c.cmd("FOO")).text).toBe("500 5.5.2 Error: command not recognized");
    expect((await c.cmd("VRFY x")).code).toBe(252);
    expect((await c.cmd("EXPN x")).code).toBe(502);
    expect((await c.cmd("HELP")).code).toBe(214);
    expect((await c.cmd("STARTTLS")).code).toBe(502); // no TLS configured
    expect((await c.cmd("AUTH PLAIN")).code).toBe(503); // AUTH off
    expect((await c.cmd("RSET x")).code).toBe(501);
    expect((await c.cmd("RSET")).code).toBe(250);
    expect((await c.cmd("MAIL FROM:a@b.c")).code).toBe(501);
    expect((await c.cmd("MAIL TO:<a@b.c>")).code).toBe(501);
    c.close();
  });

  test("SMTPUTF8 addresses need the SMTPUTF8 parameter", async () => {
    const c = await hello();
    expect((await c.cmd("MAIL FROM:<用户@例子.广告>")).text).toBe(
      "553 5.6.7 Non-ASCII sender address needs SMTPUTF8",
    );
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>")).code).toBe(553);
    expect((await c.cmd("RSET")).code).toBe(250);
    expect((await c.cmd("MAIL FROM:<用户@例子.广告> SMTPUTF8")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>")).code).toBe(250);
    expect((await c.cmd("DATA")).code).toBe(354);
    const before = acceptor.messages.length;
    expect((await c.cmd("Subject: ü\r\n\r\nx\r\n.")).code).toBe(250);
    const got = acceptor.messages[before]!;
    expect(got.envelope.smtputf8).toBe(true);
    expect(got.envelope.sender).toBe("用户@例子.广告");
    expect(got.text).toContain("with UTF8SMTP\r\n\tfor <δοκιμή@παράδειγμα.δοκιμή>;");
    c.close();
  });

  test("BDAT chunks make one message; BINARYMIME needs BDAT; sizes are counted exactly", async () => {
    const c = await hello();
    const before = acceptor.messages.length;
    expect((await c.cmd("MAIL FROM:<a@b.c> BODY=BINARYMIME")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).code).toBe(250);
    expect((await c.cmd("DATA")).text).toBe("503 5.5.1 Error: BINARYMIME needs BDAT");
    c.send("BDAT 7\r\nab\r\n.\nc");
    expect((await c.reply()).text).toBe("250 2.0.0 Ok: 7 octets received");
    c.send("BDAT 3 LAST\r\n\x00\r\n");
    expect((await c.reply()).code).toBe(250);
    const m = acceptor.messages[before]!;
    expect(m.envelope.body).toBe("BINARYMIME");
    expect(m.text.slice(m.text.indexOf("\r\n\r\n") === -1 ? 0 : 0).endsWith("ab\r\n.\nc\x00\r\n")).toBe(true);
    // A BDAT without a transaction is read and refused; a shorter chunk swallows what follows.
    c.send("BDAT 4\r\nwxyzNOOP\r\n");
    expect((await c.reply()).text).toBe("503 5.5.1 Error: need MAIL command");
    expect((await c.reply()).code).toBe(250);
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).code).toBe(250);
    c.send("BDAT 3 LAST\r\nhelloNOOP\r\n");
    expect((await c.reply()).code).toBe(250);
    expect(acceptor.messages.at(-1)!.text.endsWith("\r\nhel")).toBe(true);
    expect((await c.reply()).text).toBe("500 5.5.2 Error: command not recognized"); // "loNOOP"
    c.send("BDAT 0 LAST\r\n");
    expect((await c.reply()).code).toBe(503);
    c.send("BDAT x\r\n");
    expect((await c.reply()).code).toBe(501);
    await c.closed();
  });

  test("BDAT without BINARYMIME: a CRLF split across chunks is fine, a CR left at the end is a bare CR (521)", async () => {
    const c = await hello();
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).code).toBe(250);
    c.send("BDAT 13\r\nSubject: x\r\n\r");
    expect((await c.reply()).code).toBe(250);
    c.send("BDAT 6 LAST\r\n\nbody\r");
    expect((await c.reply()).text).toBe("521 5.5.2 mx.test Error: bare <CR> received");
    await c.closed();
  });

  test("an acceptor refusal is sent as is, and an exception becomes 451 4.3.0", async () => {
    const c = await hello();
    acceptor.next = async () => ({
      ok: false,
      reply: { code: 452, enhanced: "4.3.1", lines: ["Insufficient system storage"] },
    });
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    await c.reply();
    await c.reply();
    await c.reply();
    expect((await c.cmd("x\r\n.")).text).toBe("452 4.3.1 Insufficient system storage");
    acceptor.next = async () => {
      throw new Error("disk on fire");
    };
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    await c.reply();
    await c.reply();
    await c.reply();
    const r = await c.cmd("x\r\n.");
    expect(r.text).toBe("451 4.3.0 Error: local error in processing");
    expect(r.text).not.toContain("fire");
    acceptor.next = undefined;
    expect((await c.cmd("NOOP")).code).toBe(250);
    c.close();
  });
});
