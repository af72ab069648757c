/**
 * TLS-RPT through the compiled binary: sessions that succeed and fail in every way mta can see them
 * (MTA-STS, DANE with unbound validating, a policy host that fails), then the daily report (a 6 s
 * period here) arrives at a Postfix smtp-sink mailbox as RFC 8460 JSON, gzip, DKIM-signed, and by
 * HTTPS POST; its counts are checked against the delivery log.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { startTxtServer, type TxtServer } from "../dkim/_dns.ts";
import { type HttpsServer, startHttpsServer, stsPolicyResponse } from "../support/httpsServer.ts";
import {
  deliveryLog,
  runMta,
  type StartedMta,
  startMta,
  swaksTo,
  tempDir,
  testConfig,
} from "../support/mta.ts";
import { freePort, type Sink, startSink } from "../support/sink.ts";
import { createTestCa, selfSignedFor, type TestCa, tlsaDigest } from "../support/testCa.ts";
import { type Aiosmtpd, startAiosmtpd } from "../support/aiosmtpd.ts";
import { breakSignature, startUnbound, type Unbound } from "../support/unbound.ts";

const INTERVAL_MS = 6000;
const dir = tempDir("mta-e2e-tlsrpt-");
let ca: TestCa;
let unbound: Unbound;
let web: HttpsServer;
let webpki: HttpsServer;
let mailbox: Sink;
let dkimDns: TxtServer;
const peers: Aiosmtpd[] = [];
let mta: StartedMta;
let port = 0;

beforeAll(async () => {
  ca = createTestCa(dir.path);
  port = freePort("127.0.0.81");
  const mx1 = ca.issue("mx1.sts.test", { sans: ["mx1.sts.test", "mx.rogue.test"] });
  const dane1 = selfSignedFor(dir.path, "mx1.dane.test");
  const dane0 = selfSignedFor(dir.path, "mx0.dane.test");
  const other = selfSignedFor(dir.path, "mx0.dane.test");
  const fetchMx = ca.issue("mx.fetch.test");
  const bogusMx = selfSignedFor(dir.path, "mx.bogus.test");
  peers.push(
    await startAiosmtpd({ host: "127.0.0.81", port, dir: dir.path, tls: mx1 }), // sts: good
    await startAiosmtpd({ host: "127.0.0.82", port, dir: dir.path }), // sts: hides STARTTLS, preferred
    await startAiosmtpd({ host: "127.0.0.83", port, dir: dir.path, tls: dane1 }), // dane: matches
    await startAiosmtpd({ host: "127.0.0.84", port, dir: dir.path, tls: other }), // dane: preferred, wrong key
    await startAiosmtpd({ host: "127.0.0.85", port, dir: dir.path, tls: fetchMx }),
    await startAiosmtpd({ host: "127.0.0.86", port, dir: dir.path, tls: bogusMx }),
    // Enforced MTA-STS against a certificate for another name, and an expired one.
    await startAiosmtpd({ host: "127.0.0.87", port, dir: dir.path, tls: ca.issue("other.name.test") }),
    await startAiosmtpd({
      host: "127.0.0.90",
      port,
      dir: dir.path,
      tls: ca.issue("mx.expired.test", { expired: true }),
    }),
    // MTA-STS testing against a self-signed certificate.
    await startAiosmtpd({
      host: "127.0.0.88",
      port,
      dir: dir.path,
      tls: selfSignedFor(dir.path, "mx.testing.test"),
    }),
  );
  const policies: Record<string, { mode: string; mx: string[] }> = {
    "sts.test": { mode: "enforce", mx: ["mx1.sts.test", "mx2.sts.test"] },
    "rogue.test": { mode: "enforce", mx: ["mx.rogue.test"] },
    "mismatch.test": { mode: "enforce", mx: ["mx.mismatch.test"] },
    "expired.test": { mode: "enforce", mx: ["mx.expired.test"] },
    "testing.test": { mode: "testing", mx: ["mx.testing.test"] },
  };
  const policyHost = ca.issue("mta-sts.sts.test", {
    sans: [...Object.keys(policies), "fetch.test", "invalid.test"]
      .map((d) => `mta-sts.${d}`)
      .concat("reports.test"),
  });
  web = await startHttpsServer({
    cert: policyHost.chainPem,
    key: policyHost.keyPem,
    handler: (_req, log) => {
      const domain = log.host.replace(/^mta-sts\./, "").replace(/:\d+$/, "");
      const p = policies[domain];
      if (p) return stsPolicyResponse({ ...p, maxAgeS: 86400 });
      if (domain === "invalid.test")
        return new Response("version: STSv1\nmode: enforce\n", { headers: { "Content-Type": "text/plain" } });
      if (log.path === "/tlsrpt") return new Response("thanks", { status: 201 });
      return new Response("no policy here", { status: 404 }); // mta-sts.fetch.test: a broken policy host
    },
  });
  // mta-sts.webpki.test: a policy host whose certificate no CA vouches for (same port, another address).
  const selfPolicy = selfSignedFor(dir.path, "mta-sts.webpki.test");
  webpki = await startHttpsServer({
    cert: selfPolicy.chainPem,
    key: selfPolicy.keyPem,
    host: "127.0.0.2",
    port: web.port,
    handler: () => stsPolicyResponse({ mode: "enforce", mx: ["mx.webpki.test"], maxAgeS: 86400 }),
  });
  mailbox = await startSink({ dir: dir.path, host: "127.0.0.89" });
  const rua = 'IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"';
  const tlsa = (pem: string) => `IN TLSA 3 1 1 ${tlsaDigest(pem, 1, 1, dir.path)}`;
  unbound = await startUnbound(dir.path, [
    {
      name: "sts.test",
      signed: false,
      records: [
        "@ IN MX 10 mx1",
        "@ IN MX 5 mx2",
        "mx1 IN A 127.0.0.81",
        "mx2 IN A 127.0.0.82",
        '_mta-sts IN TXT "v=STSv1; id=1;"',
        "mta-sts IN A 127.0.0.1",
        `_smtp._tls ${rua}`,
      ],
    },
    {
      name: "dane.test",
      signed: true,
      records: [
        "@ IN MX 10 mx1",
        "@ IN MX 5 mx0",
        "mx1 IN A 127.0.0.83",
        "mx0 IN A 127.0.0.84",
        `_${port}._tcp.mx1 ${tlsa(dane1.certPem)}`,
        `_${port}._tcp.mx0 ${tlsa(dane0.certPem)}`,
        `_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://reports.test:${web.port}/tlsrpt"`,
        "reports IN A 127.0.0.1",
      ],
    },
    {
      name: "fetch.test",
      signed: false,
      records: [
        "@ IN MX 10 mx",
        "mx IN A 127.0.0.85",
        '_mta-sts IN TXT "v=STSv1; id=9;"',
        "mta-sts IN A 127.0.0.1",
        `_smtp._tls ${rua}`,
      ],
    },
    {
      name: "bogus.test",
      signed: true,
      records: [
        "@ IN MX 10 mx",
        "mx IN A 127.0.0.86",
        `_${port}._tcp.mx ${tlsa(bogusMx.certPem)}`,
        `_smtp._tls ${rua}`,
      ],
      tamper: breakSignature("TLSA"),
    },
    { name: "reports.test", signed: false, records: ["@ IN A 127.0.0.1"] },
    // One domain per remaining kind of failure. All unsigned: no DANE, so MTA-STS (or nothing) applies.
    ...[
      ["rogue.test", ["@ IN MX 10 mx", "@ IN MX 5 evil.attacker.test.", "mx IN A 127.0.0.81"], "1"],
      ["mismatch.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.87"], "1"],
      ["expired.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.90"], "1"],
      ["testing.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.88"], "1"],
      ["invalid.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.85"], "1"],
      ["webpki.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.85"], "2"],
      ["required.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.85"], undefined],
    ].map(([name, records, mtaSts]) => ({
      name: name as string,
      signed: false,
      records: [
        ...(records as string[]),
        `_smtp._tls ${rua}`,
        ...(mtaSts ? ['_mta-sts IN TXT "v=STSv1; id=1;"', `mta-sts IN A 127.0.0.${mtaSts}`] : []),
      ],
    })),
    { name: "attacker.test", signed: false, records: ["evil IN A 127.0.0.82"] },
  ]);
  // Reports are DKIM-signed like any mail: a key for the reporting host's domain.
  dkimDns = await startTxtServer();
  const keyFile = join(dir.path, "rpt.mta.test.pem");
  const k = runMta([
    "dkim",
    "keygen",
    "--domain",
    "mta.test",
    "--selector",
    "rpt",
    "--type",
    "ed25519",
    "--out",
    keyFile,
  ]);
  expect(k.code).toBe(0);
  dkimDns.set("rpt._domainkey.mta.test", [...k.stdout.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join(""));
  mta = await startMta({
    dir: dir.path,
    config: testConfig(
      dir.path,
      [
        `dns: { servers: ["127.0.0.1:${unbound.port}"], timeout: 2s, attempts: 1, dnssec: true }`,
        "delivery:",
        `  port: ${port}`,
        "  retry: [1h]",
        `  routes: { reports.test: "127.0.0.89:${mailbox.port}" }`,
        // required.test insists on DANE, which its unsigned zone cannot give: dane-required.
        "  domains: { default: { max_messages_per_connection: 1 }, required.test: { tls: dane } }",
        `tls_policy: { ca_file: ${ca.certFile}, mta_sts: { port: ${web.port} }, tls_rpt: { interval: ${INTERVAL_MS / 1000}s, organization: "Test Sender", contact: ops@mta.test } }`,
        `dkim: { keys: [{ domain: mta.test, selector: rpt, key_file: ${keyFile} }] }`,
      ].join("\n"),
    ),
  });
}, 60_000);

afterAll(async () => {
  await mta?.stop();
  for (const p of peers) await p[Symbol.asyncDispose]();
  await web.stop();
  await webpki.stop();
  await mailbox[Symbol.asyncDispose]();
  await dkimDns.close();
  await unbound[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

interface Report {
  "report-id": string;
  policies: {
    policy: {
      "policy-type": string;
      "policy-domain": string;
      "policy-string"?: string[];
      "mx-host"?: string[];
    };
    summary: { "total-successful-session-count": number; "total-failure-session-count": number };
    "failure-details"?: {
      "result-type": string;
      "failed-session-count": number;
      "receiving-mx-hostname"?: string;
    }[];
  }[];
}

/** Python's email parser reads the report message: headers, the attachment's type and name, its JSON. */
function parseReport(raw: string) {
  const py = spawnSync(
    [
      "/usr/bin/python3",
      "-c",
      [
        "import sys, json, gzip, email",
        "from email import policy",
        "m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)",
        "out = {k: str(m[k]) for k in ('Subject', 'TLS-Report-Domain', 'TLS-Report-Submitter', 'From', 'DKIM-Signature')}",
        "out['type'] = m.get_content_type(); out['report-type'] = m.get_param('report-type')",
        "for p in m.walk():",
        "    if p.get_content_type() == 'application/tlsrpt+gzip':",
        "        out['filename'] = p.get_filename()",
        "        out['report'] = json.loads(gzip.decompress(p.get_payload(decode=True)))",
        "print(json.dumps(out))",
      ].join("\n"),
    ],
    { stdin: Buffer.from(raw, "latin1"), stdout: "pipe", stderr: "pipe" },
  );
  if (py.exitCode !== 0) throw new Error(py.stderr.toString());
  return JSON.parse(py.stdout.toString()) as Record<string, string> & { report: Report };
}

describe("TLS-RPT through mta serve", () => {
  test("after a period with successes and failures, each policy domain gets its report, counts as in the delivery log", async () => {
    // Start right after a period boundary so that every session falls into one period.
    const into = Date.now() % INTERVAL_MS;
    if (into > 1000) await Bun.sleep(INTERVAL_MS - into + 50);
    swaksTo(mta.smtpPorts[0]!, ["a@sts.test", "b@sts.test"]);
    swaksTo(mta.smtpPorts[0]!, ["c@sts.test"]);
    swaksTo(mta.smtpPorts[0]!, ["d@dane.test"]);
    swaksTo(mta.smtpPorts[0]!, ["e@dane.test"]);
    swaksTo(mta.smtpPorts[0]!, ["f@fetch.test"]);
    swaksTo(mta.smtpPorts[0]!, ["g@bogus.test"]);
    for (const d of ["rogue", "mismatch", "expired", "testing", "invalid", "webpki", "required"])
      swaksTo(mta.smtpPorts[0]!, [`x@${d}.test`]);
    // 14 messages to 11 domains; the reports (one per policy domain) come after the period.
    const domains = [
      "bogus",
      "dane",
      "expired",
      "fetch",
      "invalid",
      "mismatch",
      "required",
      "rogue",
      "sts",
      "testing",
      "webpki",
    ].map((d) => `${d}.test`);
    const dumps = (await mailbox.waitFor(domains.length, 30_000)).map(parseReport);
    const byDomain: Record<string, ReturnType<typeof parseReport>> = Object.fromEntries(
      dumps.map((d) => [d["TLS-Report-Domain"], d] as const),
    );
    expect(Object.keys(byDomain).sort()).toEqual(domains);
    // Every RFC 8460 §4.3 result type mta can meet is in some report.
    const seen = new Set(
      dumps.flatMap((d) =>
        d.report.policies.flatMap((p) => (p["failure-details"] ?? []).map((f) => f["result-type"])),
      ),
    );
    expect([...seen].sort()).toEqual([
      "certificate-expired",
      "certificate-host-mismatch",
      "certificate-not-trusted",
      "dane-required",
      "dnssec-invalid",
      "starttls-not-supported",
      "sts-policy-fetch-error",
      "sts-policy-invalid",
      "sts-webpki-invalid",
      "tlsa-invalid",
      "validation-failure",
    ]);

    const log = deliveryLog(dir.path).filter((l) => l.type === "delivery" || l.type === "transient-failure");
    for (const [domain, mail] of Object.entries(byDomain)) {
      // RFC 8460 §5.3: subject, headers, media type and file name.
      expect(mail.Subject).toMatch(
        new RegExp(`^Report Domain: ${domain.replace(".", "\\.")} Submitter: mta\\.test Report-ID: <[^>]+>$`),
      );
      expect(mail["TLS-Report-Submitter"]).toBe("mta.test");
      expect(mail.type).toBe("multipart/report");
      expect(mail["report-type"]).toBe("tlsrpt");
      expect(mail.filename).toMatch(
        new RegExp(`^mta\\.test!${domain.replace(".", "\\.")}!\\d+!\\d+\\.json\\.gz$`),
      );
      // The counts: successes are delivered attempts (one connection each), failures what the log
      // lists; the log has a line per recipient, TLS-RPT a count per session: one per attempt.
      const attempts = new Map(
        log.filter((l) => l.destination === domain).map((l) => [`${l.id}/${l.attempt}`, l]),
      );
      const lines = [...attempts.values()];
      const expected = new Map<string, number>();
      for (const l of lines)
        for (const f of (l.tls as { failures?: { result: string }[] })?.failures ?? [])
          expected.set(f.result, (expected.get(f.result) ?? 0) + 1);
      // A delivered attempt is a successful session unless the session that carried it failed the
      // policy itself (MTA-STS testing: delivered, and reported as a failure).
      const deliveries = lines.filter(
        (l) =>
          l.type === "delivery" &&
          !((l.tls as { failures?: { mx: string; ip: string }[] })?.failures ?? []).some(
            (f) => f.mx === l.mx && f.ip === l.ip,
          ),
      ).length;
      const report = mail.report;
      const success = report.policies.reduce((n, p) => n + p.summary["total-successful-session-count"], 0);
      const failed = new Map<string, number>();
      for (const p of report.policies)
        for (const f of p["failure-details"] ?? [])
          failed.set(f["result-type"], (failed.get(f["result-type"]) ?? 0) + f["failed-session-count"]);
      expect({ domain, success, failed: Object.fromEntries(failed) }).toEqual({
        domain,
        success: deliveries,
        failed: Object.fromEntries(expected),
      });
      expect(report.policies.every((p) => p.policy["policy-domain"] === domain)).toBe(true);
    }
    // What each domain saw, concretely.
    expect(byDomain["sts.test"]!.report.policies).toEqual([
      expect.objectContaining({
        policy: expect.objectContaining({
          "policy-type": "sts",
          "mx-host": ["mx1.sts.test", "mx2.sts.test"],
        }),
        summary: { "total-successful-session-count": 2, "total-failure-session-count": 2 },
        "failure-details": [
          expect.objectContaining({
            "result-type": "starttls-not-supported",
            "receiving-mx-hostname": "mx2.sts.test",
            "failed-session-count": 2,
          }),
        ],
      }),
    ]);
    const dane = byDomain["dane.test"]!.report.policies;
    expect(dane.map((p) => p.policy["policy-type"])).toEqual(["tlsa", "tlsa"]);
    expect(
      dane.find((p) => p.policy["mx-host"]?.[0] === "mx0.dane.test")!["failure-details"]![0],
    ).toMatchObject({ "result-type": "tlsa-invalid", "failed-session-count": 2 });
    expect(byDomain["bogus.test"]!.report.policies[0]!["failure-details"]![0]).toMatchObject({
      "result-type": "dnssec-invalid",
    });
    expect(byDomain["fetch.test"]!.report.policies[0]!["failure-details"]![0]).toMatchObject({
      "result-type": "sts-policy-fetch-error",
    });

    // DKIM-signed by mta.test, with the TLS-RPT headers in h=, and the signature verifies.
    const raw = (await mailbox.waitFor(domains.length)).find((d) =>
      d.includes("TLS-Report-Domain: sts.test"),
    )!;
    const dkim = await dkimVerify(Buffer.from(raw, "latin1"), {
      resolver: dkimDns.resolver as never,
    } as never);
    expect(dkim.results[0]).toMatchObject({ signingDomain: "mta.test", status: { result: "pass" } });
    expect(byDomain["sts.test"]!["DKIM-Signature"]).toMatch(/tls-report-domain/i);

    // dane.test asked for HTTPS too: the same report was POSTed as application/tlsrpt+gzip.
    const post = web.requests.find((r) => r.path === "/tlsrpt")!;
    expect(post.contentType).toBe("application/tlsrpt+gzip");
    expect(JSON.parse(gunzipSync(post.body).toString())).toEqual(byDomain["dane.test"]!.report);
  }, 60_000);
});
