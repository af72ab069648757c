import { describe, expect, test } from "bun:test";
import { lacking } from "../support/peers.ts";
import { spawnSync } from "bun";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  cliConfigFor,
  deliveryLog,
  runMta,
  type StartedMta,
  startMta,
  tempDir,
  testConfig,
  waitUntil,
  controlFetch,
} from "../support/mta.ts";
import { startPostfix } from "../support/postfix.ts";
import { freePort, startSink } from "../support/sink.ts";

const SECRET = "fixture-secret-0123456789";
const FIXTURES = join(import.meta.dir, "../bounce/fixtures");

function bouncesConfig(dir: string, extra = ""): string {
  return testConfig(
    dir,
    [
      "listen:",
      "  - { address: 127.0.0.1:0 }",
      "  - { address: 127.0.0.2:0, name: bounces, role: bounces }",
      `bounces: { domain: bounce.test, secret: ${SECRET} }`,
      extra,
    ].join("\n"),
  ).replace("listen: [{ address: 127.0.0.1:0 }]\n", "");
}

function swaks(port: number, args: string[], host = "127.0.0.2"): { code: number; out: string } {
  const r = spawnSync(["swaks", "--server", `${host}:${port}`, "--helo", "mx.reporter.test", ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

/** Hands a fixture to the bounces listener as its reporter would: null sender, to `to`. */
function report(mta: StartedMta, file: string, to: string): { code: number; out: string } {
  return swaks(mta.smtpPorts[1]!, ["--from", "", "--to", to, "--data", `@${join(FIXTURES, file)}`]);
}

function suppressed(mta: StartedMta): { address: string; reason: string }[] {
  const r = runMta(["suppress", "list", "--json", "-c", cliConfigFor(mta)]);
  return (JSON.parse(r.stdout) as { entries: { address: string; reason: string }[] }).entries;
}

// A private Postfix instance needs root (its master) and script(1) (postfix reports to a terminal).
describe.skipIf(lacking("swaks", "smtp-sink", "script", "root"))(
  "asynchronous bounces and complaints",
  () => {
    test("Postfix accepts, later bounces to the VERP return path; the bounce comes back, is matched, classed and suppresses", async () => {
      using dir = tempDir();
      await using sink550 = await startSink({
        dir: dir.path,
        args: ["-f", "RCPT", "-B", "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"],
      });
      const postfixPort = freePort();
      await using mta = await startMta({
        dir: dir.path,
        config: bouncesConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${postfixPort}" } }`),
      });
      await using postfix = await startPostfix({
        port: postfixPort,
        relayDomains: ["example.net"],
        transports: {
          "example.net": `smtp:[127.0.0.1]:${sink550.port}`,
          "bounce.test": `smtp:[127.0.0.2]:${mta.smtpPorts[1]}`,
        },
      });
      const res = await controlFetch(mta.dir, `/api/v1/inject`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          sender: "news@shop.test",
          recipients: ["bob@example.net"],
          subject: "offers",
          text: "hi",
        }),
      });
      const id = ((await res.json()) as { messages: { ids: string[] }[] }).messages[0]!.ids[0]!;
      // mta's delivery succeeded (Postfix said 250) ...
      await waitUntil("the delivery to Postfix", () =>
        deliveryLog(dir.path).find((e) => e.type === "delivery"),
      );
      // ... with the return path naming message and recipient ...
      // (Postfix's queue manager logs the envelope sender a moment after its smtpd said 250.)
      await waitUntil("Postfix's log of the return path", () =>
        postfix.maillog().includes(`from=<b-${id.toLowerCase()}-`),
      );
      // ... and Postfix's own bounce came back to the bounces listener.
      const e = await waitUntil(
        "the async-bounce event",
        () => deliveryLog(dir.path).find((x) => x.type === "async-bounce"),
        40_000,
      );
      expect(e).toMatchObject({
        id,
        recipient: "bob@example.net",
        class: "bad-mailbox",
        action: "failed",
        status: "5.1.1",
        kind: "dsn",
        reportingMta: "mx.postfix.test",
      });
      await waitUntil("bob suppressed", () =>
        suppressed(mta).some((x) => x.address === "bob@example.net") ? true : undefined,
      );
    }, 90_000);

    test("DSNs and ARF reports of Postfix, Exim, Exchange, Gmail, qmail, Yahoo and Microsoft are each matched to their recipient", async () => {
      using dir = tempDir();
      await using mta = await startMta({ dir: dir.path, config: bouncesConfig(dir.path) });
      const cases: [string, string, string, string][] = [
        // fixture, envelope recipient at the bounce domain, type, recipient
        [
          "postfix-user-unknown.eml",
          "b-01jd3k7q2m8zxh-6cxxd4zx-bob=unknown.example.net@bounce.test",
          "async-bounce",
          "bob@unknown.example.net",
        ],
        [
          "postfix-mailbox-full.eml",
          "b-01jd3k7q2m8zxj-5yrbrz12@bounce.test",
          "async-bounce",
          "carol@full.example.net",
        ],
        ["exim-dsn.eml", "b-01jd3k7q2m8zy0-5rx9x7z9@bounce.test", "async-bounce", "erin@exim.example"],
        [
          "exim-plain.eml",
          "b-01jd3k7q2m8zy1-v33bntq7-frank=example.net@bounce.test",
          "async-bounce",
          "frank@example.net",
        ],
        [
          "exchange-online-ndr.eml",
          "b-01jd3k7q2m8zy2-a3dd4y37-grace=contoso.example@bounce.test",
          "async-bounce",
          "grace@contoso.example",
        ],
        [
          "gmail-dsn.eml",
          "b-01jd3k7q2m8zy3-8vjq56c3-heidi=gmail.com@bounce.test",
          "async-bounce",
          "heidi@gmail.com",
        ],
        [
          "qmail.eml",
          "b-01jd3k7q2m8zy4-6q19h1mr-ivan=qmail.example@bounce.test",
          "async-bounce",
          "ivan@qmail.example",
        ],
        ["yahoo-arf.eml", "fbl@bounce.test", "complaint", "judy@yahoo.com"],
        ["microsoft-jmrp.eml", "fbl@bounce.test", "complaint", "mallory@outlook.com"],
        ["rfc5965-arf.eml", "fbl@bounce.test", "complaint", "niaj@example.com"],
      ];
      for (const [file, to] of cases) {
        const r = report(mta, file, to);
        expect({ file, code: r.code }).toEqual({ file, code: 0 });
      }
      expect(
        report(mta, "vacation.eml", "b-01jd3k7q2m8zy8-e5bwe3gq-olivia=example.org@bounce.test").code,
      ).toBe(0);
      const events = await waitUntil("every report's event", () => {
        const l = deliveryLog(dir.path).filter((e) => e.type === "async-bounce" || e.type === "complaint");
        return l.length >= cases.length ? l : undefined;
      });
      for (const [file, , type, recipient] of cases) {
        expect({ file, found: events.some((e) => e.type === type && e.recipient === recipient) }).toEqual({
          file,
          found: true,
        });
      }
      expect(events.find((e) => e.recipient === "judy@yahoo.com")).toMatchObject({
        id: "01JD3K7Q2M8ZY5",
        feedbackType: "abuse",
        userAgent: "Yahoo!-Mail-Feedback/2.0",
      });
      expect(events.find((e) => e.recipient === "heidi@gmail.com")).toMatchObject({
        id: "01JD3K7Q2M8ZY3",
        class: "bad-mailbox",
      });
      expect(events.find((e) => e.recipient === "carol@full.example.net")).toMatchObject({
        class: "quota-issues",
      });
      // The vacation reply made no event.
      expect(deliveryLog(dir.path).some((e) => e.recipient === "olivia@example.org")).toBe(false);
      // Suppressed: the bad mailboxes and the complaints; not the full mailbox (quota is not chosen by default).
      const list = await waitUntil("the suppressions", () => {
        const s = suppressed(mta);
        return s.length >= 7 ? s : undefined;
      });
      expect(list.map((x) => x.address).sort()).toEqual(
        [
          "bob@unknown.example.net",
          "frank@example.net",
          "grace@contoso.example",
          "heidi@gmail.com",
          "ivan@qmail.example",
          "judy@yahoo.com",
          "mallory@outlook.com",
          "niaj@example.com",
        ].sort(),
      );
    }, 90_000);

    test("hostile reports: a forged tag, a recipient outside the bounce domain, a forged ARF, garbage: nothing is suppressed", async () => {
      using dir = tempDir();
      await using mta = await startMta({ dir: dir.path, config: bouncesConfig(dir.path) });
      const relay = swaks(mta.smtpPorts[1]!, ["--from", "", "--to", "someone@example.net"]);
      expect(relay.out).toContain(
        "550 5.7.1 <someone@example.net>: this server accepts mail for bounce.test only",
      );
      // The Postfix DSN again, to a return path whose recipient was changed (the tag no longer matches).
      const forged = readFileSync(join(FIXTURES, "postfix-user-unknown.eml"), "utf8").replaceAll(
        "bob=unknown.example.net",
        "victim=example.com",
      );
      writeFileSync(
        join(dir.path, "forged.eml"),
        forged.replaceAll("bob@unknown.example.net", "victim@example.com"),
      );
      expect(
        swaks(mta.smtpPorts[1]!, [
          "--from",
          "",
          "--to",
          "b-01jd3k7q2m8zxh-6cxxd4zx-victim=example.com@bounce.test",
          "--data",
          `@${join(dir.path, "forged.eml")}`,
        ]).code,
      ).toBe(0);
      // An ARF to the FBL address naming a victim without any return path of ours.
      const arf = readFileSync(join(FIXTURES, "rfc5965-arf.eml"), "utf8")
        .replace("b-01jd3k7q2m8zy7-vb90gexd@bounce.test", "someone@elsewhere.test")
        .replace("niaj@example.com", "victim@example.com");
      writeFileSync(join(dir.path, "arf.eml"), arf);
      expect(
        swaks(mta.smtpPorts[1]!, [
          "--from",
          "",
          "--to",
          "fbl@bounce.test",
          "--data",
          `@${join(dir.path, "arf.eml")}`,
        ]).code,
      ).toBe(0);
      writeFileSync(
        join(dir.path, "junk.eml"),
        `Subject: ${"x".repeat(5000)}\r\n\r\n\u00ff\u00fe not a report\r\n`,
      );
      expect(
        swaks(mta.smtpPorts[1]!, [
          "--from",
          "",
          "--to",
          "x@bounce.test",
          "--data",
          `@${join(dir.path, "junk.eml")}`,
        ]).code,
      ).toBe(0);
      await Bun.sleep(500);
      expect(
        deliveryLog(dir.path).filter((e) => e.type === "async-bounce" || e.type === "complaint"),
      ).toEqual([]);
      expect(suppressed(mta)).toEqual([]);
      const metrics = await (await controlFetch(mta.dir, `/metrics`)).text();
      expect(metrics).toMatch(/mta_bounce_inbound_total\{kind="dsn",result="unmatched"\} 1/);
      expect(metrics).toMatch(/mta_bounce_inbound_total\{kind="arf",result="unmatched"\} 1/);
    }, 60_000);

    test("with a bounce domain, each recipient gets its own transaction and return path", async () => {
      using dir = tempDir();
      await using sink = await startSink({ dir: dir.path });
      await using mta = await startMta({
        dir: dir.path,
        config: bouncesConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" } }`),
      });
      const r = swaks(
        mta.smtpPorts[0]!,
        ["--from", "news@shop.test", "--to", "a@example.net,b@example.net"],
        "127.0.0.1",
      );
      expect(r.code).toBe(0);
      const dumps = await sink.waitFor(2, 20_000);
      const froms = dumps.map((d) => /^X-Mail-Args: <([^>]*)>/m.exec(d)?.[1] ?? "");
      const ids = deliveryLog(dir.path)
        .filter((e) => e.type === "reception")
        .map((e) => String(e.id).toLowerCase());
      expect(ids).toHaveLength(2);
      expect(froms.sort()).toEqual([
        expect.stringMatching(/^b-[0-9a-z]{14}-[0-9a-z]{8}-a=example\.net@bounce\.test$/),
        expect.stringMatching(/^b-[0-9a-z]{14}-[0-9a-z]{8}-b=example\.net@bounce\.test$/),
      ]);
      // Each return path names its own message.
      expect(froms.map((f) => f.slice(2, 16)).sort()).toEqual(ids.sort());
    }, 60_000);
  },
);
