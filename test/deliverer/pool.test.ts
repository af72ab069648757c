import { afterAll, expect, test } from "bun:test";
import {
  type AttemptTarget,
  Deliverer,
  type OutboundMessage,
  RFC5321_TIMEOUTS,
} from "../../src/deliverer/index.ts";
import { Metrics, silentLogger } from "../../src/observe/index.ts";
import { type PeerScript, type ScriptedPeer, startScriptedPeer } from "../support/scriptedPeer.ts";

const FAST = {
  ...RFC5321_TIMEOUTS,
  connectMs: 1000,
  greetingMs: 1000,
  rsetMs: 300,
  quitMs: 300,
  dataDoneMs: 1000,
};
const peers: ScriptedPeer[] = [];
afterAll(async () => {
  for (const p of peers) await p.close();
});

async function peer(script: PeerScript = {}): Promise<ScriptedPeer> {
  const p = await startScriptedPeer(script);
  peers.push(p);
  return p;
}

function target(p: ScriptedPeer): AttemptTarget {
  return {
    hosts: [{ name: "mx.test", ip: "127.0.0.1", port: p.port }],
    ehloName: "client.test",
    tls: "off",
    tlsVerify: false,
  };
}

function message(n: number): OutboundMessage {
  return {
    id: `MSG${n}`,
    sender: "s@client.test",
    recipients: [{ index: 0, address: `r${n}@x.test` }],
    body: new TextEncoder().encode(`Subject: ${n}\r\n\r\nbody ${n}\r\n`),
    needsSmtputf8: false,
    eightBit: false,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await sleep(10);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

test("the next message to the same destination reuses the idle connection, without RSET after a complete transaction", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  for (let i = 0; i < 3; i++)
    expect((await d.deliver(target(p), message(i))).recipients[0]!.kind).toBe("delivered");
  expect(p.sessions.length).toBe(1);
  expect(p.sessions[0]!.messages.map((m) => m.rcpts[0]!.to)).toEqual(["r0@x.test", "r1@x.test", "r2@x.test"]);
  // The reply to the end of data resets the server's state (RFC 5321 §4.1.1.4): no RSET round trip.
  expect(p.sessions[0]!.commands.filter((c) => c === "RSET").length).toBe(0);
  expect(d.idleConnections()).toBe(1);
  expect(d.activeConnections()).toBe(0);
  await d.close();
  expect(d.idleConnections()).toBe(0);
  expect(p.sessions[0]!.commands.at(-1)).toBe("QUIT");
});

test("a connection carries at most maxMessagesPerConnection messages, then QUITs", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 2,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  for (let i = 0; i < 5; i++) await d.deliver(target(p), message(i));
  expect(p.sessions.map((s) => s.messages.length)).toEqual([2, 2, 1]);
  expect(p.sessions[0]!.commands.at(-1)).toBe("QUIT");
  await d.close();
});

test("an idle connection is closed with QUIT after the idle timeout", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 50,
    log: silentLogger(),
  });
  await d.deliver(target(p), message(0));
  expect(d.idleConnections()).toBe(1);
  await waitFor(() => d.idleConnections() === 0, "idle timeout");
  await waitFor(() => p.sessions[0]!.closed, "peer to see the close");
  expect(p.sessions[0]!.commands.at(-1)).toBe("QUIT");
  await d.close();
});

test("an idle connection the server closes leaves the pool at once", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  await d.deliver(target(p), message(0));
  expect(d.idleConnections()).toBe(1);
  await p.close(); // destroys the server side of every session
  await waitFor(() => d.idleConnections() === 0, "pool to notice the close");
  await d.close();
});

test("after an unfinished transaction a reused connection gets RSET; if it turns out dead, a fresh one", async () => {
  // Session 0 refuses the only recipient (the transaction never reaches the end of data, so the next
  // message on that connection needs RSET), then drops the connection at RSET: the message must still arrive.
  const p = await peer({
    rset: (s) => (s.id === 0 ? "drop" : "250 ok"),
    rcpt: (to) => (to === "r0@x.test" ? "550 5.1.1 no such user" : "250 ok"),
  });
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  await d.deliver(target(p), message(0));
  const r = await d.deliver(target(p), message(1));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions.length).toBe(2);
  expect(p.sessions[1]!.messages[0]!.rcpts[0]!.to).toBe("r1@x.test");
  await d.close();
});

test("a reused connection that dies before MAIL is answered is retried on a fresh one", async () => {
  const p = await peer({ mail: (_f, _p, s) => (s.id === 0 && s.messages.length === 1 ? "drop" : "250 ok") });
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  await d.deliver(target(p), message(0));
  const r = await d.deliver(target(p), message(1));
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions.map((s) => s.messages.length)).toEqual([1, 1]);
  await d.close();
});

test("concurrent deliveries to one destination open parallel connections, then share the idle ones", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 5000,
    maxIdlePerKey: 3,
    log: silentLogger(),
  });
  const first = await Promise.all(Array.from({ length: 5 }, (_, i) => d.deliver(target(p), message(i))));
  expect(first.every((r) => r.recipients[0]!.kind === "delivered")).toBe(true);
  expect(p.sessions.length).toBe(5);
  expect(d.idleConnections()).toBe(3);
  await Promise.all(Array.from({ length: 3 }, (_, i) => d.deliver(target(p), message(10 + i))));
  expect(p.sessions.length).toBe(5);
  await d.close();
});

test("metrics count connections, reuse and recipient results", async () => {
  const metrics = new Metrics();
  const p = await peer({ rcpt: (to) => (to === "r1@x.test" ? "550 5.1.1 no" : "250 ok") });
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    log: silentLogger(),
    metrics,
  });
  for (let i = 0; i < 3; i++) await d.deliver(target(p), message(i));
  const text = metrics.render();
  expect(text).toContain('mta_deliverer_connections_total{outcome="open"} 1');
  expect(text).toContain("mta_deliverer_connections_reused_total 2");
  expect(text).toContain('mta_deliverer_recipients_total{kind="delivered"} 2');
  expect(text).toContain('mta_deliverer_recipients_total{kind="permanent"} 1');
  expect(text).toContain("mta_deliverer_connections_idle 1");
  await d.close();
});

test("an address the process may not reach is never connected to: a site failure, no session at the peer", async () => {
  const p = await peer();
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 10,
    idleTimeoutMs: 5000,
    allowAddress: (ip) => ip !== "127.0.0.1",
    log: silentLogger(),
  });
  const r = await d.deliver(target(p), message(0));
  expect(r.connectionFailed).toBe(true);
  expect(r.recipients[0]!.kind).toBe("transient");
  expect(r.recipients[0]!.reply.lines.join(" ")).toContain("not allowed");
  expect(p.sessions).toHaveLength(0);
  await d.close();
});

test("a connection nothing more is coming for gets QUIT right behind the message; one with more mail is kept", async () => {
  const p = await peer({ ehlo: ["PIPELINING"] });
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  let more = true;
  const t = { ...target(p), keepConnection: () => more };
  expect((await d.deliver(t, message(1))).recipients[0]!.kind).toBe("delivered");
  expect(d.idleConnections()).toBe(1);
  more = false;
  expect((await d.deliver(t, message(2))).recipients[0]!.kind).toBe("delivered");
  // Reused for message 2, then QUIT in the same write as its data: no idle connection is left.
  expect(d.idleConnections()).toBe(0);
  expect(p.sessions).toHaveLength(1);
  await waitFor(() => p.sessions[0]!.closed, "the session to close");
  const cmds = p.sessions[0]!.commands;
  expect(cmds.at(-1)).toBe("QUIT");
  expect(p.sessions[0]!.messages).toHaveLength(2);
  await d.close();
});

test("a server that leaves the data unanswered but answers the QUIT behind it has not accepted the message", async () => {
  // 220, EHLO with PIPELINING, MAIL/RCPT/DATA, then silence after the dot; QUIT gets 221.
  const server = Bun.listen<{ buf: string; inData: boolean }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "", inData: false };
        s.write("220 silent.test ESMTP\r\n");
      },
      data(s, chunk) {
        s.data.buf += chunk.toString();
        for (;;) {
          if (s.data.inData) {
            const end = s.data.buf.indexOf("\r\n.\r\n");
            if (end < 0) return;
            s.data.buf = s.data.buf.slice(end + 5);
            s.data.inData = false; // and no reply
            continue;
          }
          const nl = s.data.buf.indexOf("\r\n");
          if (nl < 0) return;
          const line = s.data.buf.slice(0, nl).toUpperCase();
          s.data.buf = s.data.buf.slice(nl + 2);
          if (line.startsWith("EHLO")) s.write("250-silent.test\r\n250 PIPELINING\r\n");
          else if (line.startsWith("DATA")) {
            s.write("354 go on\r\n");
            s.data.inData = true;
          } else if (line.startsWith("QUIT")) s.write("221 2.0.0 bye\r\n");
          else s.write("250 2.0.0 ok\r\n");
        }
      },
    },
  });
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 5000,
    log: silentLogger(),
  });
  const t: AttemptTarget = {
    hosts: [{ name: "silent.test", ip: "127.0.0.1", port: server.port }],
    ehloName: "client.test",
    tls: "off",
    tlsVerify: false,
    keepConnection: () => false,
  };
  const r = await d.deliver(t, message(9));
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { code: 451, enhanced: "4.4.2" } });
  await d.close();
  server.stop(true);
});
