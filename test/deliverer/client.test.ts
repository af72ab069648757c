import { afterAll, beforeAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import {
  type AttemptTarget,
  Deliverer,
  type DelivererOptions,
  type OutboundMessage,
} from "../../src/deliverer/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import {
  closedPort,
  type PeerScript,
  type ScriptedPeer,
  selfSignedCert,
  startScriptedPeer,
} from "../support/scriptedPeer.ts";
import { FAST } from "./_timeouts.ts";

let tmp: string;
let cert: { cert: string; key: string };
const peers: ScriptedPeer[] = [];
const deliverers: Deliverer[] = [];

beforeAll(() => {
  tmp = fs.mkdtempSync(`${os.tmpdir()}/mta-deliverer-`);
  cert = selfSignedCert(tmp);
});
afterAll(async () => {
  for (const d of deliverers) await d.close();
  for (const p of peers) await p.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function peer(script: PeerScript = {}): Promise<ScriptedPeer> {
  const p = await startScriptedPeer(script);
  peers.push(p);
  return p;
}

function deliverer(opts: Partial<DelivererOptions> = {}): Deliverer {
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 5000,
    log: silentLogger(),
    ...opts,
  });
  deliverers.push(d);
  return d;
}

function target(...ps: (ScriptedPeer | number)[]): AttemptTarget {
  return {
    hosts: ps.map((p, i) => ({
      name: `mx${i}.test`,
      ip: "127.0.0.1",
      port: typeof p === "number" ? p : p.port,
    })),
    ehloName: "client.test",
    tls: "off",
    tlsVerify: false,
  };
}

const BODY = "Subject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n";

function message(rcpts: string[], extra: Partial<OutboundMessage> = {}): OutboundMessage {
  return {
    id: "01TESTMESSAGE0",
    sender: "sender@client.test",
    recipients: rcpts.map((address, index) => ({ index, address })),
    body: new TextEncoder().encode(BODY),
    needsSmtputf8: false,
    eightBit: false,
    ...extra,
  };
}

test("a message to several recipients is delivered in one pipelined transaction, dot-stuffed on the wire", async () => {
  const p = await peer();
  const r = await deliverer().deliver(target(p), message(["a@x.test", "b@x.test"]));
  expect(r.connectionFailed).toBe(false);
  expect(r.recipients.map((x) => [x.index, x.kind, x.reply.code])).toEqual([
    [0, "delivered", 250],
    [1, "delivered", 250],
  ]);
  expect(r.mx).toEqual({ name: "mx0.test", ip: "127.0.0.1", port: p.port });
  const s = p.sessions[0]!;
  expect(s.commands.slice(0, 4)).toEqual([
    "EHLO client.test",
    `MAIL FROM:<sender@client.test> SIZE=${BODY.length}`,
    "RCPT TO:<a@x.test>",
    "RCPT TO:<b@x.test>",
  ]);
  const m = s.messages[0]!;
  expect(m.body.toString()).toBe(BODY);
  expect(m.raw.toString()).toContain("\r\n..leading dot\r\n...two dots\r\n..\r\nend");
});

test("replies are per recipient: 4xx is transient, 5xx permanent, and the rest is still delivered", async () => {
  const p = await peer({
    rcpt: (to) =>
      to.startsWith("busy")
        ? "450 4.2.1 mailbox busy"
        : to.startsWith("gone")
          ? "550 5.1.1 no such user"
          : "250 ok",
  });
  const r = await deliverer().deliver(target(p), message(["busy@x.test", "ok@x.test", "gone@x.test"]));
  expect(r.recipients.map((x) => [x.kind, x.reply.code, x.reply.enhanced])).toEqual([
    ["transient", 450, "4.2.1"],
    ["delivered", 250, "2.0.0"],
    ["permanent", 550, "5.1.1"],
  ]);
  expect(p.sessions[0]!.messages[0]!.rcpts.map((x) => x.to)).toEqual(["ok@x.test"]);
});

test("a server without EHLO gets HELO and unpipelined commands", async () => {
  const p = await peer({ ehlo: "reject" });
  const r = await deliverer().deliver(target(p), message(["a@x.test"], { sender: "" }));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions[0]!.commands.slice(0, 5)).toEqual([
    "EHLO client.test",
    "HELO client.test",
    "MAIL FROM:<>",
    "RCPT TO:<a@x.test>",
    "DATA",
  ]);
});

test("all recipients refused: no message data is sent", async () => {
  const p = await peer({ ehlo: [], rcpt: () => "550 5.1.1 unknown" });
  const r = await deliverer().deliver(target(p), message(["a@x.test", "b@x.test"]));
  expect(r.recipients.every((x) => x.kind === "permanent")).toBe(true);
  expect(p.sessions[0]!.commands).not.toContain("DATA");
});

test("MAIL refused fails every recipient with its reply", async () => {
  const p = await peer({ mail: () => "553 5.7.1 sender rejected" });
  const r = await deliverer().deliver(target(p), message(["a@x.test", "b@x.test"]));
  expect(r.recipients.map((x) => [x.kind, x.reply.code])).toEqual([
    ["permanent", 553],
    ["permanent", 553],
  ]);
});

test("a refused connection and a 421 greeting move on to the next host", async () => {
  const port = await closedPort();
  const busy = await peer({ greeting: "421 4.3.2 too busy" });
  const good = await peer();
  const r = await deliverer().deliver(target(port, busy, good), message(["a@x.test"]));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(r.mx?.port).toBe(good.port);
  expect(busy.sessions.length).toBe(1);
});

test("when no host can be reached the attempt is a site failure, transient for all", async () => {
  const port = await closedPort();
  const busy = await peer({ greeting: "421 4.3.2 too busy" });
  const r = await deliverer().deliver(target(port, busy), message(["a@x.test", "b@x.test"]));
  expect(r.connectionFailed).toBe(true);
  expect(r.recipients.map((x) => [x.kind, x.reply.code])).toEqual([
    ["transient", 421],
    ["transient", 421],
  ]);
});

test("a stalled greeting times out as a site failure", async () => {
  const p = await peer({ greeting: "stall" });
  const r = await deliverer().deliver(target(p), message(["a@x.test"]));
  expect(r.connectionFailed).toBe(true);
  expect(r.recipients[0]!.kind).toBe("transient");
  expect(r.recipients[0]!.reply.lines.join()).toContain("greeting");
});

test("a connection dropped mid-DATA leaves the accepted recipients transient and keeps refusals", async () => {
  const p = await peer({
    dropAfterDataBytes: 10,
    rcpt: (to) => (to.startsWith("gone") ? "550 5.1.1 no" : "250 ok"),
  });
  const r = await deliverer().deliver(target(p), message(["a@x.test", "gone@x.test"]));
  expect(r.connectionFailed).toBe(false);
  expect(r.recipients.map((x) => [x.kind, x.reply.code])).toEqual([
    ["transient", 451],
    ["permanent", 550],
  ]);
  expect(r.recipients[0]!.reply.enhanced).toBe("4.4.2");
});

test("a server that never answers the final dot times out: transient", async () => {
  const p = await peer({ dataDone: () => "stall" });
  const d = deliverer();
  const r = await d.deliver(target(p), message(["a@x.test"]));
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { code: 451, enhanced: "4.4.2" } });
  expect(d.idleConnections()).toBe(0);
});

test("the final reply decides for all accepted recipients", async () => {
  const p = await peer({ dataDone: () => "554 5.6.0 content rejected" });
  const r = await deliverer().deliver(target(p), message(["a@x.test", "b@x.test"]));
  expect(r.recipients.map((x) => x.kind)).toEqual(["permanent", "permanent"]);
});

test("a message over the server's SIZE bounces with 5.3.4 before MAIL", async () => {
  const p = await peer({ ehlo: ["PIPELINING", "SIZE 20"] });
  const r = await deliverer().deliver(target(p), message(["a@x.test"]));
  expect(r.recipients[0]).toMatchObject({ kind: "permanent", reply: { enhanced: "5.3.4" } });
  expect(p.sessions[0]!.commands.some((c) => c.startsWith("MAIL"))).toBe(false);
});

test("SMTPUTF8: needed and not offered bounces with 5.6.7; offered, it is requested", async () => {
  const without = await peer();
  const r1 = await deliverer().deliver(target(without), message(["ü@x.test"], { needsSmtputf8: true }));
  expect(r1.recipients[0]).toMatchObject({ kind: "permanent", reply: { enhanced: "5.6.7" } });
  const withIt = await peer({ ehlo: ["PIPELINING", "SMTPUTF8", "8BITMIME"] });
  const r2 = await deliverer().deliver(
    target(withIt),
    message(["a@x.test"], { needsSmtputf8: true, eightBit: true }),
  );
  expect(r2.recipients[0]!.kind).toBe("delivered");
  expect(withIt.sessions[0]!.commands[1]).toBe("MAIL FROM:<sender@client.test> BODY=8BITMIME SMTPUTF8");
});

test("DSN parameters are passed on only when the server offers DSN", async () => {
  const msg = message(["a@x.test"], { envId: "ENV+2B1", ret: "HDRS" });
  msg.recipients[0]!.notify = ["SUCCESS", "FAILURE"];
  msg.recipients[0]!.orcpt = "rfc822;a@x.test";
  const dsn = await peer({ ehlo: ["DSN"] });
  await deliverer().deliver(target(dsn), msg);
  expect(dsn.sessions[0]!.commands.slice(1, 3)).toEqual([
    "MAIL FROM:<sender@client.test> RET=HDRS ENVID=ENV+2B1",
    "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x.test",
  ]);
  const plain = await peer({ ehlo: [] });
  await deliverer().deliver(target(plain), msg);
  expect(plain.sessions[0]!.commands.slice(1, 3)).toEqual([
    "MAIL FROM:<sender@client.test>",
    "RCPT TO:<a@x.test>",
  ]);
});

test("opportunistic STARTTLS encrypts when offered and reports the cipher", async () => {
  const p = await peer({ tls: cert });
  const r = await deliverer().deliver({ ...target(p), tls: "opportunistic" }, message(["a@x.test"]));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions[0]!.tls).toBe(true);
  expect(r.tls?.version).toMatch(/TLS/);
  expect(r.tls?.cipher?.length).toBeGreaterThan(0);
  expect(r.tls).toMatchObject({ policy: "opportunistic", verified: false });
  expect(p.sessions[0]!.commands.filter((c) => c.startsWith("EHLO")).length).toBe(2);
  expect(p.sessions[0]!.messages[0]!.body.toString()).toBe(BODY);
});

test("a failed TLS handshake: opportunistic retries the host in plain text, required defers with 4.7.x", async () => {
  const p = await peer({ tls: "fail" });
  const r = await deliverer().deliver({ ...target(p), tls: "opportunistic" }, message(["a@x.test"]));
  expect(r.recipients[0]!.kind).toBe("delivered");
  // Delivered in plain text (no version), with the failed handshake on the way reported.
  expect(r.tls).toEqual({
    policy: "opportunistic",
    verified: false,
    failures: [{ result: "validation-failure", mx: "mx0.test", ip: "127.0.0.1" }],
  });
  expect(p.sessions.length).toBe(2);
  const q = await peer({ tls: "fail" });
  const r2 = await deliverer().deliver({ ...target(q), tls: "required" }, message(["a@x.test"]));
  expect(r2.connectionFailed).toBe(false);
  expect(r2.recipients[0]!.kind).toBe("transient");
  expect(r2.recipients[0]!.reply.enhanced).toMatch(/^4\.7\./);
});

test("TLS required but not offered defers with 4.7.4; verification rejects a self-signed certificate", async () => {
  const p = await peer();
  const r = await deliverer().deliver({ ...target(p), tls: "required" }, message(["a@x.test"]));
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { enhanced: "4.7.4" } });
  expect(p.sessions[0]!.messages.length).toBe(0);
  const q = await peer({ tls: cert });
  const r2 = await deliverer().deliver(
    { ...target(q), tls: "required", tlsVerify: true },
    message(["a@x.test"]),
  );
  expect(r2.recipients[0]!.kind).toBe("transient");
  expect(r2.recipients[0]!.reply.enhanced).toBe("4.7.5");
  expect(q.sessions.every((s) => s.messages.length === 0)).toBe(true);
});

test("AUTH PLAIN and AUTH LOGIN log in to a loopback smarthost; a refused login defers", async () => {
  const auth = { username: "user", password: "secret" };
  const plainPeer = await peer({ ehlo: ["AUTH LOGIN PLAIN"], auth });
  const r1 = await deliverer().deliver({ ...target(plainPeer), auth }, message(["a@x.test"]));
  expect(r1.recipients[0]!.kind).toBe("delivered");
  expect(plainPeer.sessions[0]!.authenticated).toBe("user");
  expect(plainPeer.sessions[0]!.commands[1]).toBe(
    `AUTH PLAIN ${Buffer.from("\0user\0secret").toString("base64")}`,
  );

  const loginPeer = await peer({ ehlo: ["AUTH LOGIN"], auth });
  const r2 = await deliverer().deliver({ ...target(loginPeer), auth }, message(["a@x.test"]));
  expect(r2.recipients[0]!.kind).toBe("delivered");
  expect(loginPeer.sessions[0]!.authenticated).toBe("user");

  const r3 = await deliverer().deliver(
    { ...target(plainPeer), auth: { username: "user", password: "wrong" } },
    message(["a@x.test"]),
  );
  expect(r3.recipients[0]).toMatchObject({ kind: "transient", reply: { code: 535 } });
  expect(r3.connectionFailed).toBe(false);
});

test("source address: the connection is bound to the configured local IP", async () => {
  const p = await peer();
  const r = await deliverer().deliver({ ...target(p), sourceAddress: "127.0.0.7" }, message(["a@x.test"]));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions[0]!.remoteAddress.replace(/^::ffff:/, "")).toBe("127.0.0.7");
});

test("a server that stops reading mid-DATA trips the data block timeout: transient", async () => {
  const p = await peer({ stopReadingInData: true, ehlo: ["PIPELINING"] });
  const big = new Uint8Array(32 * 1024 * 1024).fill(120);
  for (let i = 998; i < big.length; i += 1000) {
    big[i] = 13;
    big[i + 1] = 10;
  }
  const d = deliverer({ timeouts: { ...FAST, dataBlockMs: 200 } });
  const r = await d.deliver(target(p), message(["a@x.test"], { body: big }));
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { enhanced: "4.4.2" } });
  expect(r.recipients[0]!.reply.lines.join()).toContain("stalled");
  expect(d.idleConnections()).toBe(0);
});
