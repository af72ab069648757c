import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Daemon } from "../../src/app/index.ts";
import { parseSendArgs, runSend, type SendIo, send } from "../../src/sendmail/index.ts";
import { type Config, loadConfig } from "../../src/config/index.ts";
import { loginName } from "../../src/lib/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import { Spool } from "../../src/spool/index.ts";
import { freePort, startSink } from "../support/sink.ts";
import { lacking } from "../support/peers.ts";

function tmp(): { dir: string } & Disposable {
  const dir = mkdtempSync(join(tmpdir(), "mta-send-"));
  return { dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

function writeConfig(dir: string, sinkPort: number, listen = "[]"): string {
  const file = join(dir, "mta.yaml");
  writeFileSync(
    file,
    [
      "hostname: mta.test",
      `spool: { dir: ${join(dir, "spool")} }`,
      `listen: ${listen}`,
      `control: { address: 127.0.0.1:${freePort()} }`,
      'dns: { servers: ["127.0.0.1:9"] }',
      `delivery: { routes: { y.test: "127.0.0.1:${sinkPort}", mta.test: "127.0.0.1:${sinkPort}" } }`,
      `log: { level: error, format: json, deliveries: ${join(dir, "deliveries.jsonl")} }`,
    ].join("\n"),
  );
  return file;
}

function io(stdin = ""): SendIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    stdin: (async function* () {
      yield Buffer.from(stdin);
    })(),
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s), isTTY: false },
    env: { USER: "tester" },
  };
}

function jsonl(file: string, n: number, from = 0): void {
  const lines: string[] = [];
  for (let i = from; i < from + n; i++)
    lines.push(
      JSON.stringify({
        sender: "app@x.test",
        recipients: [`r${i}@y.test`],
        subject: `m${i}`,
        text: `body ${i}`,
      }),
    );
  writeFileSync(file, `${lines.join("\n")}\n`);
}

const subjects = (dumps: string[]) => dumps.map((d) => /^Subject: (.*)$/m.exec(d)?.[1]?.trim() ?? "?");

describe.skipIf(lacking("smtp-sink"))("mta send without a daemon (local engine)", () => {
  test("a message on stdin is enqueued and delivered; exit 0 and silent; Date/Message-ID/From added", async () => {
    using t = tmp();
    await using sink = await startSink({ dir: t.dir });
    const cfg = writeConfig(t.dir, sink.port);
    const o = io("Subject: cron output\n\nline 1\n.\nnot sent\n");
    const code = await runSend(["-c", cfg, "-FCronDaemon", "-B8BITMIME", "-oem", "root"], o);
    expect(code).toBe(0);
    expect(o.err.join("")).toBe("");
    const [dump] = await sink.waitFor(1);
    // The sender is the login name of this process's uid (not $USER, which io() sets to "tester").
    const login = loginName()!;
    expect(dump).toContain(`X-Mail-Args: <${login}@mta.test> BODY=8BITMIME`);
    expect(dump).toContain("X-Rcpt-Args: <root@mta.test>");
    expect(dump).toContain(`From: CronDaemon <${login}@mta.test>`);
    expect(dump).toMatch(/^Message-ID: <.+@mta\.test>$/m);
    expect(dump).toContain("line 1");
    expect(dump).not.toContain("not sent"); // without -i a lone dot ends the message
  });

  test("a batch with a bad line: the rest is delivered, the bad one reported with file:line, exit 65", async () => {
    using t = tmp();
    await using sink = await startSink({ dir: t.dir });
    const cfg = writeConfig(t.dir, sink.port);
    const f = join(t.dir, "b.jsonl");
    jsonl(f, 5);
    writeFileSync(f, `${readFileSync(f, "utf8")}{"sender":"a@x.test"}\n`);
    const o = io();
    const code = await runSend(["-c", cfg, "--json", "--batch", f], o);
    expect(code).toBe(65);
    expect(o.err.join("")).toContain(`${f}:6: missing "recipients"`);
    const summary = JSON.parse(o.out.join(""));
    expect(summary).toMatchObject({ mode: "local", accepted: 5, invalid: 1, delivered: 5, deferred: 0 });
    expect((await sink.waitFor(5)).length).toBe(5);
  });

  test("--batch-id: a re-run sends nothing twice, and sends only what is new", async () => {
    using t = tmp();
    await using sink = await startSink({ dir: t.dir });
    const cfg = writeConfig(t.dir, sink.port);
    const f = join(t.dir, "b.jsonl");
    jsonl(f, 50);
    expect(await runSend(["-c", cfg, "--batch-id", "nightly", "--batch", f], io())).toBe(0);
    await sink.waitFor(50);
    const o = io();
    expect(await runSend(["-c", cfg, "--batch-id", "nightly", "--json", "--batch", f], o)).toBe(0);
    expect(JSON.parse(o.out.join(""))).toMatchObject({ accepted: 0, skipped: 50 });
    jsonl(f, 60); // the file grew: lines 51-60 are new
    const o2 = io();
    expect(await runSend(["-c", cfg, "--batch-id", "nightly", "--json", "--batch", f], o2)).toBe(0);
    expect(JSON.parse(o2.out.join(""))).toMatchObject({ accepted: 10, skipped: 50 });
    await Bun.sleep(300);
    const got = subjects(await sink.waitFor(60));
    expect(got.length).toBe(60);
    expect(new Set(got).size).toBe(60);
  });

  test("an unreachable destination: the message stays deferred in the spool, exit 75", async () => {
    using t = tmp();
    const cfg = writeConfig(t.dir, freePort()); // nothing listens there
    const o = io("To: a@y.test\n\nx\n");
    const code = await runSend(["-c", cfg, "-t", "--json", "--max-time", "20s"], o);
    expect(code).toBe(75);
    expect(JSON.parse(o.out.join(""))).toMatchObject({ accepted: 1, delivered: 0, deferred: 1 });
    const spool = await Spool.open({ dir: join(t.dir, "spool"), log: silentLogger() });
    expect(spool.messageCount).toBe(1);
    await spool.close();
  });

  test("a spool held by another process and no daemon: waits --lock-wait, then exit 69 with nothing half-sent", async () => {
    using t = tmp();
    const cfg = writeConfig(t.dir, freePort());
    const holder = await Spool.open({ dir: join(t.dir, "spool"), log: silentLogger() });
    try {
      const o = io("To: a@y.test\n\nx\n");
      const code = await runSend(["-c", cfg, "-t", "--lock-wait", "300ms"], o).catch((e) => e);
      expect(code).toBeInstanceOf(Error);
      expect((code as { code: string }).code).toBe("unavailable");
      expect(String((code as Error).message)).toContain("locked");
      expect(holder.messageCount).toBe(0);
    } finally {
      await holder.close();
    }
  });

  test("-t with no recipient in the header is bad input (65); no recipients at all is a usage error", async () => {
    using t = tmp();
    const cfg = writeConfig(t.dir, freePort());
    const o = io("Subject: nobody\n\nx\n");
    expect(await runSend(["-c", cfg, "-t", "--lock-wait", "0"], o)).toBe(65);
    expect(o.err.join("")).toContain("stdin: no recipient in To, Cc or Bcc");
    await expect(runSend(["-c", cfg], io("x"))).rejects.toThrow(/no recipients/);
  });
});

describe.skipIf(lacking("smtp-sink"))("mta send with a daemon", () => {
  test("injects through the control API, returns after the daemon made it durable; --batch-id re-run skips", async () => {
    using t = tmp();
    await using sink = await startSink({ dir: t.dir });
    // A listener sets the inject API's size limit (the largest listener's max_message_size).
    const cfg = writeConfig(t.dir, sink.port, "[{ address: 127.0.0.1:0 }]");
    const config: Config = loadConfig(cfg).config;
    const daemon = await Daemon.start(config, { log: silentLogger() });
    try {
      const f = join(t.dir, "b.jsonl");
      jsonl(f, 250);
      const o = io();
      const args = parseSendArgs(["--batch-id", "d1", "--batch", f]);
      const s = await send(args, config, o);
      expect(s).toMatchObject({ mode: "daemon", accepted: 250, exitCode: 0 });
      // The daemon holds the spool: the journal sits next to it, written by the client.
      const journal = readFileSync(join(t.dir, "spool", "batches", "d1.journal"), "utf8");
      expect(journal.trim().split("\n").length).toBe(250);
      const again = await send(args, config, io());
      expect(again).toMatchObject({ mode: "daemon", accepted: 0, skipped: 250 });
      const got = subjects(await sink.waitFor(250, 20_000));
      expect(new Set(got).size).toBe(250);
      await Bun.sleep(200);
      expect(sink.dumps().length).toBe(250);
    } finally {
      await daemon.stop(500);
    }
  });
});
