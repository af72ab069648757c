import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Classifier, parseDiagnostic, parseReport, parseVerp, verpAddress } from "../../src/bounce/index.ts";

const FIXTURES = join(import.meta.dir, "fixtures");
const SECRET = "fixture-secret-0123456789";
const fixture = (name: string) => readFileSync(join(FIXTURES, name));
const classifier = Classifier.builtin();

describe("parseReport on real and documented bounces", () => {
  // [file, kind, recipient, action, status, class]
  const cases: [string, string, string, string, string | undefined, string][] = [
    ["postfix-user-unknown.eml", "dsn", "bob@unknown.example.net", "failed", "5.1.1", "bad-mailbox"],
    ["postfix-mailbox-full.eml", "dsn", "carol@full.example.net", "failed", "5.2.2", "quota-issues"],
    ["postfix-delayed.eml", "dsn", "dave@slow.example.net", "delayed", "4.2.0", "policy-related"],
    ["exim-dsn.eml", "dsn", "erin@exim.example", "failed", "5.0.0", "quota-issues"],
    ["exim-plain.eml", "heuristic", "frank@example.net", "failed", "5.1.1", "bad-mailbox"],
    ["exchange-online-ndr.eml", "dsn", "grace@contoso.example", "failed", "5.1.10", "bad-mailbox"],
    ["gmail-dsn.eml", "dsn", "heidi@gmail.com", "failed", "5.1.1", "bad-mailbox"],
    ["qmail.eml", "heuristic", "ivan@qmail.example", "failed", "5.1.1", "bad-mailbox"],
  ];
  for (const [file, kind, address, action, status, cls] of cases) {
    test(`${file}: ${kind}, ${address} ${action} ${status ?? ""} → ${cls}`, async () => {
      const r = await parseReport(fixture(file));
      expect(r.kind).toBe(kind as never);
      const rc = r.recipients.find((x) => x.address === address);
      expect(rc).toBeDefined();
      expect(rc!.action).toBe(action);
      if (status) expect(rc!.status).toBe(status);
      const c = classifier.classify({
        ...(rc!.code !== undefined ? { code: rc!.code } : {}),
        ...(rc!.status ? { enhanced: rc!.status } : {}),
        text: rc!.text,
      });
      expect(c.class).toBe(cls as never);
    });
  }

  test("Gmail's folded multi-line diagnostic becomes one reply text", async () => {
    const r = await parseReport(fixture("gmail-dsn.eml"));
    const rc = r.recipients[0]!;
    expect(rc.code).toBe(550);
    expect(rc.text).toStartWith(
      "The email account that you tried to reach does not exist. Please try double-checking",
    );
    expect(rc.text).not.toContain("550-5.1.1");
    expect(rc.remoteMta).toStartWith("gmail-smtp-in.l.google.com.");
    expect(r.originalHeaders).toContain("Return-Path: <b-01jd3k7q2m8zy3-");
  });

  test("Postfix's report names its Reporting-MTA and keeps the returned original", async () => {
    const r = await parseReport(fixture("postfix-user-unknown.eml"));
    expect(r.reportingMta).toBe("mx.postfix.test");
    expect(r.recipients[0]!.diagnostic).toBe(
      "550 5.1.1 <bob@unknown.example.net>: Recipient address rejected: User unknown in virtual mailbox table",
    );
    expect(r.originalHeaders).toContain("Subject: Your weekly offers");
  });

  test("ARF reports: feedback type, user agent, original recipient and mail from", async () => {
    const y = await parseReport(fixture("yahoo-arf.eml"));
    expect(y.kind).toBe("arf");
    expect(y.feedback).toMatchObject({
      feedbackType: "abuse",
      userAgent: "Yahoo!-Mail-Feedback/2.0",
      originalRcptTo: ["judy@yahoo.com"],
      sourceIp: "192.0.2.25",
    });
    const m = await parseReport(fixture("microsoft-jmrp.eml"));
    expect(m.kind).toBe("arf");
    expect(m.feedback!.originalRcptTo).toEqual([]);
    expect(m.feedback!.userAgent).toBe("Hotmail FBL");
    expect(m.originalHeaders).toContain("b-01jd3k7q2m8zy6-32kyffse-mallory=outlook.com@bounce.test");
    const rfc = await parseReport(fixture("rfc5965-arf.eml"));
    expect(rfc.feedback).toMatchObject({
      feedbackType: "abuse",
      originalMailFrom: "b-01jd3k7q2m8zy7-vb90gexd@bounce.test",
      originalRcptTo: ["niaj@example.com"],
      reportingMta: "mail.example.com",
    });
  });

  test("an out-of-office reply is an auto-reply, not a bounce", async () => {
    expect((await parseReport(fixture("vacation.eml"))).kind).toBe("auto-reply");
  });

  test("garbage, an empty message and non-UTF-8 bytes give kind unknown without throwing", async () => {
    expect((await parseReport("")).kind).toBe("unknown");
    expect((await parseReport(new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0x0a]))).kind).toBe("unknown");
    expect((await parseReport("Subject: hello\r\n\r\nJust a note.\r\n")).kind).toBe("unknown");
    const huge = `From: MAILER-DAEMON@x.test\r\nSubject: Undelivered\r\n\r\n${"a".repeat(2_000_000)}\r\n`;
    expect((await parseReport(huge)).kind).toBe("unknown");
  });
});

describe("VERP return paths", () => {
  test("the long form carries the recipient and is read back; the case does not matter", () => {
    const a = verpAddress(SECRET, "bounce.test", "01JD3K7Q2M8ZXH", "Bob@Unknown.Example.NET");
    expect(a).toBe("b-01jd3k7q2m8zxh-6cxxd4zx-bob=unknown.example.net@bounce.test");
    expect(parseVerp(SECRET, "bounce.test", a.toUpperCase())).toEqual({
      id: "01JD3K7Q2M8ZXH",
      tag: "6cxxd4zx",
      recipient: "bob@unknown.example.net",
    });
  });

  test("a recipient that does not fit in 64 octets gives the short form", () => {
    const long = `${"x".repeat(50)}@example.net`;
    const a = verpAddress(SECRET, "bounce.test", "01JD3K7Q2M8ZXH", long);
    expect(a.split("@")[0]!.length).toBeLessThanOrEqual(64);
    expect(parseVerp(SECRET, "bounce.test", a)).toEqual({ id: "01JD3K7Q2M8ZXH", tag: expect.any(String) });
  });

  test("a tampered recipient, id or tag, another domain or another secret is refused", () => {
    const a = verpAddress(SECRET, "bounce.test", "01JD3K7Q2M8ZXH", "bob@example.net");
    expect(parseVerp(SECRET, "bounce.test", a.replace("bob=", "eve="))).toBeUndefined();
    expect(parseVerp(SECRET, "bounce.test", a.replace("01jd3k7q2m8zxh", "01jd3k7q2m8zxj"))).toBeUndefined();
    expect(parseVerp(SECRET, "bounce.test", a.replace("bounce.test", "other.test"))).toBeUndefined();
    expect(parseVerp("another-secret-0123456789", "bounce.test", a)).toBeUndefined();
    expect(parseVerp(SECRET, "bounce.test", "postmaster@bounce.test")).toBeUndefined();
  });

  test("parseDiagnostic reads code, enhanced code and text", () => {
    expect(parseDiagnostic("smtp; 550 5.1.1 <x@y>: no such user")).toEqual({
      code: 550,
      enhanced: "5.1.1",
      text: "<x@y>: no such user",
    });
    expect(parseDiagnostic("X-Exim; mailbox is full")).toEqual({ text: "mailbox is full" });
  });
});
