/**
 * `sendmail` (the compiled binary through a symlink) as its callers run it: cron's exact invocation as
 * root and as an unprivileged user, with and without a daemon; mutt/msmtp-style flags; Python's
 * subprocess; recipients that look like paths; header injection through -F; 8-bit ISO-8859-1 mail
 * through the daemon; 100 messages of 3 MB through the daemon; unreadable batch items. Postfix's
 * smtp-sink is the receiving MX; what it dumps is what arrived.
 */
import { describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "bun";
import {
  chmodSync,
  chownSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import {
  asNobody,
  deliveryLog,
  MTA,
  STACK_FRAME,
  type StartedMta,
  sendConfig,
  startMta,
  tempDir,
} from "../support/mta.ts";
import { lacking, peer } from "../support/peers.ts";
import { freePort, type Sink, startSink } from "../support/sink.ts";

const NOBODY = 65534;
/** Cron's mail: its exact flags and header (cron(8) on Debian, Vixie cron's do_command.c). */
const CRON_ARGS = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem"];
const cronMail = (user: string) =>
  Buffer.from(
    `From: ${user} (Cron Daemon)\nTo: ${user}\nSubject: Cron <${user}@host> /usr/local/bin/backup\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\nr\xc3\xa9sultat: ok\n.\nstill here\n`,
    "latin1",
  );

interface Setup {
  dir: string;
  config: string;
  sendmail: string;
  controlPort: number;
  env: Record<string, string>;
}

/**
 * A configuration whose hostname (so the default origin) is mta.test, routed to the sink, with a fixed
 * control port (so that `sendmail` finds a daemon there when one runs). Readable by nobody; with
 * `nobodyOwnsSpool`, the spool and log belong to nobody (a user's own mta set-up).
 */
function setup(
  dir: string,
  sinkPort: number,
  opts: { nobodyOwnsSpool?: boolean; extra?: string } = {},
): Setup {
  const controlPort = freePort();
  const config = join(dir, "mta.yaml");
  writeFileSync(
    config,
    sendConfig(dir, {
      routes: { "mta.test": sinkPort, "example.test": sinkPort, "y.test": sinkPort },
      controlPort,
      deliveries: join(dir, "log", "deliveries.jsonl"),
      ...(opts.extra !== undefined ? { extra: opts.extra } : {}),
    }),
  );
  chmodSync(config, 0o644);
  if (opts.nobodyOwnsSpool) {
    for (const d of ["spool", "log"]) {
      mkdirSync(join(dir, d), { recursive: true });
      chownSync(join(dir, d), NOBODY, NOBODY);
    }
  }
  const bin = join(dir, "bin");
  mkdirSync(bin, { recursive: true });
  chmodSync(bin, 0o755);
  symlinkSync(MTA, join(bin, "sendmail"));
  return {
    dir,
    config,
    sendmail: join(bin, "sendmail"),
    controlPort,
    // USER is set to someone else on purpose: the sender comes from the passwd entry of the uid.
    env: {
      ...(process.env as Record<string, string>),
      MTA_CONFIG: config,
      USER: "mallory",
      LOGNAME: "mallory",
    },
  };
}

function sendmail(
  s: Setup,
  args: string[],
  stdin: Uint8Array | string,
  opts: { nobody?: boolean; cwd?: string } = {},
): { code: number; stdout: string; stderr: string } {
  const cmd = opts.nobody ? asNobody([s.sendmail, ...args]) : [s.sendmail, ...args];
  const r = spawnSync(cmd, {
    env: s.env,
    cwd: opts.cwd ?? s.dir,
    stdin: Buffer.from(stdin as string),
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A daemon on the set-up's configuration (its control port is fixed, its listeners none). */
function daemon(s: Setup): Promise<StartedMta> {
  return startMta({ dir: s.dir, config: readFileSync(s.config, "utf8") });
}

/** What smtp-sink received, with the envelope lines it adds (X-Mail-Args, X-Rcpt-Args). */
async function arrived(sink: Sink, n = 1): Promise<string[]> {
  return sink.waitFor(n, 20_000);
}

function expectCronMail(dump: string, user: string): void {
  expect(dump).toContain(`X-Mail-Args: <${user}@mta.test> BODY=8BITMIME`);
  expect(dump).toContain(`X-Rcpt-Args: <${user}@mta.test>`);
  expect(dump).toMatch(new RegExp(`^From: ${user}@mta\\.test \\(Cron Daemon\\)$`, "m"));
  expect(dump).toMatch(new RegExp(`^To: ${user}@mta\\.test$`, "m"));
  expect(dump).toContain("r\xc3\xa9sultat: ok\n.\nstill here"); // -i: the lone dot is data; 8 bits kept
}

describe.skipIf(lacking("smtp-sink", "setpriv", "root"))(
  "cron's exact invocation: sendmail -FCronDaemon -i -B8BITMIME -oem USER",
  () => {
    test("as root, no daemon: delivered with qualified addresses, silent, exit 0", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port);
      const r = sendmail(s, [...CRON_ARGS, "root"], cronMail("root"));
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expectCronMail((await arrived(sink))[0]!, "root");
    });

    test("as root, with a daemon: handed over through the inject API, delivered the same", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port);
      await using _mta = await daemon(s);
      const r = sendmail(s, [...CRON_ARGS, "root"], cronMail("root"));
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expectCronMail((await arrived(sink))[0]!, "root");
      // The daemon received it (its delivery log), from mta send (the attribute it passes).
      const reception = () => deliveryLog(join(dir.path, "log")).filter((e) => e.type === "reception");
      for (let i = 0; i < 100 && reception().length === 0; i++) await Bun.sleep(50); // written within 200 ms
      expect(reception()).toHaveLength(1);
      expect(reception()[0]!.listener).toBe("send");
    });

    test("as nobody, with a daemon: the sender is nobody@mta.test from the passwd entry, not $USER", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port);
      await using _mta = await daemon(s);
      const r = sendmail(s, [...CRON_ARGS, "nobody"], cronMail("nobody"), { nobody: true });
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expectCronMail((await arrived(sink))[0]!, "nobody");
    });

    test("as nobody, no daemon, on a spool nobody owns: delivered by sendmail itself", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port, { nobodyOwnsSpool: true });
      const r = sendmail(s, [...CRON_ARGS, "nobody"], cronMail("nobody"), { nobody: true });
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expectCronMail((await arrived(sink))[0]!, "nobody");
    });

    test("as nobody, no daemon, on root's spool: one line naming spool.dir, exit 77, never a silent 0", () => {
      using dir = tempDir("mta-cron-", { open: true });
      const s = setup(dir.path, freePort());
      mkdirSync(join(dir.path, "spool"), { mode: 0o755 });
      const r = sendmail(s, [...CRON_ARGS, "nobody"], cronMail("nobody"), { nobody: true });
      expect(r.code).toBe(77);
      expect(r.stdout).toBe("");
      const spool = join(dir.path, "spool");
      expect(r.stderr).toBe(`mta: spool.dir ${spool}: ${spool}/segments: permission denied\n`);
    });

    test("cd / && sendmail -i root: root is a recipient, never the directory /root", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port);
      const r = sendmail(s, ["-i", "root"], "Subject: from /\n\nhi\n", { cwd: "/" });
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      const [d] = await arrived(sink);
      expect(d).toContain("X-Rcpt-Args: <root@mta.test>");
      expect(d).toContain("Subject: from /");
    });

    test("a recipient named like a file here is a recipient too, with a note that --batch sends files", async () => {
      using dir = tempDir("mta-cron-", { open: true });
      await using sink = await startSink({ dir: dir.path });
      const s = setup(dir.path, sink.port);
      writeFileSync(join(dir.path, "report.eml"), "Subject: file\n\nx\n");
      const r = sendmail(s, ["-i", "report.eml"], "Subject: stdin\n\nhi\n");
      expect(r.code).toBe(0);
      expect(r.stderr).toBe(
        'mta send: note: "report.eml" is a recipient (report.eml@mta.test); to send the file, use mta send --batch report.eml\n',
      );
      const [d] = await arrived(sink);
      expect(d).toContain("X-Rcpt-Args: <report.eml@mta.test>");
      expect(d).toContain("Subject: stdin");
    });
  },
);

describe.skipIf(lacking("smtp-sink", "python3"))("other callers", () => {
  test("mutt/msmtp style: -oem -oi -f ADDR -- rcpt...; bare names qualified with send.origin", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port, { extra: "send: { origin: example.test }" });
    const msg =
      "From: ops\nTo: Ops Team <ops>, dev@y.test\nCc: audit\nReply-To: noreply\nSubject: report\n\nbody\n";
    const r = sendmail(s, ["-oem", "-oi", "-f", "ops", "--", "ops", "dev@y.test", "audit"], msg);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    const dumps = await arrived(sink, 2); // example.test and y.test: one transaction each
    const all = dumps.join("\n");
    expect(all).toContain("X-Mail-Args: <ops@example.test>");
    for (const rcpt of ["ops@example.test", "audit@example.test", "dev@y.test"])
      expect(all).toContain(`<${rcpt}>`);
    expect(dumps[0]).toMatch(/^From: ops@example\.test$/m);
    expect(dumps[0]).toMatch(/^To: Ops Team <ops@example\.test>, dev@y\.test$/m);
    expect(dumps[0]).toMatch(/^Cc: audit@example\.test$/m);
    expect(dumps[0]).toMatch(/^Reply-To: noreply@example\.test$/m);
  });

  test("Python's subprocess, as a web application calls it: sendmail -t -oi, Bcc removed, exit 0", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port);
    const py = `
import subprocess, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Web <web@y.test>"
m["To"] = "a@y.test, B <b@y.test>"
m["Bcc"] = "secret@y.test"
m["Subject"] = "Password reset"
m.set_content("Click the link.")
p = subprocess.run([sys.argv[1], "-t", "-oi", "-f", "bounces@y.test"], input=m.as_bytes(), capture_output=True)
print(p.returncode, p.stderr.decode())
`;
    const r = spawnSync([peer("python3")!, "-c", py, s.sendmail], {
      env: s.env,
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(r.stdout.toString()).toBe("0 \n");
    const all = (await arrived(sink)).join("\n");
    expect(all).toContain("X-Mail-Args: <bounces@y.test>");
    for (const rcpt of ["a@y.test", "b@y.test", "secret@y.test"]) expect(all).toContain(`<${rcpt}>`);
    expect(all).not.toMatch(/^Bcc:/im);
    expect(all).toMatch(/^Message-ID: </m);
  });

  test("-F with a newline cannot add a header: the name is one line, no Bcc reaches the wire", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port);
    const r = sendmail(s, ["-F", "Evil\r\nBcc: victim@y.test", "-i", "a@y.test"], "Subject: x\n\nbody\n");
    expect(r.code).toBe(0);
    const [d] = await arrived(sink);
    const login = spawnSync(["id", "-un"]).stdout.toString().trim();
    expect(d).toContain(`From: "Evil Bcc: victim@y.test" <${login}@mta.test>`);
    expect(d).not.toMatch(/^Bcc:/im);
    expect(d).not.toContain("X-Rcpt-Args: <victim@y.test>");
  });

  test("usage errors exit 64 naming the flag; a missing config 78; nothing is read or sent", () => {
    using dir = tempDir("mta-sm-", { open: true });
    const s = setup(dir.path, freePort());
    const bs = sendmail(s, ["-bs"], "");
    expect(bs.code).toBe(64);
    expect(bs.stderr).toBe(
      "mta: send: -bs is not supported: mta send only submits mail (-bm) (see mta send --help)\n",
    );
    const z = sendmail(s, ["-Z", "root"], "x\n");
    expect(z).toEqual({
      code: 64,
      stdout: "",
      stderr: "mta: send: unknown option -Z (see mta send --help)\n",
    });
    const none = sendmail(s, ["-i"], "x\n");
    expect(none.code).toBe(64);
    expect(none.stderr).toContain("no recipients");
    const missing = spawnSync([s.sendmail, "root"], {
      env: { ...s.env, MTA_CONFIG: join(dir.path, "missing.yaml") },
      stdin: Buffer.from("x\n"),
      stderr: "pipe",
    });
    expect(missing.exitCode).toBe(78);
  });
});

describe.skipIf(lacking("smtp-sink"))("through the daemon: any bytes, any size", () => {
  test("an 8-bit ISO-8859-1 message arrives byte for byte (the inject API carries base64)", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port);
    await using _mta = await daemon(s);
    const body = Buffer.from(
      "Subject: r\xe9sum\xe9\nContent-Type: text/plain; charset=ISO-8859-1\n\nca\xe7a marche \xe0 100 %\n",
      "latin1",
    );
    const r = sendmail(s, ["-i", "a@y.test"], body);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    const [d] = await arrived(sink);
    expect(d).toContain("X-Mail-Args: <");
    expect(d).toContain("BODY=8BITMIME");
    expect(d).toContain("Subject: r\xe9sum\xe9\n");
    expect(d).toContain("\nca\xe7a marche \xe0 100 %\n");
  });

  test("100 files of 3 MB with --batch: split into requests by bytes, all 100 delivered, exit 0", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port);
    await using _mta = await daemon(s);
    const mail = join(dir.path, "mail");
    mkdirSync(mail);
    const line = `${"x".repeat(998)}\n`;
    const body = line.repeat(Math.ceil((3 * 1024 * 1024) / line.length));
    for (let i = 0; i < 100; i++)
      writeFileSync(
        join(mail, `${String(i).padStart(3, "0")}.eml`),
        `To: r${i}@y.test\nSubject: big ${i}\n\n${body}`,
      );
    const t0 = performance.now();
    const r = spawnSync([MTA, "send", "-c", s.config, "--json", "--batch", mail], {
      env: s.env,
      stdout: "pipe",
      stderr: "pipe",
    });
    console.log(`100 × 3 MB handed to the daemon in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({
      mode: "daemon",
      accepted: 100,
      invalid: 0,
      unsent: 0,
    });
    const end = Date.now() + 90_000;
    const delivered = () => deliveryLog(join(dir.path, "log")).filter((e) => e.type === "delivery").length;
    while (delivered() < 100 && Date.now() < end) await Bun.sleep(200);
    expect(delivered()).toBe(100);
    expect(readdirSync(sink.dumpDir).length).toBe(100);
  }, 120_000);
});

describe.skipIf(lacking("smtp-sink", "setpriv", "root"))("batch items that cannot be read", () => {
  test("as nobody: an unreadable file and a directory named .eml are reported and skipped, the rest sent, exit 65", async () => {
    using dir = tempDir("mta-sm-", { open: true });
    await using sink = await startSink({ dir: dir.path });
    const s = setup(dir.path, sink.port, { nobodyOwnsSpool: true });
    const mail = join(dir.path, "mail");
    mkdirSync(mail, { mode: 0o755 });
    writeFileSync(join(mail, "a.eml"), "To: a@y.test\nSubject: a\n\nx\n", { mode: 0o644 });
    writeFileSync(join(mail, "b.eml"), "To: b@y.test\nSubject: b\n\nx\n", { mode: 0o600 }); // root's
    mkdirSync(join(mail, "c.eml"));
    writeFileSync(join(mail, "d.eml"), "To: d@y.test\nSubject: d\n\nx\n", { mode: 0o644 });
    const missing = join(dir.path, "missing.jsonl");
    const p = spawn(asNobody([MTA, "send", "-c", s.config, "--batch", mail, missing]), {
      env: s.env,
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, stderr] = await Promise.all([p.exited, new Response(p.stderr).text()]);
    expect(code).toBe(65);
    expect(stderr.split("\n").filter(Boolean)).toEqual([
      `mta send: ${join(mail, "b.eml")}: cannot read: permission denied; skipped`,
      `mta send: ${join(mail, "c.eml")}: cannot read: not a regular file; skipped`,
      `mta send: ${missing}: cannot read: no such file or directory; skipped`,
      expect.stringMatching(
        /^mta send: 2 accepted, 2 delivered, 0 deferred, 0 bounced, 3 invalid in [\d.]+ s$/,
      ),
    ]);
    expect(stderr).not.toMatch(STACK_FRAME);
    const subjects = (await arrived(sink, 2)).map((d) => /^Subject: (.*)$/m.exec(d)?.[1]);
    expect(subjects.sort()).toEqual(["a", "d"]);
  });

  test("an empty directory or an empty file is not success: exit 66, nothing sent", () => {
    using dir = tempDir("mta-sm-", { open: true });
    const s = setup(dir.path, freePort());
    mkdirSync(join(dir.path, "empty"));
    writeFileSync(join(dir.path, "empty.jsonl"), "");
    for (const input of [join(dir.path, "empty"), join(dir.path, "empty.jsonl")]) {
      const r = spawnSync([MTA, "send", "-c", s.config, "--batch", input], { env: s.env, stderr: "pipe" });
      expect(r.exitCode).toBe(66);
      expect(r.stderr.toString()).toStartWith("mta send: no message in the input\n");
    }
  });
});
