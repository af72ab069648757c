/**
 * DANE through the compiled binary with a real validating resolver: unbound serving zones signed with
 * ldns-signzone (trust anchors from their DS), aiosmtpd MX hosts, TLSA digests computed by openssl.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type HttpsServer, startHttpsServer, stsPolicyResponse } from "../support/httpsServer.ts";
import {
  runMta,
  type StartedMta,
  startMta,
  swaksTo,
  tempDir,
  testConfig,
  waitForLogLine,
} from "../support/mta.ts";
import { freePort } from "../support/sink.ts";
import { createTestCa, selfSignedFor, type TestCa, tlsaDigest } from "../support/testCa.ts";
import { type Aiosmtpd, startAiosmtpd } from "../support/aiosmtpd.ts";
import { breakSignature, startUnbound, type Unbound } from "../support/unbound.ts";

const dir = tempDir("mta-e2e-dane-");
let ca: TestCa;
let unbound: Unbound;
let web: HttpsServer;
const peers: Record<string, Aiosmtpd> = {};
let port = 0;
let mta: StartedMta;
let config = "";

beforeAll(async () => {
  ca = createTestCa(dir.path);
  port = freePort("127.0.0.61");
  // TLSA records sit at _<port>._tcp: the port mta connects to (delivery.port; 25 outside tests).
  // DANE-EE needs no CA: the MX certificates are self-signed, their keys published in TLSA records.
  const good = selfSignedFor(dir.path, "mx.good.dane.test");
  const wrong = selfSignedFor(dir.path, "mx.bad.dane.test");
  const published = selfSignedFor(dir.path, "mx.bad.dane.test"); // what bad.dane.test's TLSA names
  const bogus = selfSignedFor(dir.path, "mx.bogus.test");
  const plainMx = ca.issue("mx.plain.test");
  // Issued by the test root, which the servers do not send: DANE-TA with the root in the record.
  const aliased = ca.issue("mx.alias.dane.test");
  const digestOnly = ca.issue("mx.digest.dane.test");
  peers.good = await startAiosmtpd({
    host: "127.0.0.61",
    port,
    dir: dir.path,
    tls: good,
    deferRcptPrefix: "later",
  });
  peers.bad = await startAiosmtpd({ host: "127.0.0.62", port, dir: dir.path, tls: wrong });
  peers.bogus = await startAiosmtpd({ host: "127.0.0.63", port, dir: dir.path, tls: bogus });
  peers.plain = await startAiosmtpd({ host: "127.0.0.64", port, dir: dir.path, tls: plainMx });
  peers.alias = await startAiosmtpd({ host: "127.0.0.65", port, dir: dir.path, tls: aliased });
  peers.digest = await startAiosmtpd({ host: "127.0.0.66", port, dir: dir.path, tls: digestOnly });
  const policyHost = ca.issue("mta-sts.plain.test");
  web = await startHttpsServer({
    cert: policyHost.chainPem,
    key: policyHost.keyPem,
    handler: () => stsPolicyResponse({ mode: "enforce", mx: ["mx.plain.test"], maxAgeS: 86400 }),
  });
  const tlsa = (pem: string) => `IN TLSA 3 1 1 ${tlsaDigest(pem, 1, 1, dir.path)}`;
  unbound = await startUnbound(dir.path, [
    {
      name: "dane.test",
      signed: true,
      records: [
        "good IN MX 10 mx.good",
        "mx.good IN A 127.0.0.61",
        `_${port}._tcp.mx.good ${tlsa(good.certPem)}`,
        "bad IN MX 10 mx.bad",
        "mx.bad IN A 127.0.0.62",
        `_${port}._tcp.mx.bad ${tlsa(published.certPem)}`,
        // The MX host is an alias; TLSA at the expanded name; 2 1 0: the root's whole public key.
        "alias IN MX 10 mx.alias",
        "mx.alias IN CNAME real.alias",
        "real.alias IN A 127.0.0.65",
        `_${port}._tcp.real.alias IN TLSA 2 1 0 ${tlsaDigest(ca.certPem, 1, 0, dir.path)}`,
        // A digest of the root, which the server does not send: nothing to check it against.
        "digest IN MX 10 mx.digest",
        "mx.digest IN A 127.0.0.66",
        `_${port}._tcp.mx.digest IN TLSA 2 1 1 ${tlsaDigest(ca.certPem, 1, 1, dir.path)}`,
      ],
    },
    {
      name: "bogus.test",
      signed: true,
      records: ["@ IN MX 10 mx", "mx IN A 127.0.0.63", `_${port}._tcp.mx ${tlsa(bogus.certPem)}`],
      tamper: breakSignature("TLSA"),
    },
    {
      // Not signed: its TLSA record must be ignored and its MTA-STS policy applied instead.
      name: "plain.test",
      signed: false,
      records: [
        "@ IN MX 10 mx",
        "mx IN A 127.0.0.64",
        `_${port}._tcp.mx ${tlsa(bogus.certPem)}`,
        '_mta-sts IN TXT "v=STSv1; id=1;"',
        "mta-sts IN A 127.0.0.1",
      ],
    },
  ]);
  config = testConfig(
    dir.path,
    [
      `dns: { servers: ["127.0.0.1:${unbound.port}"], timeout: 2s, attempts: 1, dnssec: true }`,
      `delivery: { port: ${port}, retry: [1h] }`,
      `tls_policy: { ca_file: ${ca.certFile}, mta_sts: { port: ${web.port} }, tls_rpt: { enabled: false } }`,
    ].join("\n"),
  );
  mta = await startMta({ dir: dir.path, config });
}, 60_000);

afterAll(async () => {
  await mta?.stop();
  for (const p of Object.values(peers)) await p[Symbol.asyncDispose]();
  await web.stop();
  await unbound[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

describe("DANE through mta serve, unbound validating", () => {
  test("DANE-EE match: delivered over TLS, verified against the TLSA record (no CA involved)", async () => {
    swaksTo(mta.smtpPorts[0]!, "a@good.dane.test");
    expect(await waitForLogLine(dir.path, "a@good.dane.test", "delivery")).toMatchObject({
      mx: "mx.good.dane.test",
      tls: { policy: "dane", verified: true, version: expect.stringMatching(/^TLSv1\.[23]$/) },
    });
    expect(peers.good!.messages()).toEqual([expect.objectContaining({ tls: true })]);
  }, 30_000);

  test("a certificate that matches no TLSA record defers (4.7.5); nothing is sent", async () => {
    swaksTo(mta.smtpPorts[0]!, "b@bad.dane.test");
    expect(await waitForLogLine(dir.path, "b@bad.dane.test", "transient-failure")).toMatchObject({
      enhanced: "4.7.5",
      tls: { policy: "dane", failures: [{ result: "tlsa-invalid", mx: "mx.bad.dane.test" }] },
    });
    expect(peers.bad!.commands()).not.toContain("MAIL");
  }, 30_000);

  test("a bogus TLSA signature defers without connecting at all (dnssec-invalid)", async () => {
    swaksTo(mta.smtpPorts[0]!, "c@bogus.test");
    expect(await waitForLogLine(dir.path, "c@bogus.test", "transient-failure")).toMatchObject({
      enhanced: "4.7.5",
      tls: { failures: [{ result: "dnssec-invalid", mx: "mx.bogus.test" }] },
    });
    expect(peers.bogus!.commands()).toEqual([]);
  }, 30_000);

  test("a CNAME'd MX host, DANE-TA 2 1 0 at the expanded name, the anchor not sent: delivered, verified", async () => {
    swaksTo(mta.smtpPorts[0]!, "e@alias.dane.test");
    // The certificate names the MX host as the MX record has it; the TLSA base domain is the alias target.
    expect(await waitForLogLine(dir.path, "e@alias.dane.test", "delivery")).toMatchObject({
      mx: "mx.alias.dane.test",
      tls: { policy: "dane", verified: true },
    });
    expect(peers.alias!.messages()).toEqual([expect.objectContaining({ tls: true })]);
  }, 30_000);

  test("DANE-TA by digest with the anchor left out of the chain defers (tlsa-invalid); nothing is sent", async () => {
    swaksTo(mta.smtpPorts[0]!, "f@digest.dane.test");
    expect(await waitForLogLine(dir.path, "f@digest.dane.test", "transient-failure")).toMatchObject({
      enhanced: "4.7.5",
      tls: { policy: "dane", failures: [{ result: "tlsa-invalid", mx: "mx.digest.dane.test" }] },
    });
    expect(peers.digest!.commands()).not.toContain("MAIL");
  }, 30_000);

  test("an unsigned zone: its TLSA record is ignored and the domain's MTA-STS policy applies", async () => {
    swaksTo(mta.smtpPorts[0]!, "d@plain.test");
    expect(await waitForLogLine(dir.path, "d@plain.test", "delivery")).toMatchObject({
      tls: { policy: "sts-enforce", verified: true },
    });
    expect(peers.plain!.messages()).toEqual([expect.objectContaining({ tls: true })]);
  }, 30_000);

  test("mta queue show names each recipient's last TLS (policy, version, cipher, verified), kept in the spool", async () => {
    const out = swaksTo(mta.smtpPorts[0]!, ["later@good.dane.test", "now@good.dane.test"]);
    const id = /queued as ([0-9A-Z]+)/.exec(out)![1]!;
    const deferred = await waitForLogLine(dir.path, "later@good.dane.test", "transient-failure");
    const delivered = await waitForLogLine(dir.path, "now@good.dane.test", "delivery");
    const tls = {
      policy: "dane",
      version: (delivered.tls as { version: string }).version,
      cipher: (delivered.tls as { cipher: string }).cipher,
      verified: true,
    };
    expect(tls.version).toMatch(/^TLSv1\.[23]$/);
    expect(deferred.tls).toMatchObject(tls);
    const shown = (json: boolean, cfg = mta.configFile) => {
      const r = runMta(["queue", "show", id, ...(json ? ["--json"] : []), "-c", cfg]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      return r.stdout;
    };
    const recipients = (JSON.parse(shown(true)) as { recipients: { address: string; tls: unknown }[] })
      .recipients;
    expect(recipients).toEqual([
      expect.objectContaining({ address: "later@good.dane.test", state: "pending", tls }),
      expect.objectContaining({ address: "now@good.dane.test", state: "delivered", tls }),
    ]);
    const text = shown(false);
    expect(text).toContain(`tls: dane, ${tls.version}, ${tls.cipher}, verified`);
    expect(text).toMatch(/pending\s+later@good\.dane\.test\s+last reply: 451 4\.2\.0/);
    // It is in the spool, not in the daemon's memory: the same with the daemon stopped, and after.
    await mta.stop();
    expect(JSON.parse(shown(true)).recipients[0].tls).toEqual(tls);
    mta = await startMta({ dir: dir.path, config });
    expect(JSON.parse(shown(true)).recipients[0].tls).toEqual(tls);
  }, 60_000);

  test("mta queue show for a message the TLS policy keeps waiting: the policy, no TLS version", async () => {
    const out = swaksTo(mta.smtpPorts[0]!, "g@bogus.test");
    const id = /queued as ([0-9A-Z]+)/.exec(out)![1]!;
    await waitForLogLine(dir.path, "g@bogus.test", "transient-failure");
    const r = runMta(["queue", "show", id, "--json", "-c", mta.configFile]);
    expect(JSON.parse(r.stdout).recipients[0]).toMatchObject({
      state: "pending",
      tls: { policy: "dane", verified: false },
      lastReply: expect.stringMatching(/^451 4\.7\.5 /),
    });
    expect(JSON.parse(r.stdout).recipients[0].tls.version).toBeUndefined();
    expect(runMta(["queue", "show", id, "-c", mta.configFile]).stdout).toContain("tls: dane, not verified");
  }, 30_000);
});
