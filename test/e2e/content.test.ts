/**
 * What mta sends to a next hop, through dist/mta with third-party peers (aiosmtpd, Postfix's
 * smtp-sink, Python's smtplib and email, mailauth): lines within 998 octets whatever came in (SMTP,
 * the inject API, mta send) with DKIM still verifying, 8-bit content only to 8BITMIME servers,
 * binary content only by BDAT to CHUNKING+BINARYMIME servers, bare CR/LF and NUL handled alike in DATA
 * and BDAT, SMTPUTF8 addresses written as UTF-8 (the DSN to a UTF-8 sender too), and a pooled
 * smarthost session never reused with other credentials.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { join } from "node:path";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { startTxtServer, type TxtServer } from "../dkim/_dns.ts";
import { Client } from "../listener/_harness.ts";
import { startAiosmtpd } from "../support/aiosmtpd.ts";
import {
  controlFetch,
  deliveryLog,
  runMta,
  startMta,
  type TempDir,
  tempDir,
  testConfig,
} from "../support/mta.ts";
import { freePort, startSink } from "../support/sink.ts";

const PY = "/usr/bin/python3";
const LEAVES = join(import.meta.dir, "../mime/_leaves.py");

let keys: TempDir;
let dns: TxtServer;
let keyFile: string;

beforeAll(async () => {
  keys = tempDir("mta-e2e-content-");
  dns = await startTxtServer();
  keyFile = join(keys.path, "k.pem");
  const r = runMta(["dkim", "keygen", "--domain", "app.test", "--selector", "s1", "--out", keyFile]);
  expect(r.code).toBe(0);
  dns.set("s1._domainkey.app.test", [...r.stdout.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join(""));
});
afterAll(async () => {
  await dns.close();
  keys[Symbol.dispose]();
});

const DKIM = () => `dkim: { keys: [{ domain: app.test, selector: s1, key_file: ${keyFile} }] }`;

async function dkimResults(message: Buffer): Promise<string[]> {
  const res = await dkimVerify(message, { resolver: dns.resolver as never } as never);
  return res.results.map((r) => r.status.result);
}

/** The leaves of a message as Python's email package decodes them (text compared line by line). */
function leaves(m: Buffer): { type: string; payload: string }[] {
  const r = spawnSync([PY, LEAVES], { stdin: m });
  if (r.exitCode !== 0) throw new Error(r.stderr.toString());
  const out = JSON.parse(r.stdout.toString()).leaves as { type: string; payload: string }[];
  return out.map((l) => ({
    type: l.type,
    payload: l.type.startsWith("text/")
      ? Buffer.from(l.payload, "base64").toString("latin1").replace(/\r\n/g, "\n").replace(/\n+$/, "")
      : l.payload,
  }));
}

function longestLine(m: Buffer): number {
  return Math.max(
    ...m
      .toString("latin1")
      .split("\r\n")
      .map((l) => l.length),
  );
}

/** Runs a Python script with `s`, an smtplib.SMTP connected to `port`, and `M`, the bytes of `stdin`. */
function smtplib(port: number, script: string, stdin = ""): unknown {
  const r = spawnSync(
    [
      PY,
      "-c",
      `import json, os, smtplib, sys\nM = sys.stdin.buffer.read()\ns = smtplib.SMTP("127.0.0.1", ${port})\n${script}`,
    ],
    { stdin: Buffer.from(stdin, "latin1"), stdout: "pipe", stderr: "pipe" },
  );
  if (r.exitCode !== 0) throw new Error(`python: ${r.stderr.toString()}`);
  return JSON.parse(r.stdout.toString());
}

async function waitFor<T>(fn: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("timed out");
    await Bun.sleep(50);
  }
}

const HTML_LINE = `<p>${"long html line without any break ".repeat(6500)}</p>`; // ~200,000 octets

describe("lines over 998 octets", () => {
  test("SMTP, the inject API and mta send (daemon and local): the next hop sees no line over 998, the content decodes the same, DKIM verifies", async () => {
    using dir = tempDir();
    await using peer = await startAiosmtpd({ dir: dir.path });
    const message = [
      "From: app@app.test",
      "To: u@example.net",
      `Subject: ${"long subject ".repeat(120)}`,
      "MIME-Version: 1.0",
      "Content-Type: text/html; charset=utf-8",
      "",
      "short",
      "y".repeat(5000),
      HTML_LINE,
      "",
    ].join("\r\n");
    // A fixed control port: mta send finds the daemon through the configuration.
    const config = testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }\n${DKIM()}`,
    ).replace("control: { address: 127.0.0.1:0 }", `control: { address: 127.0.0.1:${freePort()} }`);
    {
      await using mta = await startMta({ dir: dir.path, config });
      const sent = smtplib(
        mta.smtpPorts[0]!,
        `print(json.dumps({"refused": list(s.sendmail("app@app.test", ["u@example.net"], M))}))`,
        message,
      );
      expect(sent).toEqual({ refused: [] });
      const api = await controlFetch(mta.dir, "/api/v1/inject", {
        method: "POST",
        body: JSON.stringify({ sender: "app@app.test", recipients: ["u@example.net"], message }),
      });
      expect(api.status).toBe(200);
      const send = runMta(["send", "-c", mta.configFile, "-f", "app@app.test", "u@example.net"], {
        stdin: message,
      });
      expect(send.code).toBe(0);
      await peer.waitFor(3);
    }
    // No daemon: mta send delivers by itself.
    const local = runMta(["send", "-c", join(dir.path, "mta.yaml"), "-f", "app@app.test", "u@example.net"], {
      stdin: message,
    });
    expect(local.stderr).toBe("");
    expect(local.code).toBe(0);
    const got = await peer.waitFor(4);
    const want = leaves(Buffer.from(message, "latin1"));
    for (const m of got) {
      expect(longestLine(m.content)).toBeLessThanOrEqual(998);
      expect(leaves(m.content)).toEqual(want);
      expect(await dkimResults(m.content)).toEqual(["pass"]);
    }
  }, 60_000);

  test("a header line that cannot be folded is refused with 554 5.5.2 (SMTP) and 400 (inject API); nothing is stored", async () => {
    using dir = tempDir();
    await using mta = await startMta({ dir: dir.path });
    const message = `From: a@app.test\r\nX-Token: ${"t".repeat(1500)}\r\n\r\nbody\r\n`;
    const out = smtplib(
      mta.smtpPorts[0]!,
      `s.ehlo("client.test"); s.mail("a@app.test"); s.rcpt("b@example.net")\ncode, text = s.data(M)\nprint(json.dumps([code, text.decode()]))`,
      message,
    );
    expect(out).toEqual([
      554,
      "5.5.2 Error: message not accepted: a header line of 1509 octets has no whitespace to fold it at within 998",
    ]);
    const api = await controlFetch(mta.dir, "/api/v1/inject", {
      method: "POST",
      body: JSON.stringify({ sender: "a@app.test", recipients: ["b@example.net"], message }),
    });
    expect(api.status).toBe(400);
    expect(((await api.json()) as { error: string }).error).toContain("no whitespace to fold");
    expect(deliveryLog(dir.path).filter((e) => e.type === "reception")).toEqual([]);
  }, 30_000);
});

describe("8-bit and binary content", () => {
  test("8-bit mail to a server without 8BITMIME (aiosmtpd) arrives as quoted-printable that decodes to the same text", async () => {
    using dir = tempDir();
    await using peer = await startAiosmtpd({ dir: dir.path, noEightBitMime: true });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }`),
    });
    const message = Buffer.from(
      "From: a@app.test\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, 用户\r\n",
      "utf8",
    );
    const out = smtplib(
      mta.smtpPorts[0]!,
      `print(json.dumps(list(s.sendmail("a@app.test", ["u@example.net"], bytes.fromhex("${message.toString("hex")}"), mail_options=["BODY=8BITMIME"]))))`,
    );
    expect(out).toEqual([]);
    const [got] = await peer.waitFor(1);
    expect(got!.mail_options).not.toContain("BODY=8BITMIME");
    expect([...got!.content].every((b) => b < 128)).toBe(true);
    expect(got!.content.toString("latin1")).toContain("Content-Transfer-Encoding: quoted-printable");
    expect(leaves(got!.content)).toEqual(leaves(message));
  }, 30_000);

  test("DKIM-signed 8-bit mail to a HELO-only server (smtp-sink -e) fails 5.6.3 with a DSN to the sender, rather than break the signature", async () => {
    using dir = tempDir();
    await using old = await startSink({ dir: dir.path, args: ["-e"] });
    await using senderSink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        `delivery: { routes: { example.net: "127.0.0.1:${old.port}", app.test: "127.0.0.1:${senderSink.port}" } }\n${DKIM()}`,
      ),
    });
    const message = Buffer.from("From: app@app.test\r\nSubject: s\r\n\r\nGrüße\r\n", "utf8");
    smtplib(
      mta.smtpPorts[0]!,
      `print(json.dumps(list(s.sendmail("app@app.test", ["u@example.net"], bytes.fromhex("${message.toString("hex")}"), mail_options=["BODY=8BITMIME"]))))`,
    );
    const [dsn] = await senderSink.waitFor(1, 15_000);
    expect(dsn).toContain("Status: 5.6.3");
    expect(dsn).toContain("Final-Recipient: rfc822; u@example.net");
    expect(dsn!.replace(/\s+/g, " ")).toContain(
      "554 5.6.3 8-bit content, the server does not offer 8BITMIME, and converting it to 7-bit would break its DKIM signature (RFC 6152)",
    );
    expect(old.dumps()).toEqual([]);
    const bounce = await waitFor(() => deliveryLog(dir.path).find((e) => e.type === "bounce"));
    expect(bounce).toMatchObject({ recipient: "u@example.net", code: 554, enhanced: "5.6.3" });
  }, 30_000);

  test("BDAT BODY=BINARYMIME: to smtp-sink (no BINARYMIME) it fails 5.6.3 with a DSN; to another mta it goes by BDAT byte for byte", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using senderSink = await startSink({ dir: dir.path });
    using dir2 = tempDir();
    await using next = await startMta({
      dir: dir2.path,
      config: testConfig(dir2.path, "delivery: { routes: { '*': '127.0.0.1:9' } }"),
    });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        `delivery: { routes: { sink.test: "127.0.0.1:${sink.port}", mta.test: "127.0.0.1:${next.smtpPorts[0]}", app.test: "127.0.0.1:${senderSink.port}" } }`,
      ),
    });
    const payload = Buffer.concat([
      Buffer.from(
        "From: a@app.test\r\nSubject: bin\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n",
      ),
      Buffer.from([0, 13, 46, 13, 10, 46, 10, 255, 0, 10, 46, 13, 10]),
      Buffer.alloc(3000, 0x41),
    ]);
    const c = await Client.connect(mta.smtpPorts[0]!);
    await c.reply();
    expect((await c.cmd("EHLO client.test")).lines).toContain("250 BINARYMIME");
    expect((await c.cmd("MAIL FROM:<a@app.test> BODY=BINARYMIME")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<x@sink.test>")).code).toBe(250);
    expect((await c.cmd("RCPT TO:<y@mta.test>")).code).toBe(250);
    c.send(`BDAT ${payload.length} LAST\r\n`);
    c.send(payload);
    expect((await c.reply()).code).toBe(250);
    await c.cmd("QUIT");
    const [dsn] = await senderSink.waitFor(1, 15_000);
    expect(dsn).toContain("Status: 5.6.3");
    expect(dsn).toContain("Final-Recipient: rfc822; x@sink.test");
    // The binary original cannot travel inside a DSN: only its header is returned.
    expect(dsn).toContain("Content-Type: text/rfc822-headers");
    expect(sink.dumps()).toEqual([]);
    const received = await waitFor(() => deliveryLog(dir2.path).find((e) => e.type === "reception"));
    expect(received).toMatchObject({ body: "BINARYMIME", recipients: ["y@mta.test"] });
    const shown = runMta(["queue", "show", String(received.id), "--body", "--json", "-c", next.configFile]);
    expect(shown.code).toBe(0);
    const body = Buffer.from((JSON.parse(shown.stdout) as { body: string }).body, "latin1");
    expect(body.subarray(body.length - payload.length).equals(payload)).toBe(true);
  }, 40_000);

  test("bare CR/LF: BDAT without BINARYMIME refuses them as DATA does (521); with reject_bare_newlines off a bare CR before a dot cannot end the data at the next hop", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    {
      await using strict = await startMta({ dir: dir.path, config: testConfig(dir.path) });
      const c = await Client.connect(strict.smtpPorts[0]!);
      await c.reply();
      await c.cmd("EHLO client.test");
      await c.cmd("MAIL FROM:<a@app.test>");
      await c.cmd("RCPT TO:<b@example.net>");
      const chunk = "Subject: x\r\n\r\nline\n.\r\n";
      c.send(`BDAT ${chunk.length} LAST\r\n${chunk}`);
      expect((await c.reply()).text).toBe("521 5.5.2 mta.test Error: bare <LF> received");
      await c.closed();
    }
    using dir2 = tempDir();
    await using lax = await startMta({
      dir: dir2.path,
      config: testConfig(
        dir2.path,
        `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" } }`,
      ).replace(
        "listen: [{ address: 127.0.0.1:0 }]",
        "listen: [{ address: 127.0.0.1:0, reject_bare_newlines: false }]",
      ),
    });
    const c = await Client.connect(lax.smtpPorts[0]!);
    await c.reply();
    await c.cmd("EHLO client.test");
    await c.cmd("MAIL FROM:<a@app.test>");
    await c.cmd("RCPT TO:<b@example.net>");
    expect((await c.cmd("DATA")).code).toBe(354);
    c.send("Subject: smuggle\r\n\r\nbefore\r.\rMAIL FROM:<evil@x.test>\r.\nafter\r\n.\r\n");
    expect((await c.reply()).code).toBe(250);
    // NUL is not 7bit/8bit data (RFC 2045): refused, in DATA as in BDAT.
    await c.cmd("MAIL FROM:<a@app.test>");
    await c.cmd("RCPT TO:<b@example.net>");
    await c.cmd("DATA");
    c.send("Subject: nul\r\n\r\na\x00b\r\n.\r\n");
    expect((await c.reply()).text).toMatch(/^554 5\.6\.0 Error: message not accepted: NUL octets/);
    await c.cmd("QUIT");
    const [dump] = await sink.waitFor(1);
    // smtp-sink saw one message whose bare CRs became line ends and whose lone dots were stuffed.
    expect(dump).toContain("\nbefore\n.\nMAIL FROM:<evil@x.test>\n.\nafter\n");
    await Bun.sleep(300);
    expect(sink.dumps()).toHaveLength(1);
  }, 30_000);
});

describe("SMTPUTF8 and smarthost sessions", () => {
  test("用户.jürgen@example.net reaches aiosmtpd intact, and the DSN for a refused recipient reaches the UTF-8 sender", async () => {
    using dir = tempDir();
    await using peer = await startAiosmtpd({ dir: dir.path, smtputf8: true, rejectRcptPrefix: "nobody" });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { "*": "127.0.0.1:${peer.port}" } }`),
    });
    const out = smtplib(
      mta.smtpPorts[0]!,
      `s.ehlo("client.test")
msg = "From: jürgen@app.test\\r\\nSubject: utf8\\r\\n\\r\\nhallo\\r\\n".encode()
print(json.dumps(list(s.sendmail("jürgen@app.test", ["用户.jürgen@example.net", "nobody.用户@example.org"], msg, mail_options=["SMTPUTF8"]))))`,
    );
    expect(out).toEqual([]);
    const got = await peer.waitFor(2, 20_000);
    const delivered = got.find((m) => m.rcpt_tos.includes("用户.jürgen@example.net"));
    expect(delivered).toMatchObject({ mail_from: "jürgen@app.test" });
    expect(delivered!.mail_options).toContain("SMTPUTF8");
    // aiosmtpd writes the null sender as "<>".
    const dsn = got.find((m) => m.mail_from === "<>");
    expect(dsn!.rcpt_tos).toEqual(["jürgen@app.test"]);
    expect(dsn!.mail_options).toContain("SMTPUTF8");
    const text = dsn!.content.toString("utf8");
    expect(text).toContain("To: <jürgen@app.test>");
    expect(text).toContain("Content-Type: message/global-delivery-status");
    expect(text).toContain("Final-Recipient: utf-8; nobody.用户@example.org");
    expect(text).toContain("<nobody.用户@example.org>: 550 5.1.1 No such user here");
  }, 30_000);

  test("a route with the same smarthost user but a wrong password does not reuse the session another route authenticated", async () => {
    using dir = tempDir();
    await using peer = await startAiosmtpd({ dir: dir.path, auth: { username: "relay", password: "right" } });
    const host = `127.0.0.1:${peer.port}`;
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        `delivery: { retry: [1h], routes: { good.test: { hosts: ["${host}"], auth: { username: relay, password: right } }, bad.test: { hosts: ["${host}"], auth: { username: relay, password: wrong } } } }`,
      ),
    });
    smtplib(
      mta.smtpPorts[0]!,
      `print(json.dumps(list(s.sendmail("a@app.test", ["u@good.test"], b"Subject: 1\\r\\n\\r\\nx\\r\\n"))))`,
    );
    await peer.waitFor(1);
    await waitFor(() => deliveryLog(dir.path).find((e) => e.type === "delivery"));
    smtplib(
      mta.smtpPorts[0]!,
      `print(json.dumps(list(s.sendmail("a@app.test", ["u@bad.test"], b"Subject: 2\\r\\n\\r\\nx\\r\\n"))))`,
    );
    const failed = await waitFor(() => deliveryLog(dir.path).find((e) => e.type === "transient-failure"));
    expect(failed).toMatchObject({ recipient: "u@bad.test", code: 535 });
    expect(peer.authFailures()).toEqual(["relay"]);
    expect(peer.messages()).toHaveLength(1);
  }, 30_000);
});
