/**
 * TLS-RPT: counts kept in the spool directory, the report JSON (RFC 8460 §4.4), the report message
 * (§5.3) and the HTTPS POST (§5.4) to a real HTTPS endpoint on loopback.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { createResolver, type Resolver } from "../../src/dns/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import { type MailReport, parseTlsRptRecord } from "../../src/tlspolicy/index.ts";
import { TlsReports, type TlsReportsOptions } from "../../src/tlspolicy/_rpt.ts";
import type { ReportPolicy } from "../../src/tlspolicy/_plan.ts";
import { type DnsServer, startDnsServer } from "../support/dnsServer.ts";
import { type HttpsServer, startHttpsServer } from "../support/httpsServer.ts";
import { tempDir } from "../support/mta.ts";
import { createTestCa, type TestCa } from "../support/testCa.ts";

const dir = tempDir("mta-rpt-");
let ca: TestCa;
let dns: DnsServer;
let resolver: Resolver;
let web: HttpsServer;

beforeAll(async () => {
  ca = createTestCa(dir.path);
  const cert = ca.issue("reports.test");
  web = await startHttpsServer({ cert: cert.chainPem, key: cert.keyPem, handler: () => new Response("ok") });
  dns = await startDnsServer({
    "reports.test": { a: ["127.0.0.1"] },
    "_smtp._tls.both.test": {
      txt: [`v=TLSRPTv1; rua=mailto:tlsrpt@both.test,https://reports.test:${web.port}/v1/tlsrpt`],
    },
  });
  resolver = createResolver({ servers: [{ host: dns.host, port: dns.port }], timeoutMs: 500, attempts: 1 });
});
afterAll(async () => {
  await web.stop();
  await dns.close();
  dir[Symbol.dispose]();
});

function reports(name: string, mails: MailReport[], over: Partial<TlsReportsOptions> = {}) {
  const r = new TlsReports({
    dir: join(dir.path, name),
    resolver,
    https: { resolver, prefer: "ipv4" },
    ca: ca.certPem,
    intervalMs: 1500,
    organization: "Sender Org",
    contact: "postmaster@sender.test",
    submitter: "mta.sender.test",
    from: "tlsrpt@sender.test",
    submitMail: async (m) => {
      mails.push(m);
    },
    flushMs: 50,
    log: silentLogger(),
    ...over,
  });
  r.open();
  return r;
}

const sts: ReportPolicy = {
  policyDomain: "both.test",
  type: "sts",
  strings: ["version: STSv1", "mode: enforce", "mx: mx.both.test", "max_age: 86400"],
  mxHost: ["mx.both.test"],
};
const tlsa: ReportPolicy = {
  policyDomain: "both.test",
  type: "tlsa",
  strings: ["3 1 1 abcd"],
  mxHost: ["mx2.both.test"],
};

/** Waits until the next period boundary has passed (so counts land in one period). */
async function atPeriodStart(intervalMs: number) {
  const into = Date.now() % intervalMs;
  if (into > intervalMs - 600) await Bun.sleep(intervalMs - into + 20);
}

test("the TXT record: exactly one v=TLSRPTv1 record, its rua URIs (mailto and https only)", () => {
  expect(parseTlsRptRecord(["v=TLSRPTv1; rua=mailto:a@b.test,https://r.test/x"])).toEqual({
    rua: ["mailto:a@b.test", "https://r.test/x"],
  });
  expect(parseTlsRptRecord(["v=TLSRPTv1;rua=mailto:a@b.test"])).toEqual({ rua: ["mailto:a@b.test"] });
  expect(parseTlsRptRecord(["v=TLSRPTv1; rua=http://insecure.test/"])).toHaveProperty("error");
  expect(
    parseTlsRptRecord(["v=TLSRPTv1; rua=mailto:a@b.test", "v=TLSRPTv1; rua=mailto:c@d.test"]),
  ).toHaveProperty("error");
  expect(parseTlsRptRecord(["v=spf1 -all"])).toHaveProperty("error");
});

test("counts survive a restart: they are on disk within the flush interval, in 0600 files", async () => {
  await atPeriodStart(1500);
  const mails: MailReport[] = [];
  const a = reports("restart", mails, { intervalMs: 60_000 });
  a.count(sts, "success");
  a.count(sts, "success");
  a.count(sts, "certificate-host-mismatch", { mx: "mx.both.test", ip: "127.0.0.5", reason: "names other" });
  await Bun.sleep(200);
  // kill -9 would lose nothing that is on disk: read it with a fresh instance without closing the first.
  const b = reports("restart", mails, { intervalMs: 60_000 });
  const [period] = b.snapshot();
  const counts = Object.values(period!.domains["both.test"]!.policies)[0]!;
  expect([counts.success, counts.failure]).toEqual([2, 1]);
  const files = readdirSync(join(dir.path, "restart"));
  expect(files).toHaveLength(1);
  expect(statSync(join(dir.path, "restart", files[0]!)).mode & 0o777).toBe(0o600);
  await a.close();
  await b.close();
});

test("after the period ends, the domain gets the report by mail and by HTTPS POST, gzip JSON per RFC 8460", async () => {
  await atPeriodStart(1500);
  const mails: MailReport[] = [];
  const r = reports("send", mails);
  for (let i = 0; i < 3; i++) r.count(sts, "success");
  r.count(sts, "starttls-not-supported", { mx: "mx.both.test", ip: "127.0.0.5", sendingIp: "127.0.0.1" });
  r.count(tlsa, "success");
  r.count(tlsa, "tlsa-invalid", { mx: "mx2.both.test", ip: "127.0.0.6", reason: "no TLSA record matches" });
  r.count(tlsa, "tlsa-invalid", { mx: "mx2.both.test", ip: "127.0.0.6", reason: "no TLSA record matches" });
  for (let i = 0; i < 40 && (mails.length === 0 || web.requests.length === 0); i++) await Bun.sleep(100);
  expect(mails).toHaveLength(1);
  const post = web.requests.find((q) => q.path === "/v1/tlsrpt")!;
  expect(post.method).toBe("POST");
  expect(post.contentType).toBe("application/tlsrpt+gzip");
  const report = JSON.parse(gunzipSync(post.body).toString());
  expect(report).toMatchObject({
    "organization-name": "Sender Org",
    "contact-info": "postmaster@sender.test",
    "report-id": expect.stringMatching(/^\d{8}T\d{6}Z\.both\.test@mta\.sender\.test$/),
    "date-range": { "start-datetime": expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/) },
  });
  const byType = Object.fromEntries(
    report.policies.map((p: { policy: { "policy-type": string } }) => [p.policy["policy-type"], p]),
  );
  expect(byType.sts).toEqual({
    policy: {
      "policy-type": "sts",
      "policy-string": sts.strings,
      "policy-domain": "both.test",
      "mx-host": ["mx.both.test"],
    },
    summary: { "total-successful-session-count": 3, "total-failure-session-count": 1 },
    "failure-details": [
      {
        "result-type": "starttls-not-supported",
        "sending-mta-ip": "127.0.0.1",
        "receiving-mx-hostname": "mx.both.test",
        "receiving-ip": "127.0.0.5",
        "failed-session-count": 1,
      },
    ],
  });
  expect(byType.tlsa.summary).toEqual({
    "total-successful-session-count": 1,
    "total-failure-session-count": 2,
  });
  expect(byType.tlsa["failure-details"][0]).toMatchObject({
    "result-type": "tlsa-invalid",
    "failed-session-count": 2,
    "failure-reason-code": "no TLSA record matches",
  });

  // The mail: RFC 8460 §5.3 headers, the gzip attachment holds the same report.
  const m = mails[0]!;
  expect(m.recipient).toBe("tlsrpt@both.test");
  expect(m.sender).toBe("tlsrpt@sender.test");
  const text = Buffer.from(m.message).toString();
  expect(text).toMatch(
    /^Subject: Report Domain: both\.test Submitter: mta\.sender\.test Report-ID: <[^>]+>\r$/m,
  );
  expect(text).toMatch(/^TLS-Report-Domain: both\.test\r$/m);
  expect(text).toMatch(/^TLS-Report-Submitter: mta\.sender\.test\r$/m);
  expect(text).toMatch(/^TLS-Required: No\r$/m);
  expect(text).toMatch(/^Content-Type: multipart\/report; report-type="tlsrpt"; boundary="[^"]+"\r$/m);
  expect(text).toMatch(/^Content-Type: application\/tlsrpt\+gzip\r$/m);
  expect(text).toMatch(/filename="mta\.sender\.test!both\.test!\d+!\d+\.json\.gz"/);
  const b64 = /Content-Disposition: attachment;[^\r]*\r\n\r\n([A-Za-z0-9+/=\r\n]+?)--/.exec(text)![1]!;
  expect(JSON.parse(gunzipSync(Buffer.from(b64.replace(/\r\n/g, ""), "base64")).toString())).toEqual(report);
  // Everything handed over: the period's file is gone.
  await Bun.sleep(100);
  expect(readdirSync(join(dir.path, "send"))).toEqual([]);
  await r.close();
});

test("a domain without a _smtp._tls record gets no report; an endpoint that fails is tried again", async () => {
  await atPeriodStart(1500);
  const mails: MailReport[] = [];
  const quiet: ReportPolicy = {
    policyDomain: "quiet.test",
    type: "no-policy-found",
    strings: [],
    mxHost: [],
  };
  const r = reports("none", mails);
  r.count(quiet, "success");
  await Bun.sleep(2500);
  expect(mails).toEqual([]);
  expect(readdirSync(join(dir.path, "none"))).toEqual([]);
  await r.close();

  dns.set("_smtp._tls.flaky.test", { txt: [`v=TLSRPTv1; rua=https://reports.test:${web.port}/flaky`] });
  web.handler = (_req, log) => new Response("no", { status: log.path === "/flaky" ? 503 : 200 });
  const flaky: ReportPolicy = {
    policyDomain: "flaky.test",
    type: "no-policy-found",
    strings: [],
    mxHost: [],
  };
  const f = reports("flaky", mails);
  f.count(flaky, "success");
  await Bun.sleep(2500);
  expect(web.requests.filter((q) => q.path === "/flaky").length).toBe(1);
  // Not delivered: the period stays on disk for the next try (and a restart).
  const left = readdirSync(join(dir.path, "flaky"));
  expect(left).toHaveLength(1);
  await f.close();
  web.handler = () => new Response("ok");
  const again = reports("flaky", mails);
  for (let i = 0; i < 30 && web.requests.filter((q) => q.path === "/flaky").length < 2; i++)
    await Bun.sleep(100);
  expect(web.requests.filter((q) => q.path === "/flaky").length).toBe(2);
  await Bun.sleep(100);
  expect(readdirSync(join(dir.path, "flaky"))).toEqual([]);
  await again.close();
}, 15_000);

test("a rua that would inject headers, or too many of them, is not served; domains without a record are not counted", async () => {
  await atPeriodStart(1500);
  dns.set("_smtp._tls.hostile.test", {
    txt: [
      `v=TLSRPTv1; rua=mailto:evil%0d%0aBcc:%20victim@x.test@y.test,${Array.from({ length: 8 }, (_, i) => `mailto:r${i}@hostile.test`).join(",")}`,
    ],
  });
  const mails: MailReport[] = [];
  const r = reports("hostile", mails);
  const hostile: ReportPolicy = {
    policyDomain: "hostile.test",
    type: "no-policy-found",
    strings: [],
    mxHost: [],
  };
  const silent: ReportPolicy = {
    policyDomain: "silent.test",
    type: "no-policy-found",
    strings: [],
    mxHost: [],
  };
  r.count(hostile, "success");
  r.count(silent, "success");
  await Bun.sleep(200);
  // silent.test publishes no record: nothing is kept for it.
  expect(r.snapshot().flatMap((p) => Object.keys(p.domains))).toEqual(["hostile.test"]);
  for (let i = 0; i < 40 && mails.length < 4; i++) await Bun.sleep(100);
  await Bun.sleep(300);
  // The first URI is refused, then four of the next eight (five URIs served in all).
  expect(mails.map((m) => m.recipient)).toEqual([
    "r0@hostile.test",
    "r1@hostile.test",
    "r2@hostile.test",
    "r3@hostile.test",
  ]);
  for (const m of mails) expect(Buffer.from(m.message).toString()).not.toMatch(/^Bcc:/im);
  await r.close();
}, 15_000);
