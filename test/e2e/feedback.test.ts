import { describe, expect, test } from "bun:test";
import { lacking } from "../support/peers.ts";
import { spawn, spawnSync } from "bun";
import { chmodSync, writeFileSync } from "node:fs";
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

import { startScriptedPeer } from "../support/scriptedPeer.ts";

// Each local part gets the reply a large receiver gives for it (Gmail's, Microsoft's, Yahoo's texts).
const REPLIES: Record<string, [string, string]> = {
  unknown: [
    [
      "550-5.1.1 The email account that you tried to reach does not exist. Please try",
      "550-5.1.1 double-checking the recipient's email address for typos or",
      "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    ].join("\r\n"),
    "bad-mailbox",
  ],
  full: ["552 5.2.2 <full@example.net>: mailbox full", "quota-issues"],
  spam: [
    "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
    "spam-related",
  ],
  disabled: ["550 5.2.1 The email account that you tried to reach is disabled.", "inactive-mailbox"],
  outlook: ["550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", "bad-mailbox"],
  exchange: [
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "bad-mailbox",
  ],
  yahoo: [
    "554 delivery error: dd This user doesn't have a yahoo.com account (yahoo@example.net) [0]",
    "bad-mailbox",
  ],
  dmarc: ["550 5.7.26 This mail has been blocked because the sender is unauthenticated.", "policy-related"],
  tmpfull: [
    "452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to",
    "quota-issues",
  ],
};
const SUPPRESSED = ["unknown", "disabled", "outlook", "exchange", "yahoo"];

async function inject(mta: StartedMta, recipients: string[], sender = "news@shop.test"): Promise<Response> {
  return controlFetch(mta.dir, `/api/v1/inject`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sender, recipients, subject: "offers", text: "hello" }),
  });
}

function swaks(port: number, args: string[]): { code: number; out: string } {
  const r = spawnSync(["swaks", "--server", `127.0.0.1:${port}`, "--helo", "client.test", ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

describe.skipIf(lacking("swaks"))("bounce classes and the suppression list", () => {
  test("each class's typical reply gets its class; invalid recipients are suppressed; a second send is refused without a connection", async () => {
    using dir = tempDir();
    await using peer = await startScriptedPeer({
      rcpt: (to) => REPLIES[to.split("@")[0]!]?.[0] ?? "250 2.1.5 ok",
    });
    const cfg = testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" }, retry: [1h] }`,
    );
    await using mta = await startMta({ dir: dir.path, config: cfg });
    const all = [...Object.keys(REPLIES), "fine"].map((l) => `${l}@example.net`);
    expect((await inject(mta, all)).status).toBe(200);
    const log = await waitUntil("a result for every recipient", () => {
      const l = deliveryLog(dir.path).filter((e) =>
        ["bounce", "transient-failure", "delivery"].includes(String(e.type)),
      );
      return l.length >= all.length ? l : undefined;
    });
    for (const [local, [, cls]] of Object.entries(REPLIES)) {
      const e = log.find((x) => x.recipient === `${local}@example.net`)!;
      expect({ local, type: e.type, class: e.class }).toEqual({
        local,
        type: local === "tmpfull" ? "transient-failure" : "bounce",
        class: cls,
      });
    }
    expect(log.find((x) => x.recipient === "fine@example.net")).toMatchObject({ type: "delivery" });
    expect(log.find((x) => x.recipient === "fine@example.net")!.class).toBeUndefined();

    // The invalid ones (bad-mailbox, inactive-mailbox by default) are on the list; full and spam are not.
    const listed = await waitUntil("the suppression list", () => {
      const r = runMta(["suppress", "list", "--json", "-c", cliConfigFor(mta)]);
      const entries = (JSON.parse(r.stdout) as { entries: { address: string; reason: string }[] }).entries;
      return entries.length >= SUPPRESSED.length ? entries : undefined;
    });
    expect(listed.map((e) => e.address).sort()).toEqual(SUPPRESSED.map((l) => `${l}@example.net`).sort());
    expect(listed.find((e) => e.address === "disabled@example.net")?.reason).toBe("inactive-mailbox");

    // `mta queue show` gives the deferred recipient's class.
    const id = String(log.find((x) => x.recipient === "tmpfull@example.net")!.id);
    const show = runMta(["queue", "show", id, "-c", cliConfigFor(mta)]);
    expect(show.stdout).toMatch(/pending\s+tmpfull@example\.net .*\[quota-issues\]/);

    // Second send: refused at RCPT (suppression.answer: refuse), the peer sees no new connection.
    const sessions = peer.sessions.length;
    const r = swaks(mta.smtpPorts[0]!, ["--from", "news@shop.test", "--to", "unknown@example.net"]);
    expect(r.out).toContain(
      "550 5.7.1 <unknown@example.net>: recipient address is on the suppression list (bad-mailbox)",
    );
    const api = await inject(mta, ["outlook@example.net", "fine@example.net"]);
    const body = (await api.json()) as {
      messages: { ids?: string[]; refused?: { recipient: string; error: string }[] }[];
    };
    expect(body.messages[0]!.refused).toEqual([
      {
        recipient: "outlook@example.net",
        error: "550 5.7.1 <outlook@example.net>: recipient address is on the suppression list (bad-mailbox)",
      },
    ]);
    await waitUntil("fine@ delivered twice", () =>
      deliveryLog(dir.path).filter((e) => e.type === "delivery").length >= 2 ? true : undefined,
    );
    // The peer saw unknown@ and outlook@ once (the first send), fine@ twice (connections may be reused).
    const rcpts = peer.sessions.flatMap((s) => s.commands.filter((c) => /^RCPT/i.test(c)));
    expect(rcpts.filter((c) => c.includes("unknown@") || c.includes("outlook@"))).toHaveLength(2);
    expect(rcpts.filter((c) => c.includes("fine@"))).toHaveLength(2);
    expect(peer.sessions.length).toBeGreaterThanOrEqual(sessions);
    const suppressedEvents = deliveryLog(dir.path).filter((e) => e.type === "suppressed");
    expect(suppressedEvents.map((e) => [e.recipient, e.answer])).toEqual([
      ["unknown@example.net", "refused"],
      ["outlook@example.net", "refused"],
    ]);
    const metrics = await (await controlFetch(mta.dir, `/metrics`)).text();
    expect(metrics).toMatch(/mta_bounce_classified_total\{class="bad-mailbox",event="bounce"\} 4/);
    expect(metrics).toMatch(/mta_suppression_entries 5/);
  }, 60_000);

  test("answer: record accepts the message, logs `suppressed` and never delivers to the address", async () => {
    using dir = tempDir();
    await using peer = await startScriptedPeer({});
    const cfg = testConfig(
      dir.path,
      [
        `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }`,
        "suppression: { answer: record }",
      ].join("\n"),
    );
    await using mta = await startMta({ dir: dir.path, config: cfg });
    expect(
      runMta(["suppress", "add", "gone@example.net", "--reason", "bad-mailbox", "-c", cliConfigFor(mta)])
        .code,
    ).toBe(0);
    const r = swaks(mta.smtpPorts[0]!, ["--from", "news@shop.test", "--to", "gone@example.net"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/);
    const e = await waitUntil("the suppressed event", () =>
      deliveryLog(dir.path).find((x) => x.type === "suppressed"),
    );
    expect(e).toMatchObject({
      recipient: "gone@example.net",
      answer: "recorded",
      reason: "bad-mailbox",
      sender: "news@shop.test",
    });
    await Bun.sleep(500);
    expect(peer.sessions).toHaveLength(0);
    expect(deliveryLog(dir.path).some((x) => x.type === "reception")).toBe(false);
  }, 30_000);

  test("entries scoped to a sender domain refuse only that sender's mail", async () => {
    using dir = tempDir();
    await using peer = await startScriptedPeer({});
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }`),
    });
    expect(
      runMta(["suppress", "add", "bob@example.net", "--scope", "news.shop.test", "-c", cliConfigFor(mta)])
        .code,
    ).toBe(0);
    expect(swaks(mta.smtpPorts[0]!, ["--from", "x@news.shop.test", "--to", "bob@example.net"]).out).toContain(
      "(manual for mail from news.shop.test)",
    );
    expect(swaks(mta.smtpPorts[0]!, ["--from", "x@billing.shop.test", "--to", "bob@example.net"]).code).toBe(
      0,
    );
  }, 30_000);
});

async function sendAsync(args: string[], stdin: string): Promise<{ code: number; stderr: string }> {
  const p = spawn([join(import.meta.dir, "../../dist/mta"), "send", ...args], {
    stdin: Buffer.from(stdin),
    stderr: "pipe",
    stdout: "ignore",
  });
  const stderr = await new Response(p.stderr).text();
  return { code: await p.exited, stderr };
}

describe("mta send and the suppression list", () => {
  test("a suppressed recipient is named on stderr and not sent to, the others are; exit 65: through the daemon and locally", async () => {
    using dir = tempDir();
    await using peer = await startScriptedPeer({});
    const cfg = testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }`);
    const local = join(dir.path, "local.yaml");
    writeFileSync(local, cfg);
    expect(runMta(["suppress", "add", "gone@example.net", "-c", local]).code).toBe(0);
    const message = "Subject: hi\n\nhello\n";
    const check = (r: { code: number; stderr: string }) => {
      expect(r.code).toBe(65);
      expect(r.stderr).toContain(
        "gone@example.net: 550 5.7.1 <gone@example.net>: recipient address is on the suppression list (manual)",
      );
    };
    {
      await using mta = await startMta({ dir: dir.path, config: cfg });
      check(
        runMta(
          ["send", "-c", cliConfigFor(mta), "-f", "app@shop.test", "ok1@example.net", "gone@example.net"],
          { stdin: message },
        ),
      );
      await waitUntil("ok1 delivered", () =>
        deliveryLog(dir.path).some((e) => e.type === "delivery" && e.recipient === "ok1@example.net"),
      );
    }
    // Locally mta send delivers by itself to the peer in this process: run it without blocking the peer.
    check(
      await sendAsync(["-c", local, "-f", "app@shop.test", "ok2@example.net", "gone@example.net"], message),
    );
    const rcpts = peer.sessions.flatMap((s) => s.commands.filter((c) => /^RCPT/i.test(c)));
    expect(rcpts.some((c) => c.includes("ok2@"))).toBe(true);
    expect(rcpts.some((c) => c.includes("gone@"))).toBe(false);
    // Every recipient suppressed: nothing is sent, the same line, exit 65.
    check(await sendAsync(["-c", local, "-f", "app@shop.test", "gone@example.net"], message));
  }, 60_000);
});

describe.skipIf(lacking("setpriv", "root"))("mta suppress", () => {
  test("add, check, list, export, import, remove: through the daemon and on the stopped spool alike", async () => {
    using dir = tempDir();
    const cfg = testConfig(dir.path);
    let file = join(dir.path, "local.yaml");
    writeFileSync(file, cfg);
    const run = (...a: string[]) => runMta(["suppress", ...a, "-c", file]);
    for (const mode of ["local", "daemon"] as const) {
      await using mta = mode === "daemon" ? await startMta({ dir: dir.path, config: cfg }) : undefined;
      if (mta) file = cliConfigFor(mta);
      const c = `${mode}@example.net`;
      expect(run("add", c, "--reason", "complaint", "--expires", "30d")).toMatchObject({
        code: 0,
        stdout: `${c}: added\n`,
      });
      expect(run("add", c, "--reason", "complaint", "--expires", "60d").stdout).toContain("updated");
      const check = run("check", c);
      expect(check.code).toBe(0);
      expect(check.stdout).toMatch(new RegExp(`^${c}: suppressed \\(complaint, global, expires 20\\d\\d-`));
      expect(run("check", "nobody@example.net")).toMatchObject({
        code: 1,
        stdout: "nobody@example.net: not suppressed\n",
      });
      const list = run("list");
      expect(list.stdout).toMatch(/^ADDRESS\s+SCOPE\s+REASON\s+ADDED\s+EXPIRES$/m);
      expect(list.stdout).toContain(c);
      const exported = run("export");
      expect(exported.code).toBe(0);
      expect(exported.stdout.split("\n")[0]).toBe("address,scope,reason,added,expires");
      expect(exported.stdout).toContain(`${c},,complaint,`);
      const csv = join(dir.path, `${mode}.csv`);
      writeFileSync(csv, `address,reason\nA1-${mode}@example.org,bad-mailbox\na2-${mode}@example.org,\n`);
      expect(run("import", csv).stdout).toBe("2 line(s): 2 added, 0 updated, 0 unchanged\n");
      expect(run("remove", c)).toMatchObject({ code: 0, stdout: `${c}: removed\n` });
      expect(run("remove", c).stdout).toBe(`${c}: was not on the list\n`);
    }
    // Both runs' imports are there, whoever wrote them (the daemon is stopped: read from the spool).
    file = join(dir.path, "local.yaml");
    expect(
      run("export")
        .stdout.split("\n")
        .filter((l) => l.includes("@example.org")),
    ).toHaveLength(4);
  }, 60_000);

  test("check-config and serve refuse a rules file that is missing or wrong, naming file and line", async () => {
    using dir = tempDir();
    const rules = join(dir.path, "rules.txt");
    writeFileSync(rules, "bad-mailbox code=550 text=/gone/\nweird-class code=550\n");
    const file = join(dir.path, "mta.yaml");
    writeFileSync(
      file,
      testConfig(dir.path, `bounces: { rules_files: [${rules}, ${join(dir.path, "none.txt")}] }`),
    );
    const r = runMta(["check-config", "-c", file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`bounces.rules_files[0]: ${rules}:2: unknown class "weird-class"`);
    expect(r.stderr).toContain(
      `bounces.rules_files[1]: ${join(dir.path, "none.txt")}: cannot read: no such file or directory`,
    );
    expect(runMta(["serve", "-c", file]).code).toBe(78);
  }, 30_000);

  test("hostile input: bad addresses, bad CSV lines, unreadable files, bad flags, all with one line and the right code", async () => {
    using dir = tempDir();
    const file = join(dir.path, "mta.yaml");
    writeFileSync(file, testConfig(dir.path));
    const run = (...a: string[]) => runMta(["suppress", ...a, "-c", file]);
    expect(run("add", "not-an-address")).toMatchObject({
      code: 65,
      stderr: 'mta: not an address: "not-an-address"\n',
    });
    expect(run("add", "a@example.net", "--reason", "whatever").code).toBe(64);
    expect(run("add", "a@example.net", "--expires", "yesterday").code).toBe(64);
    expect(run("add", "a@example.net", "--scope", "not a domain").code).toBe(64);
    expect(run("add")).toMatchObject({
      code: 64,
      stderr: "mta: suppress add: missing operand ADDRESS (see mta suppress add --help)\n",
    });
    expect(run("add", "a@example.net", "--bogus").code).toBe(64);
    expect(run("add", "a@example.net", "b@example.net").code).toBe(64);
    const bad = join(dir.path, "bad.csv");
    writeFileSync(bad, "ok@example.net\nnot an address\nx@example.net,,weird\n");
    const r = run("import", bad);
    expect(r.code).toBe(65);
    expect(r.stderr.split("\n").filter(Boolean)).toEqual([
      `mta: ${bad}:2: not an address: "not an address"`,
      `mta: ${bad}:3: unknown reason "weird" (expected manual, complaint, bad-mailbox, bad-domain, inactive-mailbox, invalid-sender, quota-issues, no-answer-from-host, bad-connection, routing-errors, message-expired, protocol-errors, content-related, spam-related, virus-related, policy-related, relaying-issues, bad-configuration, other)`,
      `mta: ${bad}: 2 bad lines; nothing imported`,
    ]);
    expect(run("check", "ok@example.net").code).toBe(1);
    expect(run("import", join(dir.path, "missing.csv"))).toMatchObject({
      code: 66,
      stderr: `mta: ${join(dir.path, "missing.csv")}: no such file or directory\n`,
    });
    expect(run("import", dir.path)).toMatchObject({
      code: 66,
      stderr: `mta: ${dir.path}: is a directory (a file was expected)\n`,
    });
    const binary = join(dir.path, "bin.csv");
    writeFileSync(binary, Buffer.from([0xff, 0xfe, 0x41, 0x0a]));
    expect(run("import", binary)).toMatchObject({ code: 65, stderr: `mta: ${binary}: not UTF-8 text\n` });
    const empty = join(dir.path, "empty.csv");
    writeFileSync(empty, "");
    expect(run("import", empty).code).toBe(65);
    // stdin
    const stdin = runMta(["suppress", "import", "-", "-c", file], {
      stdin: "s1@example.net\ns2@example.net\n",
    });
    expect(stdin.stdout).toBe("2 line(s): 2 added, 0 updated, 0 unchanged\n");
    // A user who may read the configuration but not the spool: exit 77, one line, no stack trace.
    chmodSync(dir.path, 0o755);
    chmodSync(file, 0o644);
    const nobody = spawnSync(
      [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        runMtaPath(),
        "suppress",
        "add",
        "z@example.net",
        "-c",
        file,
      ],
      {
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    expect(nobody.exitCode).toBe(77);
    expect(nobody.stderr.toString()).toBe(
      `mta: cannot open the suppression list in ${join(dir.path, "spool", "suppression")}: permission denied\n`,
    );
  }, 60_000);
});

function runMtaPath(): string {
  return join(import.meta.dir, "../../dist/mta");
}
