import { describe, expect, test } from "bun:test";
import {
  BOUNCE_CLASSES,
  type BounceClass,
  builtinRulesSource,
  Classifier,
  KUMO_CLASS_NAMES,
  parseRules,
  RulesError,
} from "../../src/bounce/index.ts";

/** "550 5.1.1 text" → the classifier's input, as the scheduler's events carry it. */
function parse(line: string): { code?: number; enhanced?: string; text: string } {
  const m = /^(\d{3})[ -](?:([245]\.\d{1,3}\.\d{1,3}) )?(.*)$/.exec(line);
  if (!m) return { text: line };
  return { code: Number(m[1]), ...(m[2] ? { enhanced: m[2] } : {}), text: m[3]! };
}

// Typical replies, with the class a bulk sender's tooling expects. Texts are as the providers document
// them (Gmail's "SMTP errors and codes", Microsoft's Exchange Online NDR reference, Yahoo's Sender Hub
// error codes) or as Postfix, Exim and mta itself word them.
const CASES: [string, BounceClass][] = [
  [
    "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking",
    "bad-mailbox",
  ],
  ["550 5.2.1 The email account that you tried to reach is disabled. Learn more at", "inactive-mailbox"],
  [
    "552 5.2.2 The email account that you tried to reach is over quota. Please direct the recipient",
    "quota-issues",
  ],
  ["452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to", "quota-issues"],
  [
    "550 5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce the",
    "spam-related",
  ],
  [
    "421 4.7.0 Our system has detected an unusual rate of unsolicited mail originating from your IP address",
    "spam-related",
  ],
  [
    "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all",
    "policy-related",
  ],
  ["550 5.7.25 The IP address sending this message does not have a PTR record setup", "policy-related"],
  [
    "552 5.7.0 This message was blocked because its content presents a potential security issue.",
    "virus-related",
  ],
  ["550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "bad-mailbox"],
  [
    "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [BN8NAM11FT066.eop-nam11.prod]",
    "bad-mailbox",
  ],
  ["550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", "bad-mailbox"],
  [
    "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
    "quota-issues",
  ],
  [
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
    "spam-related",
  ],
  [
    "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list",
    "spam-related",
  ],
  [
    "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification",
    "policy-related",
  ],
  ["451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)", "policy-related"],
  [
    "554 delivery error: dd This user doesn't have a yahoo.com account (nobody@yahoo.com) [0] - mta1001.mail.bf1.yahoo.com",
    "bad-mailbox",
  ],
  ["552 1 Requested mail action aborted, mailbox not found", "bad-mailbox"],
  [
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
    "spam-related",
  ],
  [
    "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list",
    "spam-related",
  ],
  [
    "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
    "policy-related",
  ],
  [
    "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
    "spam-related",
  ],
  [
    "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in local recipient table",
    "bad-mailbox",
  ],
  ["550 5.1.2 <x@nowhere.invalid>: Recipient address rejected: Domain not found", "bad-domain"],
  [
    "550 5.4.4 Host or domain name not found. Name service error for name=nowhere.invalid type=A",
    "bad-domain",
  ],
  ["451 4.4.4 Host or domain name not found. Name service error (try again)", "routing-errors"],
  ["550 5.1.10 Recipient address has null MX", "bad-domain"],
  ["550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "spam-related"],
  ["554 5.7.1 <x@example.net>: Relay access denied", "relaying-issues"],
  ["550 Unrouteable address", "bad-mailbox"],
  ["550 No Such User Here", "bad-mailbox"],
  ["550 5.0.0 User unknown", "bad-mailbox"],
  ["552 5.3.4 Message size exceeds fixed maximum message size", "content-related"],
  ["554 5.6.0 Message contains invalid header", "content-related"],
  ["550 5.7.1 Message rejected: contains a virus (Eicar-Test-Signature)", "virus-related"],
  ["451 4.7.1 Greylisted, please try again in 300 seconds", "policy-related"],
  ["421 4.4.1 connect 127.0.0.1:25: Failed to connect", "bad-connection"],
  ["421 4.4.1 connect 127.0.0.1:25: timed out", "no-answer-from-host"],
  ["451 4.4.2 timeout: DATA: no reply in 600000 ms", "no-answer-from-host"],
  ["451 4.4.2 connection lost: RCPT: closed", "bad-connection"],
  ["451 4.4.3 DNS: SERVFAIL for example.net", "routing-errors"],
  ["421 4.7.4 TLS required but the server does not offer STARTTLS", "bad-configuration"],
  ["421 4.4.7 message expired after 7200 minutes in the queue", "message-expired"],
  ["550 5.1.7 Invalid sender address syntax", "invalid-sender"],
  ["553 5.1.8 Sender address rejected: Domain not found", "invalid-sender"],
  ["452 4.5.3 Too many recipients", "protocol-errors"],
  ["500 5.5.2 Error: command not recognized", "protocol-errors"],
  ["550 5.7.1 Delivery not authorized, message refused", "policy-related"],
  ["550 5.7.28 Mail flood detected", "spam-related"],
  ["550 5.2.0 mailbox unavailable", "bad-mailbox"],
  ["451 4.3.0 Mail server temporarily rejected message.", "other"],
  ["554 5.0.0 Service unavailable", "other"],
];

describe("the built-in rules", () => {
  const c = Classifier.builtin();
  for (const [line, expected] of CASES) {
    test(`${expected}: ${line.slice(0, 70)}`, () => {
      expect(c.classify(parse(line)).class).toBe(expected);
    });
  }

  test("parse without a problem and name only the 17 classes", () => {
    const { rules, problems } = parseRules(builtinRulesSource(), "(built-in)");
    expect(problems).toEqual([]);
    expect(rules.length).toBeGreaterThan(100);
    for (const r of rules) expect(BOUNCE_CLASSES).toContain(r.class);
  });

  test("every KumoMTA class name maps to one of the 17 classes", () => {
    for (const v of Object.values(KUMO_CLASS_NAMES)) expect(BOUNCE_CLASSES).toContain(v);
  });

  test("a reply without an enhanced code but with one at the start of its text is read by that code", () => {
    expect(c.classify({ code: 550, text: "5.1.1 <x@example.net>... User unknown" }).class).toBe(
      "bad-mailbox",
    );
  });

  test("the matched rule is named by file and line", () => {
    const r = c.classify(parse("550 5.1.1 whatever"));
    expect(r.rule).toMatch(/^\(built-in\):\d+$/);
    const lineNo = Number(r.rule!.split(":")[1]);
    expect(builtinRulesSource().split("\n")[lineNo - 1]).toMatch(/^bad-mailbox\s+status=x\.1\.1/);
  });
});

describe("operator rules", () => {
  test("come before the built-in ones and can override them", () => {
    const c = Classifier.fromFiles([
      { file: "/etc/mta/rules.txt", text: "quota-issues status=5.1.1 text=/full/\n" },
    ]);
    expect(c.classify(parse("550 5.1.1 mailbox full"))).toEqual({
      class: "quota-issues",
      rule: "/etc/mta/rules.txt:1",
    });
    expect(c.classify(parse("550 5.1.1 no such user")).class).toBe("bad-mailbox");
  });

  test("builtin: false keeps only the operator's rules", () => {
    const c = Classifier.fromFiles([{ file: "r", text: "spam-related code=554\n" }], { builtin: false });
    expect(c.classify(parse("554 5.7.1 spam")).class).toBe("spam-related");
    expect(c.classify(parse("550 5.1.1 no such user"))).toEqual({ class: "other" });
  });

  test("KumoMTA's class names are accepted and mapped", () => {
    const c = Classifier.fromFiles(
      [{ file: "r", text: "InvalidRecipient text=/gone away/\nSpamBlock code=5x1\n" }],
      {
        builtin: false,
      },
    );
    expect(c.classify(parse("550 gone away")).class).toBe("bad-mailbox");
    expect(c.classify(parse("571 no")).class).toBe("spam-related");
  });

  test("status patterns: x, * and digits with x in the detail; status=none", () => {
    const c = Classifier.fromFiles(
      [
        {
          file: "r",
          text: [
            "spam-related status=5.7.6xx",
            "quota-issues status=x.2.*",
            "bad-domain status=none kind=permanent",
            "other kind=transient",
          ].join("\n"),
        },
      ],
      { builtin: false },
    );
    expect(c.classify(parse("550 5.7.649 no")).class).toBe("spam-related");
    expect(c.classify(parse("550 5.7.1 no")).class).toBe("other");
    expect(c.classify(parse("452 4.2.9 x")).class).toBe("quota-issues");
    expect(c.classify(parse("550 nope")).class).toBe("bad-domain");
    expect(c.classify(parse("450 nope"))).toEqual({ class: "other", rule: "r:4" });
  });

  test("every problem of a file is reported with its line number, none stops the others", () => {
    const text = [
      "# comment",
      "",
      "bad-mailbox",
      "no-such-class code=550",
      "bad-mailbox code=5555",
      "bad-mailbox status=5.1",
      "bad-mailbox kind=sometimes",
      "bad-mailbox text=/[unclosed/",
      "bad-mailbox text=/ok/g",
      "bad-mailbox colour=red",
      "bad-mailbox text=/x/ code=550",
      "bad-mailbox code=550 junk",
      "bad-mailbox code=550 text=/fine with spaces/i",
    ].join("\n");
    const { rules, problems } = parseRules(text, "rules.txt");
    expect(problems.map((p) => p.line)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(problems[1]!.message).toContain('unknown class "no-such-class"');
    expect(rules).toHaveLength(1);
    expect(rules[0]!.source).toBe("rules.txt:13");
    expect(() => Classifier.fromFiles([{ file: "rules.txt", text }])).toThrow(RulesError);
    try {
      Classifier.fromFiles([{ file: "rules.txt", text }]);
    } catch (err) {
      expect((err as Error).message.split("\n")[0]).toBe(
        'rules.txt:3: class "bad-mailbox" without a condition would match every reply',
      );
    }
  });
});
