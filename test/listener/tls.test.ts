import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Listener, startListener } from "../../src/listener/index.ts";
import { Client, log, options, RecordingAcceptor, selfSignedCert, sleep } from "./_harness.ts";

const cert = selfSignedCert();
const acceptor = new RecordingAcceptor();
let starttls: Listener;
let implicit: Listener;
let plainAuth: Listener;
let users: Record<string, string>;
const b64 = (s: string) => Buffer.from(s).toString("base64");

beforeAll(async () => {
  users = { alice: await Bun.password.hash("s3cret", { algorithm: "bcrypt", cost: 4 }) };
  const tls = { cert: cert.cert, key: cert.key };
  // Nobody relays without AUTH on these listeners.
  starttls = await startListener(options({ tls, auth: "optional", users, relayFrom: [] }), acceptor, { log });
  implicit = await startListener(
    options({ tls, implicitTls: true, auth: "required", users, relayFrom: [] }),
    acceptor,
    {
      log,
    },
  );
  plainAuth = await startListener(
    options({ auth: "optional", users, allowPlaintextAuth: true, relayFrom: [], submission: true }),
    acceptor,
    { log },
  );
});
afterAll(async () => {
  await Promise.all([starttls.close(), implicit.close(), plainAuth.close()]);
  cert.dispose();
});

describe("STARTTLS and AUTH", () => {
  test("AUTH is offered only after STARTTLS; the session starts over under TLS", async () => {
    const c = await Client.connect(starttls.port);
    await c.reply();
    const ehlo = await c.cmd("EHLO c.test");
    expect(ehlo.lines).toContain("250-STARTTLS");
    expect(ehlo.text).not.toContain("AUTH");
    expect((await c.cmd("AUTH PLAIN")).text).toBe("530 5.7.0 Must issue a STARTTLS command first");
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("STARTTLS")).text).toBe("220 2.0.0 Ready to start TLS");
    await c.upgrade();
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(503); // RFC 3207 §4.2: EHLO again
    const ehlo2 = await c.cmd("EHLO c.test");
    expect(ehlo2.lines).toContain("250-AUTH PLAIN LOGIN");
    expect(ehlo2.text).not.toContain("STARTTLS");
    expect((await c.cmd("STARTTLS")).code).toBe(503);
    c.close();
  });

  test("plaintext pipelined after STARTTLS is discarded, never executed inside TLS (CVE-2011-0411)", async () => {
    const c = await Client.connect(starttls.port);
    await c.reply();
    await c.cmd("EHLO c.test");
    c.send("STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    expect((await c.reply()).code).toBe(220);
    await c.upgrade();
    expect((await c.cmd("EHLO c.test")).code).toBe(250);
    // Had the injected MAIL run, this would be a nested MAIL (503).
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    await sleep(20);
    expect(c.pending()).toBe("");
    c.close();
  });

  test("AUTH PLAIN then relay; the envelope records the user and the TLS session", async () => {
    const c = await Client.connect(starttls.port);
    await c.reply();
    await c.cmd("EHLO c.test");
    await c.cmd("STARTTLS");
    await c.upgrade();
    await c.cmd("EHLO c.test");
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).code).toBe(554);
    expect((await c.cmd("AUTH PLAIN")).code).toBe(503); // not inside a transaction
    await c.cmd("RSET");
    expect((await c.cmd(`AUTH PLAIN ${b64("\0alice\0wrong")}`)).text).toBe(
      "535 5.7.8 Error: authentication failed",
    );
    expect((await c.cmd(`AUTH PLAIN ${b64("\0nobody\0s3cret")}`)).code).toBe(535);
    expect((await c.cmd("AUTH PLAIN")).text).toBe("334 ");
    expect((await c.cmd(b64("\0alice\0s3cret"))).text).toBe("235 2.7.0 Authentication successful");
    expect((await c.cmd("AUTH PLAIN")).code).toBe(503);
    const before = acceptor.messages.length;
    c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    expect((await c.reply()).code).toBe(250);
    expect((await c.reply()).code).toBe(250);
    expect((await c.reply()).code).toBe(354);
    expect((await c.cmd("hi\r\n.")).code).toBe(250);
    const m = acceptor.messages[before]!;
    expect(m.envelope.authUser).toBe("alice");
    expect(m.envelope.tls?.protocol).toMatch(/^TLSv1\.[23]$/);
    expect(m.text).toMatch(/with ESMTPSA\r\n\t\(TLSv1\.[23] [A-Z0-9_-]+\)\r\n\tfor <d@e\.f>;/);
    c.close();
  });

  test("AUTH LOGIN, and * aborts an exchange", async () => {
    const c = await Client.connect(plainAuth.port);
    await c.reply();
    expect((await c.cmd("EHLO c.test")).lines).toContain("250-AUTH PLAIN LOGIN");
    expect((await c.cmd("AUTH LOGIN")).text).toBe("334 VXNlcm5hbWU6");
    expect((await c.cmd("*")).text).toBe("501 5.0.0 Authentication aborted");
    expect((await c.cmd("AUTH CRAM-MD5")).code).toBe(504);
    expect((await c.cmd(`AUTH LOGIN ${b64("alice")}`)).text).toBe("334 UGFzc3dvcmQ6");
    expect((await c.cmd("not base64!")).code).toBe(501);
    expect((await c.cmd("AUTH LOGIN")).code).toBe(334);
    expect((await c.cmd(b64("alice"))).code).toBe(334);
    expect((await c.cmd(b64("s3cret"))).code).toBe(235);
    c.close();
  });

  test("a submission listener adds Message-ID and Date when missing, and only then", async () => {
    const c = await Client.connect(plainAuth.port);
    await c.reply();
    await c.cmd("EHLO c.test");
    await c.cmd(`AUTH PLAIN ${b64("\0alice\0s3cret")}`);
    const before = acceptor.messages.length;
    for (const body of [
      "Subject: a\r\n\r\nx\r\n",
      "Message-ID: <m@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nx\r\n",
    ]) {
      c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
      await c.reply();
      await c.reply();
      await c.reply();
      expect((await c.cmd(`${body}.`)).code).toBe(250);
    }
    const [added, kept] = acceptor.messages.slice(before).map((m) => m.text);
    expect(added).toMatch(
      /;\r\n\t[^\r]+\r\nMessage-ID: <[0-9A-Z]{14}@mx\.test>\r\nDate: [^\r]+ \+0000\r\nSubject: a\r\n/,
    );
    expect(kept).toMatch(/;\r\n\t[^\r]+\r\nMessage-ID: <m@x>\r\nDate: Mon, 1 Jan 2024/);
    expect(kept!.match(/^Message-ID:/gim)?.length).toBe(1);
    c.close();
  });

  test("an implicit-TLS listener speaks TLS from the first byte and requires AUTH", async () => {
    const c = await Client.connectTls(implicit.port);
    expect((await c.reply()).text).toBe("220 mx.test ESMTP");
    const ehlo = await c.cmd("EHLO c.test");
    expect(ehlo.text).not.toContain("STARTTLS");
    expect(ehlo.lines).toContain("250-AUTH PLAIN LOGIN");
    expect((await c.cmd("MAIL FROM:<a@b.c>")).text).toBe("530 5.7.0 Authentication required");
    expect((await c.cmd(`AUTH PLAIN ${b64("alice\0alice\0s3cret")}`)).code).toBe(235);
    expect((await c.cmd("MAIL FROM:<a@b.c>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<d@e.f>")).code).toBe(250);
    c.close();
  });
});
