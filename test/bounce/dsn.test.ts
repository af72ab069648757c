import { describe, expect, test } from "bun:test";
import path from "node:path";
import {
  buildDsn,
  type DsnInput,
  diagnosticFromReply,
  statusFromReply,
  wantsDsn,
} from "../../src/bounce/index.ts";

const T_ARRIVAL_MS = Date.UTC(2024, 0, 15, 10, 0, 0);
const T_NOW_MS = T_ARRIVAL_MS + 3_600_000;

interface Parsed {
  defects: string[];
  from: string;
  to: string;
  subject: string;
  date: string;
  auto_submitted: string;
  content_type: string;
  report_type: string;
  parts: string[];
  status_groups: Record<string, string>[];
  returned: { subject?: string; body?: string; headers?: string } | null;
  human: string;
  max_line: number;
  bare_lf: boolean;
}

/** Parses the DSN with Python's email package in a child process. */
function pyParse(dsn: Uint8Array): Parsed {
  const proc = Bun.spawnSync(["python3", path.join(import.meta.dir, "_pyparse.py")], { stdin: dsn });
  if (proc.exitCode !== 0) throw new Error(`python3 failed: ${proc.stderr.toString()}`);
  return JSON.parse(proc.stdout.toString()) as Parsed;
}

const ORIGINAL = new TextEncoder().encode(
  "From: app@shop.example\r\nTo: nobody@remote.example\r\nSubject: Your order\r\nMessage-ID: <o1@shop.example>\r\n\r\nThanks for your order.\r\n",
);

function input(over: Partial<DsnInput> = {}): DsnInput {
  return {
    reportingMta: "mta.example.test",
    originalMessageId: "01JD3K7Q2M8ZXH",
    arrivalMs: T_ARRIVAL_MS,
    nowMs: T_NOW_MS,
    sender: "app@shop.example",
    recipients: [
      {
        address: "nobody@remote.example",
        orcpt: "rfc822;Nobody@Remote.example",
        action: "failed",
        status: "5.1.1",
        diagnostic: "smtp; 550 5.1.1 No such user",
        remoteMta: "dns; mx.remote.example",
        lastAttemptMs: T_NOW_MS - 1000,
      },
    ],
    original: ORIGINAL,
    ...over,
  };
}

describe("buildDsn, read back by Python's email parser", () => {
  test("a failure is multipart/report with per-recipient delivery-status fields and the full original", () => {
    const p = pyParse(buildDsn(input({ envId: "ENV-42" })));
    expect(p.defects).toEqual([]);
    expect(p.from).toBe("Mail Delivery System <MAILER-DAEMON@mta.example.test>");
    expect(p.to).toBe("<app@shop.example>");
    expect(p.subject).toBe("Undelivered Mail Returned to Sender");
    expect(p.date).toBe("Mon, 15 Jan 2024 11:00:00 +0000");
    expect(p.auto_submitted).toBe("auto-replied");
    expect(p.content_type).toBe("multipart/report");
    expect(p.report_type).toBe("delivery-status");
    expect(p.parts).toEqual(["text/plain", "message/delivery-status", "message/rfc822"]);
    expect(p.status_groups[0]).toMatchObject({
      "Reporting-MTA": "dns; mta.example.test",
      "Original-Envelope-Id": "ENV-42",
      "Arrival-Date": "Mon, 15 Jan 2024 10:00:00 +0000",
    });
    expect(p.status_groups[1]).toEqual({
      "Original-Recipient": "rfc822;Nobody@Remote.example",
      "Final-Recipient": "rfc822; nobody@remote.example",
      Action: "failed",
      Status: "5.1.1",
      "Remote-MTA": "dns; mx.remote.example",
      "Diagnostic-Code": "smtp; 550 5.1.1 No such user",
      "Last-Attempt-Date": "Mon, 15 Jan 2024 10:59:59 +0000",
    });
    expect(p.returned).toEqual({ subject: "Your order", body: "Thanks for your order.\r\n" });
    expect(p.human).toContain("<nobody@remote.example>: 550 5.1.1 No such user");
    expect(p.bare_lf).toBe(false);
  });

  test("RET=HDRS returns only the original header as text/rfc822-headers", () => {
    const p = pyParse(buildDsn(input({ ret: "HDRS" })));
    expect(p.parts).toEqual(["text/plain", "message/delivery-status", "text/rfc822-headers"]);
    expect(p.returned?.headers).toContain("Subject: Your order\r\n");
    expect(p.returned?.headers).not.toContain("Thanks for your order");
  });

  test("an original over maxOriginalBytes is returned as its header only", () => {
    const big = new TextEncoder().encode(`Subject: big\r\n\r\n${"x".repeat(100)}\r\n`);
    expect(pyParse(buildDsn(input({ original: big, maxOriginalBytes: 50 }))).parts[2]).toBe(
      "text/rfc822-headers",
    );
    expect(pyParse(buildDsn(input({ original: big }))).parts[2]).toBe("message/rfc822");
  });

  test("an 8-bit original is returned byte for byte and the DSN says 8bit", () => {
    const original = Buffer.from(
      "From: a@b.example\r\nSubject: caf\u00e9\r\n\r\nGr\u00fc\u00dfe \u00e0 tous\r\n",
      "utf8",
    );
    const dsn = buildDsn(input({ original }));
    expect(Buffer.from(dsn).includes(original)).toBe(true);
    expect(Buffer.from(dsn).toString("latin1")).toContain("Content-Transfer-Encoding: 8bit");
    const p = pyParse(dsn);
    expect(p.defects).toEqual([]);
    expect(p.returned?.body).toBe("Gr\u00fc\u00dfe \u00e0 tous\r\n");
  });

  test("long diagnostics are folded: no line over 78 where spaces allow, none over 998 at all", () => {
    const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ");
    const unbroken = "z".repeat(2500);
    const dsn = buildDsn(
      input({
        recipients: [
          {
            address: "a@remote.example",
            action: "failed",
            status: "5.7.1",
            diagnostic: `smtp; 550 5.7.1 ${words}`,
          },
          {
            address: "b@remote.example",
            action: "failed",
            status: "5.0.0",
            diagnostic: `smtp; 550 ${unbroken}`,
          },
        ],
      }),
    );
    const p = pyParse(dsn);
    expect(p.max_line).toBeLessThanOrEqual(998);
    const text = Buffer.from(dsn).toString("latin1");
    const longLines = text.split("\r\n").filter((l) => l.length > 78);
    // Only the unbreakable token's pieces may pass 78 columns.
    expect(longLines.every((l) => /^ ?z+$/.test(l))).toBe(true);
    expect(p.status_groups[1]?.["Diagnostic-Code"]).toBe(`smtp; 550 5.7.1 ${words}`);
    expect(p.status_groups[2]?.["Diagnostic-Code"]?.replaceAll(" ", "")).toBe(`smtp;550${unbroken}`);
  });

  test("CR/LF in peer text cannot inject fields", () => {
    const p = pyParse(
      buildDsn(
        input({
          recipients: [
            {
              address: "a@remote.example",
              action: "failed",
              status: "5.0.0",
              diagnostic: "smtp; 550 bad\r\nBcc: victim@example.com\r\n\r\nX: y",
            },
          ],
        }),
      ),
    );
    expect(p.status_groups).toHaveLength(2);
    expect(p.status_groups[1]?.Bcc).toBeUndefined();
    expect(p.status_groups[1]?.["Diagnostic-Code"]).toBe("smtp; 550 bad Bcc: victim@example.com X: y");
  });

  test("a delay notice names the retry horizon; several recipients give several groups", () => {
    const until = T_NOW_MS + 4 * 86_400_000;
    const p = pyParse(
      buildDsn(
        input({
          recipients: [
            { address: "a@r.example", action: "delayed", status: "4.4.1", willRetryUntilMs: until },
            {
              address: "b@r.example",
              action: "delayed",
              status: "4.2.2",
              diagnostic: "smtp; 452 4.2.2 Mailbox full",
            },
          ],
        }),
      ),
    );
    expect(p.subject).toBe("Delayed Mail (still being retried)");
    expect(p.status_groups.map((g) => g.Action)).toEqual([undefined, "delayed", "delayed"]);
    expect(p.status_groups[1]?.["Will-Retry-Until"]).toBe("Fri, 19 Jan 2024 11:00:00 +0000");
    expect(p.human).toContain("will retry until");
  });

  test("a DSN to the null sender is refused", () => {
    expect(() => buildDsn(input({ sender: "" }))).toThrow("null sender");
    expect(() => buildDsn(input({ sender: "<>" }))).toThrow("null sender");
  });
});

describe("wantsDsn (RFC 3461 NOTIFY)", () => {
  test("without NOTIFY: failures and delays, not successes", () => {
    expect(wantsDsn(undefined, "failed")).toBe(true);
    expect(wantsDsn(undefined, "delayed")).toBe(true);
    expect(wantsDsn(undefined, "delivered")).toBe(false);
  });
  test("NEVER suppresses everything; listed keywords are honoured case-insensitively", () => {
    for (const a of ["failed", "delayed", "delivered"] as const) expect(wantsDsn(["NEVER"], a)).toBe(false);
    expect(wantsDsn(["success"], "delivered")).toBe(true);
    expect(wantsDsn(["SUCCESS"], "failed")).toBe(false);
    expect(wantsDsn(["FAILURE"], "delayed")).toBe(false);
    expect(wantsDsn(["FAILURE", "DELAY"], "delayed")).toBe(true);
  });
  test("the null sender never gets one", () => {
    expect(wantsDsn(undefined, "failed", "")).toBe(false);
    expect(wantsDsn(["FAILURE"], "failed", "<>")).toBe(false);
    expect(wantsDsn(["FAILURE"], "failed", "a@b.example")).toBe(true);
  });
});

describe("statusFromReply", () => {
  test("the reply's enhanced code, with the class set by the outcome", () => {
    expect(statusFromReply({ code: 550, enhanced: "5.1.1", lines: ["No such user"] }, "permanent")).toBe(
      "5.1.1",
    );
    expect(statusFromReply({ code: 450, enhanced: "4.2.0", lines: ["Busy"] }, "transient")).toBe("4.2.0");
    // A 5xx we chose to retry is reported as transient.
    expect(statusFromReply({ code: 550, enhanced: "5.7.1", lines: ["Try later"] }, "transient")).toBe(
      "4.7.1",
    );
  });
  test("an enhanced code at the start of the text is used when the field is absent", () => {
    expect(statusFromReply({ code: 552, lines: ["5.2.2 Mailbox full"] }, "permanent")).toBe("5.2.2");
  });
  test("derived from the basic code when there is none; X.4.0 when there was no reply", () => {
    expect(statusFromReply({ code: 554, lines: ["Go away"] }, "permanent")).toBe("5.0.0");
    expect(statusFromReply({ code: 421, lines: ["Closing"] }, "transient")).toBe("4.0.0");
    expect(statusFromReply(undefined, "transient")).toBe("4.4.0");
    expect(statusFromReply({ code: 550, enhanced: "garbage", lines: [] }, "permanent")).toBe("5.0.0");
  });
  test("diagnosticFromReply writes the smtp; form", () => {
    expect(diagnosticFromReply({ code: 550, enhanced: "5.1.1", lines: ["No such", "user"] })).toBe(
      "smtp; 550 5.1.1 No such user",
    );
    expect(diagnosticFromReply({ code: 550, enhanced: "5.1.1", lines: ["5.1.1 No such user"] })).toBe(
      "smtp; 550 5.1.1 No such user",
    );
  });
});

describe("internationalized and binary originals", () => {
  test("a UTF-8 sender or recipient gives an RFC 6533 DSN: UTF-8 addresses, global-delivery-status, message/global", () => {
    const dsn = buildDsn(
      input({
        sender: "jürgen@shop.example",
        recipients: [{ address: "用户@remote.example", action: "failed", status: "5.1.1" }],
      }),
    );
    const text = new TextDecoder().decode(dsn);
    expect(text).toContain("To: <jürgen@shop.example>");
    expect(text).toContain("report-type=global-delivery-status");
    expect(text).toContain("Content-Type: message/global-delivery-status");
    expect(text).toContain("Final-Recipient: utf-8; 用户@remote.example");
    expect(text).toContain("Content-Type: message/global\r\n");
    expect(text).toContain("<用户@remote.example>: status 5.1.1");
    const p = pyParse(dsn);
    expect(p.report_type).toBe("global-delivery-status");
    expect(p.parts).toEqual(["text/plain", "message/global-delivery-status", "message/global"]);
  });

  test("an original with NUL or bare CR/LF (BINARYMIME) is returned as its header only", () => {
    const original = new Uint8Array(Buffer.from("Subject: bin\r\n\r\n\x00\x01\r\x02\n", "latin1"));
    const p = pyParse(buildDsn(input({ original })));
    expect(p.parts.at(-1)).toBe("text/rfc822-headers");
    expect(p.returned?.headers).toContain("Subject: bin");
  });
});
