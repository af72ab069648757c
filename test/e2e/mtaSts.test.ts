/**
 * MTA-STS through the compiled binary: a loopback HTTPS policy host signed by a test CA, a DNS server
 * answering TXT/MX/A, and aiosmtpd receiving MX hosts with matching, mismatching and self-signed
 * certificates, and one that hides STARTTLS.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";
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
import { createTestCa, selfSignedFor, type TestCa } from "../support/testCa.ts";
import { type Aiosmtpd, startAiosmtpd } from "../support/aiosmtpd.ts";

const dir = tempDir("mta-e2e-sts-");
let ca: TestCa;
let dns: DnsServer;
let web: HttpsServer;
const peers: Record<string, Aiosmtpd> = {};
let port = 0;

const DOMAINS = {
  // domain: [mode, mx patterns, MX host, its IP, certificate]
  "enforce.test": { mode: "enforce", mx: ["mx.enforce.test"], host: "mx.enforce.test", ip: "127.0.0.51" },
  "mismatch.test": { mode: "enforce", mx: ["*.mismatch.test"], host: "mx.mismatch.test", ip: "127.0.0.52" },
  "stripped.test": { mode: "enforce", mx: ["mx.stripped.test"], host: "mx.stripped.test", ip: "127.0.0.53" },
  "testing.test": { mode: "testing", mx: ["mx.testing.test"], host: "mx.testing.test", ip: "127.0.0.54" },
} as const;

beforeAll(async () => {
  ca = createTestCa(dir.path);
  port = freePort("127.0.0.51");
  peers.enforce = await startAiosmtpd({
    host: "127.0.0.51",
    port,
    dir: dir.path,
    tls: ca.issue("mx.enforce.test"),
  });
  peers.mismatch = await startAiosmtpd({
    host: "127.0.0.52",
    port,
    dir: dir.path,
    tls: ca.issue("other.example.test"),
  });
  peers.stripped = await startAiosmtpd({ host: "127.0.0.53", port, dir: dir.path });
  peers.testing = await startAiosmtpd({
    host: "127.0.0.54",
    port,
    dir: dir.path,
    tls: selfSignedFor(dir.path, "mx.testing.test"),
  });
  // An MX that enforce.test's policy does not list, preferred over the real one: it must never be used.
  peers.rogue = await startAiosmtpd({
    host: "127.0.0.59",
    port,
    dir: dir.path,
    tls: ca.issue("rogue.attacker.test"),
  });
  const policyHost = ca.issue("mta-sts.enforce.test", {
    sans: Object.keys(DOMAINS).map((d) => `mta-sts.${d}`),
  });
  web = await startHttpsServer({
    cert: policyHost.chainPem,
    key: policyHost.keyPem,
    handler: (_req, log) => {
      const d = Object.entries(DOMAINS).find(([name]) => log.host.startsWith(`mta-sts.${name}`));
      return d
        ? stsPolicyResponse({ mode: d[1].mode, mx: [...d[1].mx], maxAgeS: 86400 })
        : new Response("", { status: 404 });
    },
  });
  const zone: Parameters<typeof startDnsServer>[0] = {
    "rogue.attacker.test": { a: ["127.0.0.59"] },
  };
  for (const [d, p] of Object.entries(DOMAINS)) {
    zone[d] = {
      mx: [
        { exchange: p.host, preference: 10 },
        ...(d === "enforce.test" ? [{ exchange: "rogue.attacker.test", preference: 5 }] : []),
      ],
    };
    zone[p.host] = { a: [p.ip] };
    zone[`_mta-sts.${d}`] = { txt: ["v=STSv1; id=2024a;"] };
    zone[`mta-sts.${d}`] = { a: ["127.0.0.1"] };
  }
  dns = await startDnsServer(zone);
}, 60_000);

afterAll(async () => {
  for (const p of Object.values(peers)) await p[Symbol.asyncDispose]();
  await web.stop();
  await dns.close();
  dir[Symbol.dispose]();
});

function config(): string {
  return testConfig(
    dir.path,
    [
      `dns: { servers: ["127.0.0.1:${dns.port}"], timeout: 1s, attempts: 1 }`,
      `delivery: { port: ${port}, retry: [1h] }`,
      `tls_policy: { ca_file: ${ca.certFile}, mta_sts: { port: ${web.port} }, tls_rpt: { enabled: false } }`,
    ].join("\n"),
  );
}

describe("MTA-STS through mta serve", () => {
  let mta: StartedMta;

  test("enforce: delivered to the MX the policy names, over TLS verified against the test CA", async () => {
    mta = await startMta({ dir: dir.path, config: config() });
    swaksTo(mta.smtpPorts[0]!, "a@enforce.test");
    const line = await waitForLogLine(dir.path, "a@enforce.test", "delivery");
    expect(line).toMatchObject({
      mx: "mx.enforce.test",
      ip: "127.0.0.51",
      tls: {
        policy: "sts-enforce",
        verified: true,
        version: expect.stringMatching(/^TLSv1\.[23]$/),
        cipher: expect.any(String),
      },
    });
    expect(peers.enforce!.messages()).toEqual([
      expect.objectContaining({ rcpt_tos: ["a@enforce.test"], tls: true }),
    ]);
    // The preferred MX outside the policy got no connection at all.
    expect(peers.rogue!.commands()).toEqual([]);
    const policyFetch = web.requests.find((r) => r.host.startsWith("mta-sts.enforce.test"));
    expect(policyFetch).toMatchObject({ method: "GET", path: "/.well-known/mta-sts.txt" });
  }, 30_000);

  test("enforce: a certificate for another name defers with 4.7.5 and nothing is sent", async () => {
    swaksTo(mta.smtpPorts[0]!, "b@mismatch.test");
    const line = await waitForLogLine(dir.path, "b@mismatch.test", "transient-failure");
    expect(line).toMatchObject({
      enhanced: "4.7.5",
      tls: {
        policy: "sts-enforce",
        failures: [{ result: "certificate-host-mismatch", mx: "mx.mismatch.test" }],
      },
    });
    expect(peers.mismatch!.commands()).not.toContain("MAIL");
    expect(peers.mismatch!.messages()).toEqual([]);
  }, 30_000);

  test("enforce: an MX that hides STARTTLS gets no mail in plain text (4.7.4)", async () => {
    const queued = /queued as ([0-9A-Z]+)/.exec(swaksTo(mta.smtpPorts[0]!, "c@stripped.test"))![1]!;
    const line = await waitForLogLine(dir.path, "c@stripped.test", "transient-failure");
    expect(line).toMatchObject({
      enhanced: "4.7.4",
      tls: { policy: "sts-enforce", failures: [{ result: "starttls-not-supported" }] },
    });
    expect(peers.stripped!.commands()).toContain("EHLO");
    expect(peers.stripped!.commands()).not.toContain("MAIL");
    expect(peers.stripped!.messages()).toEqual([]);
    // `mta queue show` names the policy that keeps the message waiting.
    const show = runMta(["queue", "show", queued, "-c", mta.configFile]);
    expect(show.stdout).toContain("TLS required (sts-enforce) but the server does not offer STARTTLS");
    // And which TLS policy its last attempt had: enforce, no TLS session, nothing verified.
    expect(show.stdout).toContain("tls: sts-enforce, not verified");
  }, 30_000);

  test("testing: delivered as usual over TLS, the untrusted certificate noted for TLS-RPT", async () => {
    swaksTo(mta.smtpPorts[0]!, "d@testing.test");
    const line = await waitForLogLine(dir.path, "d@testing.test", "delivery");
    expect(line).toMatchObject({
      tls: {
        policy: "sts-testing",
        verified: false,
        failures: [{ result: "certificate-not-trusted", mx: "mx.testing.test" }],
      },
    });
    expect(peers.testing!.messages()).toEqual([expect.objectContaining({ tls: true })]);
  }, 30_000);

  test("after a restart with the policy host down, the cached policy is still enforced", async () => {
    expect(await mta.stop()).toBe(0);
    await web.stop();
    mta = await startMta({ dir: dir.path, config: config() });
    try {
      swaksTo(mta.smtpPorts[0]!, "e@stripped.test");
      swaksTo(mta.smtpPorts[0]!, "f@enforce.test");
      expect(await waitForLogLine(dir.path, "e@stripped.test", "transient-failure")).toMatchObject({
        enhanced: "4.7.4",
        tls: { policy: "sts-enforce" },
      });
      expect(await waitForLogLine(dir.path, "f@enforce.test", "delivery")).toMatchObject({
        tls: { policy: "sts-enforce", verified: true },
      });
      expect(peers.stripped!.commands()).not.toContain("MAIL");
      expect(peers.rogue!.commands()).toEqual([]);
    } finally {
      await mta.stop();
    }
  }, 30_000);
});
