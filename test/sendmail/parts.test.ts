import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseSendArgs } from "../../src/sendmail/index.ts";
import { BatchJournal } from "../../src/sendmail/index.ts";
import { parseAddressList, prepareMessage, toCrlf } from "../../src/message/index.ts";
import { type ReadContext, type ReadResult, readInputs } from "../../src/sendmail/index.ts";

const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");
const ctx: ReadContext = {
  hostname: "mta.test",
  origin: "mta.test",
  defaultSender: "cron@mta.test",
  maxMessageBytes: 1_000_000,
};

function tmp(): { dir: string } & Disposable {
  const dir = mkdtempSync(join(tmpdir(), "mta-send-"));
  return { dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

describe("sendmail flags", () => {
  test("cron's invocation: -FCronDaemon -i -B8BITMIME -oem root", () => {
    const a = parseSendArgs(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
    expect(a.fullName).toBe("CronDaemon");
    expect(a.ignoreDots).toBe(true);
    expect(a.bodyType).toBe("8BITMIME");
    expect(a.recipients).toEqual(["root"]);
    expect(a.inputs).toEqual([]);
  });

  test("glued and separate values, grouped letters, -oi, -r, -- ends flags", () => {
    const a = parseSendArgs(["-ti", "-fbounce@x.test", "-F", "Web App", "-odb", "--", "-odd@x.test"]);
    expect(a.extractRecipients).toBe(true);
    expect(a.ignoreDots).toBe(true);
    expect(a.sender).toBe("bounce@x.test");
    expect(a.fullName).toBe("Web App");
    expect(a.recipients).toEqual(["-odd@x.test"]);
    expect(parseSendArgs(["-oi", "-r", "<>", "a@x"]).sender).toBe("");
    expect(parseSendArgs(["-oi", "a@x"]).ignoreDots).toBe(true);
  });

  test("long options; operands are files only with --batch, else always recipients", () => {
    const a = parseSendArgs([
      "--batch-id",
      "nightly-1",
      "--max-time=30s",
      "--json",
      "--dry-run",
      "--batch",
      "./mail",
      "b.jsonl",
    ]);
    expect(a.batchId).toBe("nightly-1");
    expect(a.maxTimeMs).toBe(30_000);
    expect(a.json && a.dryRun).toBe(true);
    expect(a.inputs).toEqual(["./mail", "b.jsonl"]);
    expect(a.recipients).toEqual([]);
    // Without --batch, names of files and directories that exist here are still recipients.
    const r = parseSendArgs(["/", "./mail", "b.jsonl", "root", "tmp"]);
    expect(r.recipients).toEqual(["/", "./mail", "b.jsonl", "root", "tmp"]);
    expect(r.inputs).toEqual([]);
    expect(parseSendArgs(["--max-time", "300"]).maxTimeMs).toBe(300_000); // a bare number is seconds
  });

  test("usage errors: unsupported modes, unknown options, recipients mixed with files, bad batch id", () => {
    expect(() => parseSendArgs(["-bs"])).toThrow(/-bs is not supported/);
    expect(() => parseSendArgs(["-q1h"])).toThrow(/not supported/);
    expect(() => parseSendArgs(["--frob"])).toThrow(/unknown option --frob/);
    expect(() => parseSendArgs(["-Z"])).toThrow(/unknown option -Z/);
    expect(() => parseSendArgs(["--batch"])).toThrow(/--batch needs files/);
    expect(() => parseSendArgs(["--batch", "-t", "a.eml"])).toThrow(/-t is for a message on standard input/);
    expect(parseSendArgs(["-F", "Evil\r\nBcc: victim@x.test", "a@x"]).fullName).toBe(
      "Evil Bcc: victim@x.test",
    );
    expect(() => parseSendArgs(["--batch-id", "../etc"])).toThrow(/--batch-id/);
    expect(() => parseSendArgs(["-f"])).toThrow(/-f needs a value/);
  });
});

describe("message preparation", () => {
  test("address lists: display names with commas, comments, groups, angle addresses", () => {
    expect(
      parseAddressList(
        '"Doe, John" <john@x.test>, jane@x.test (Jane), team: a@y.test, <b@y.test>;, c@z.test',
      ),
    ).toEqual(["john@x.test", "jane@x.test", "a@y.test", "b@y.test", "c@z.test"]);
    expect(parseAddressList("undisclosed-recipients:;")).toEqual([]);
  });

  test("-t collects To/Cc/Bcc (folded too) and removes Bcc; missing Date/Message-ID/From are added", () => {
    const raw = Buffer.from(
      "To: a@x.test,\n b@x.test\nCc: C <c@x.test>\nBcc: hidden@y.test,\n\thidden2@y.test\nSubject: s\n\nbody\n",
    );
    const p = prepareMessage(raw, {
      hostname: "mta.test",
      sender: "me@mta.test",
      fullName: "Me Too",
      extractRecipients: true,
      removeBcc: true,
    });
    expect(p.headerRecipients).toEqual([
      "a@x.test",
      "b@x.test",
      "c@x.test",
      "hidden@y.test",
      "hidden2@y.test",
    ]);
    const t = text(p.message);
    expect(t).not.toContain("hidden");
    expect(t).toMatch(
      /^Date: .+\r\nMessage-ID: <[^>]+@mta\.test>\r\nFrom: Me Too <me@mta\.test>\r\nTo: a@x\.test,\r\n b@x\.test\r\n/,
    );
    expect(t.endsWith("\r\n\r\nbody\r\n")).toBe(true);
    expect(p.originalMessageId).toBeUndefined();
  });

  test("a complete message keeps its bytes; 8-bit is detected; a leading From_ line is dropped", () => {
    const full = toCrlf(
      Buffer.from(
        "From: a@x.test\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@x>\n\nh\xe9\n",
        "latin1",
      ),
    );
    const p = prepareMessage(full, {
      hostname: "h",
      sender: "s@h",
      extractRecipients: false,
      removeBcc: true,
    });
    expect(p.message).toBe(full);
    expect(p.eightBit).toBe(true);
    expect(p.originalMessageId).toBe("<1@x>");
    expect(p.fromAddress).toBe("a@x.test");
    const q = prepareMessage(Buffer.from("From someone Mon Jan  1 00:00:00 2024\nSubject: x\n\nb\n"), {
      hostname: "h",
      sender: "s@h",
      extractRecipients: false,
      removeBcc: true,
    });
    expect(text(q.message)).toContain("\r\nSubject: x\r\n\r\nb\r\n");
    expect(text(q.message)).not.toContain("From someone");
  });
});

describe("batch readers", () => {
  const all = (paths: string[], c: ReadContext = ctx): ReadResult[] => [...readInputs(paths, c)];

  test("JSON Lines: a bad line is reported with file:line and skipped; parts and full messages both work", () => {
    using t = tmp();
    const f = join(t.dir, "batch.jsonl");
    writeFileSync(
      f,
      [
        JSON.stringify({ sender: "a@x.test", recipients: ["r1@y.test"], subject: "S", text: "hello" }),
        "{not json",
        "",
        JSON.stringify({ sender: "a@x.test", recipients: [], text: "x" }),
        JSON.stringify({
          sender: "a@x.test",
          recipients: ["r2@y.test"],
          message: "Subject: raw\nMessage-ID: <raw@x>\n\nraw body\n",
        }),
      ].join("\n"),
    );
    const r = all([f]);
    expect(r.map((x) => (x.ok ? "ok" : x.source))).toEqual(["ok", `${f}:2`, `${f}:4`, "ok"]);
    expect(r[1]!.ok ? "" : r[1]!.problem).toContain("malformed JSON");
    expect(r[2]!.ok ? "" : r[2]!.problem).toContain("recipients");
    const last = r[3]!;
    if (!last.ok) throw new Error("expected ok");
    expect(last.item.key).toBe("mid:<raw@x>");
    expect(text(last.item.message)).toContain("From: a@x.test\r\nSubject: raw\r\n");
    const first = r[0]!;
    if (!first.ok) throw new Error("expected ok");
    expect(first.item.key).toBe(`pos:${f}:1`);
  });

  test("mail-merge: one message per recipient with its own values; a missing value rejects the item", () => {
    using t = tmp();
    const f = join(t.dir, "merge.jsonl");
    writeFileSync(
      f,
      `${JSON.stringify({
        sender: "news@x.test",
        recipients: ["ann@y.test", "bob@y.test"],
        subject: "Hello {{name}}",
        text: "Dear {{ name }}, your address is {{email}}.",
        substitutions: { "ann@y.test": { name: "Ann" }, "bob@y.test": { name: "Bob" } },
      })}\n${JSON.stringify({ sender: "n@x.test", recipients: ["c@y.test"], text: "{{nope}}", substitutions: {} })}\n`,
    );
    const r = all([f]);
    expect(r.length).toBe(3);
    const [a, b, bad] = r as [ReadResult, ReadResult, ReadResult];
    if (!a.ok || !b.ok) throw new Error("expected ok");
    expect(a.item.recipients).toEqual(["ann@y.test"]);
    expect(text(a.item.message)).toContain("Subject: Hello Ann");
    expect(text(a.item.message)).toContain("Dear Ann, your address is ann@y.test.");
    expect(text(b.item.message)).toContain("To: bob@y.test");
    expect(a.item.key).not.toBe(b.item.key);
    expect(bad.ok ? "" : bad.problem).toContain("{{nope}}");
  });

  test("mbox: From_ lines split messages, >From is unquoted, the From_ address is the sender", () => {
    using t = tmp();
    const f = join(t.dir, "box.mbox");
    writeFileSync(
      f,
      "From alice@x.test Mon Jan  1 00:00:00 2024\nTo: r@y.test\nSubject: one\n\n>From here\n>>From there\n\nFrom bob@x.test Mon Jan  1 00:00:01 2024\nTo: s@y.test\n\ntwo\n",
    );
    const r = all([f]);
    expect(r.length).toBe(2);
    const [one, two] = r as [ReadResult, ReadResult];
    if (!one.ok || !two.ok) throw new Error("expected ok");
    expect(one.item.sender).toBe("alice@x.test");
    expect(one.item.recipients).toEqual(["r@y.test"]);
    expect(text(one.item.message)).toContain("\r\n\r\nFrom here\r\n>From there\r\n");
    expect(text(one.item.message).endsWith(">From there\r\n")).toBe(true);
    expect(two.item.sender).toBe("bob@x.test");
    expect(two.item.source).toBe(`${f}:8`);
  });

  test("a directory of .eml files in name order; recipients from the header; an .eml without any is reported", () => {
    using t = tmp();
    writeFileSync(join(t.dir, "b.eml"), "To: b@y.test\nFrom: Web <web@x.test>\n\nb\n");
    writeFileSync(join(t.dir, "a.eml"), "To: a@y.test\nBcc: root\n\na\n");
    writeFileSync(join(t.dir, "c.eml"), "Subject: nobody\n\nc\n");
    writeFileSync(join(t.dir, "ignored.txt"), "x");
    const r = all([t.dir]);
    expect(r.length).toBe(3);
    const [a, b, c] = r as [ReadResult, ReadResult, ReadResult];
    if (!a.ok || !b.ok) throw new Error("expected ok");
    expect(a.item.recipients).toEqual(["a@y.test", "root@mta.test"]);
    expect(a.item.sender).toBe("cron@mta.test");
    expect(b.item.sender).toBe("web@x.test");
    expect(c.ok ? "" : c.problem).toContain("no recipient");
  });

  test("a 100,000-line JSONL file is read one item at a time", () => {
    using t = tmp();
    const f = join(t.dir, "big.jsonl");
    const line = JSON.stringify({ sender: "a@x.test", recipients: ["r@y.test"], text: "x".repeat(900) });
    writeFileSync(f, `${line}\n`.repeat(100_000));
    let n = 0;
    const before = process.memoryUsage().rss;
    let peak = before;
    for (const r of readInputs([f], ctx)) {
      if (r.ok) n++;
      if (n % 10_000 === 0) peak = Math.max(peak, process.memoryUsage().rss);
    }
    expect(n).toBe(100_000);
    // ~100 MB of input: reading it must not hold it (a generous bound against holding it all).
    expect(peak - before).toBeLessThan(80 * 1024 * 1024);
  }, 120_000); // about 5 s on a quiet machine; this asserts memory, not speed
});

describe("batch journal", () => {
  test("keys survive reopening; a torn last line is ignored; a second open waits for the lock", async () => {
    using t = tmp();
    const j = await BatchJournal.open(t.dir, "b1", 0);
    await j.add(["k1", "k2"]);
    await expect(BatchJournal.open(t.dir, "b1", 150)).rejects.toThrow(/being sent by another process/);
    await j.close();
    writeFileSync(join(t.dir, "batches", "b1.journal"), "k1\nk2\nk3-torn", { flag: "w" });
    const k = await BatchJournal.open(t.dir, "b1", 0);
    expect(k.has("k1") && k.has("k2")).toBe(true);
    expect(k.has("k3-torn")).toBe(false);
    await k.close();
  });
});
