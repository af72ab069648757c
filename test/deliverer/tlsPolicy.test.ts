/**
 * The deliverer under per-host TLS policies (what tlspolicy/ hands it for DANE and MTA-STS), against
 * the scripted peer: STARTTLS required, a verdict on the peer's chain, report-only verdicts, and
 * remembered broken TLS.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import {
  type AttemptTarget,
  Deliverer,
  type HostTlsPolicy,
  type OutboundMessage,
  type PeerTls,
} from "../../src/deliverer/index.ts";
import { Metrics, silentLogger } from "../../src/observe/index.ts";
import {
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
  tmp = fs.mkdtempSync(`${os.tmpdir()}/mta-deliverer-tls-`);
  cert = selfSignedCert(tmp);
});
afterAll(async () => {
  for (const d of deliverers) await d.close();
  for (const p of peers) await p.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function peer(script: PeerScript = {}) {
  const p = await startScriptedPeer(script);
  peers.push(p);
  return p;
}
function deliverer(extra: { rememberBrokenTlsMs?: number; metrics?: Metrics } = {}) {
  const d = new Deliverer({
    timeouts: FAST,
    maxMessagesPerConnection: 100,
    idleTimeoutMs: 5000,
    log: silentLogger(),
    ...extra,
  });
  deliverers.push(d);
  return d;
}
function target(p: ScriptedPeer, tls: HostTlsPolicy): AttemptTarget {
  return {
    hosts: [{ name: "mx.policy.test", ip: "127.0.0.1", port: p.port, tls }],
    ehloName: "client.test",
    tls: "opportunistic",
    tlsVerify: false,
  };
}
const message = (): OutboundMessage => ({
  id: "01TESTMESSAGE0",
  sender: "s@client.test",
  recipients: [{ index: 0, address: "r@policy.test" }],
  body: new TextEncoder().encode("Subject: t\r\n\r\nbody\r\n"),
  needsSmtputf8: false,
  eightBit: false,
});
const policy = (over: Partial<HostTlsPolicy>): HostTlsPolicy => ({
  name: "sts-enforce",
  starttls: "require",
  onVerifyFailure: "defer",
  key: `k${Math.random()}`,
  ...over,
});

test("TLS required and the server hides STARTTLS: 4.7.4, and no MAIL is ever sent in plain text", async () => {
  const p = await peer(); // offers no STARTTLS
  const r = await deliverer().deliver(target(p, policy({})), message());
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { code: 421, enhanced: "4.7.4" } });
  expect(r.connectionFailed).toBe(false);
  expect(p.sessions[0]!.commands.some((c) => /^MAIL/i.test(c))).toBe(false);
  expect(r.tlsSessions).toEqual([
    {
      host: "mx.policy.test",
      ip: "127.0.0.1",
      policy: "sts-enforce",
      result: "starttls-not-supported",
      detail: "the server does not offer STARTTLS",
    },
  ]);
  expect(r.tls).toMatchObject({
    policy: "sts-enforce",
    verified: false,
    failures: [{ result: "starttls-not-supported" }],
  });
});

test("a failed verdict on the peer's chain defers with 4.7.5: the connection carries nothing more", async () => {
  const p = await peer({ tls: cert });
  let seen: PeerTls | undefined;
  const tls = policy({
    verify: (peerTls) => {
      seen = peerTls;
      return { ok: false, resultType: "tlsa-invalid", detail: "no TLSA record matches" };
    },
  });
  const r = await deliverer().deliver(target(p, tls), message());
  expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { enhanced: "4.7.5" } });
  // The verdict saw the certificate the server presented (DER), and the TLS stack's opinion of it.
  expect(seen!.chain.length).toBeGreaterThanOrEqual(1);
  expect(seen!.authorizationError?.code).toMatch(/SELF_SIGNED|UNABLE/);
  const cmds = p.sessions[0]!.commands;
  expect(cmds[cmds.length - 1]).toBe("STARTTLS");
  expect(r.tlsSessions?.[0]).toMatchObject({ result: "tlsa-invalid" });
});

test("a passed verdict: delivered over TLS and reported verified", async () => {
  const p = await peer({ tls: cert });
  const r = await deliverer().deliver(
    target(p, policy({ name: "dane", verify: () => ({ ok: true }) })),
    message(),
  );
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(r.tls).toMatchObject({ policy: "dane", verified: true, version: expect.stringMatching(/^TLSv1/) });
  expect(p.sessions[0]!.tls).toBe(true);
  expect(r.tlsSessions?.[0]).toMatchObject({ result: "success" });
});

test("report-only (MTA-STS testing): a failed verdict is noted and the mail goes over TLS anyway", async () => {
  const p = await peer({ tls: cert });
  const tls = policy({
    name: "sts-testing",
    starttls: "try",
    onVerifyFailure: "report",
    verify: () => ({ ok: false, resultType: "certificate-not-trusted", detail: "self-signed" }),
  });
  const r = await deliverer().deliver(target(p, tls), message());
  expect(r.recipients[0]!.kind).toBe("delivered");
  expect(r.tls).toMatchObject({
    policy: "sts-testing",
    verified: false,
    failures: [{ result: "certificate-not-trusted" }],
  });
  expect(p.sessions[0]!.messages).toHaveLength(1);
  // Without STARTTLS at all, testing delivers in plain text and reports that too.
  const q = await peer();
  const r2 = await deliverer().deliver(target(q, { ...tls, key: "other" }), message());
  expect(r2.recipients[0]!.kind).toBe("delivered");
  expect(r2.tls).toMatchObject({ policy: "sts-testing", failures: [{ result: "starttls-not-supported" }] });
  expect(r2.tls?.version).toBeUndefined();
});

test("remembered broken TLS: after a failed opportunistic handshake the host gets plain text, never when TLS is required", async () => {
  const metrics = new Metrics();
  const d = deliverer({ rememberBrokenTlsMs: 60_000, metrics });
  const p = await peer({ tls: "fail" });
  const opp = policy({ name: "opportunistic", starttls: "try", onVerifyFailure: "report" });
  const r1 = await d.deliver(target(p, opp), message());
  expect(r1.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions.length).toBe(2); // the failed handshake, then plain text
  const r2 = await d.deliver(target(p, { ...opp, key: "fresh" }), message());
  expect(r2.recipients[0]!.kind).toBe("delivered");
  expect(p.sessions.length).toBe(3);
  expect(p.sessions[2]!.commands).not.toContain("STARTTLS");
  expect(r2.tlsSessions?.[0]).toMatchObject({ result: "plain", detail: "TLS remembered as broken" });
  expect(metrics.render()).toMatch(/mta_deliverer_tls_remembered_broken_total 1/);
  // Required TLS ignores the memory: it tries STARTTLS, fails, and defers.
  const r3 = await d.deliver(target(p, policy({ key: "req" })), message());
  expect(r3.recipients[0]).toMatchObject({ kind: "transient", reply: { enhanced: "4.7.5" } });
  expect(p.sessions[3]!.commands).toContain("STARTTLS");
  expect(p.sessions[3]!.messages).toHaveLength(0);
});

test("a pooled connection is reused only under the same policy key", async () => {
  const p = await peer({ tls: cert });
  const d = deliverer();
  const a = policy({ name: "dane", verify: () => ({ ok: true }), key: "dane/1" });
  await d.deliver(target(p, a), message());
  await d.deliver(target(p, a), message());
  expect(p.sessions.length).toBe(1);
  await d.deliver(target(p, { ...a, key: "dane/2" }), message());
  expect(p.sessions.length).toBe(2);
});
