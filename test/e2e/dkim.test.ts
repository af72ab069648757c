/**
 * DKIM end to end through the compiled binary: `mta dkim keygen` keys, dual signatures (RSA-2048 and
 * Ed25519) on mail injected with swaks into `mta serve`, verified where it arrives by mailauth (an
 * independent verifier) against a loopback DNS server publishing the TXT records keygen printed; bad
 * keys at start, in `check-config` and on SIGHUP.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { startTxtServer, type TxtServer } from "../dkim/_dns.ts";
import { deliveryLog, runMta, startMta, type TempDir, tempDir, testConfig } from "../support/mta.ts";
import { type ScriptedPeer, startScriptedPeer } from "../support/scriptedPeer.ts";
import { lacking } from "../support/peers.ts";
import { startSink } from "../support/sink.ts";

let dir: TempDir;
let dns: TxtServer;

/** Runs `mta dkim keygen` in `dir` and publishes the printed record; returns the key file path. */
function keygen(domain: string, selector: string, type: "rsa" | "ed25519"): string {
  const out = join(dir.path, `${selector}.${domain}.pem`);
  const r = runMta([
    "dkim",
    "keygen",
    "--domain",
    domain,
    "--selector",
    selector,
    "--type",
    type,
    "--out",
    out,
  ]);
  expect(r.code).toBe(0);
  const line = r.stdout.trim();
  expect(line).toStartWith(`${selector}._domainkey.${domain} IN TXT "v=DKIM1; k=${type}; p=`);
  // A zone-file line: the record is the concatenation of its quoted character-strings.
  dns.set(`${selector}._domainkey.${domain}`, [...line.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join(""));
  return out;
}

let rsaKey: string;
let edKey: string;

beforeAll(async () => {
  dir = tempDir("mta-e2e-dkim-");
  dns = await startTxtServer();
  rsaKey = keygen("example.com", "rsa2026", "rsa");
  edKey = keygen("example.com", "ed2026", "ed25519");
});
afterAll(async () => {
  await dns.close();
  dir[Symbol.dispose]();
});

interface Verdict {
  domain: string;
  selector: string | undefined;
  algo: string | undefined;
  result: string;
}

async function verify(message: Buffer): Promise<Verdict[]> {
  const res = await dkimVerify(message, { resolver: dns.resolver as never } as never);
  return res.results.map((r) => ({
    domain: r.signingDomain,
    selector: r.selector,
    algo: (r as { algo?: string }).algo,
    result: r.status.result,
  }));
}

function dkimConfig(keys: { selector: string; file: string }[]): string {
  const list = keys.map((k) => `{ domain: example.com, selector: ${k.selector}, key_file: ${k.file} }`);
  return `dkim: { keys: [${list.join(", ")}] }`;
}

function swaks(port: number, from: string, to: string, data: string): void {
  const r = spawnSync(
    ["swaks", "--server", `127.0.0.1:${port}`, "--helo", "client.test", "-f", from, "-t", to, "--data", data],
    { stdout: "pipe", stderr: "pipe" },
  );
  const out = r.stdout.toString() + r.stderr.toString();
  if (r.exitCode !== 0) throw new Error(`swaks failed:\n${out}`);
  expect(out).toMatch(/250 2\.0\.0 Ok: queued as/);
}

function message(from: string, subject: string): string {
  return [
    `From: Shop <${from}>`,
    "To: <someone@example.net>",
    `Subject: ${subject}`,
    "Date: Mon, 15 Jan 2024 10:00:00 +0000",
    `Message-ID: <${subject.replace(/\W/g, "")}@example.com>`,
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "Hello,\t  this line has  runs of   whitespace   ",
    ".a line that starts with a dot (dot-stuffed on the wire)",
    "",
    "",
  ].join("\r\n");
}

async function received(peer: ScriptedPeer, n: number, timeoutMs = 15_000): Promise<Buffer[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const got = peer.sessions.flatMap((s) => s.messages.map((m) => m.body));
    if (got.length >= n) return got;
    if (Date.now() > end) throw new Error(`the peer received ${got.length} of ${n} messages`);
    await Bun.sleep(25);
  }
}

function subjectOf(m: Buffer): string {
  return /\r\nSubject: ([^\r]*)/.exec(m.toString("latin1"))?.[1] ?? "";
}

describe.skipIf(lacking("swaks"))("DKIM through mta serve", () => {
  test("swaks → mta serve → peer: dual RSA-2048 + Ed25519 signatures verify; subdomains sign with the parent, other domains pass unsigned", async () => {
    using run = tempDir();
    await using peer = await startScriptedPeer();
    await using mta = await startMta({
      dir: run.path,
      config: testConfig(
        run.path,
        [
          `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" }, retry: [1s] }`,
          dkimConfig([
            { selector: "rsa2026", file: rsaKey },
            { selector: "ed2026", file: edKey },
          ]),
        ].join("\n"),
      ),
    });
    const port = mta.smtpPorts[0]!;
    swaks(port, "news@example.com", "someone@example.net", message("news@example.com", "dual"));
    swaks(
      port,
      "news@mail.example.com",
      "someone@example.net",
      message("news@mail.example.com", "subdomain"),
    );
    swaks(port, "news@other.test", "someone@example.net", message("news@other.test", "unsigned"));
    const got = await received(peer, 3);
    const bySubject = new Map(got.map((m) => [subjectOf(m), m]));

    const dual = bySubject.get("dual")!;
    expect(await verify(dual)).toEqual([
      { domain: "example.com", selector: "rsa2026", algo: "rsa-sha256", result: "pass" },
      { domain: "example.com", selector: "ed2026", algo: "ed25519-sha256", result: "pass" },
    ]);
    // The dot-stuffed line arrived un-stuffed and signed.
    expect(dual.toString("latin1")).toContain("\r\n.a line that starts with a dot");

    const sub = await verify(bySubject.get("subdomain")!);
    expect(sub.map((v) => [v.domain, v.result])).toEqual([
      ["example.com", "pass"],
      ["example.com", "pass"],
    ]);

    const unsigned = bySubject.get("unsigned")!;
    expect(unsigned.toString("latin1")).not.toMatch(/^DKIM-Signature:/im);
    expect((await verify(unsigned)).map((v) => v.result)).toEqual(["none"]);
  }, 30_000);

  test("a DSN takes the accept pipeline: DKIM-signed (mailauth verifies it) and logged with a reception line", async () => {
    using run = tempDir();
    // The DSN is From: MAILER-DAEMON@<hostname> (mta.test in testConfig): a key for that domain signs it.
    const dsnKey = keygen("mta.test", "dsn2026", "ed25519");
    await using peer = await startScriptedPeer({
      rcpt: (to) => (to.startsWith("nobody@") ? "550 5.1.1 No such user" : "250 2.1.5 ok"),
    });
    await using mta = await startMta({
      dir: run.path,
      config: testConfig(
        run.path,
        [
          `delivery: { routes: { example.net: "127.0.0.1:${peer.port}", example.org: "127.0.0.1:${peer.port}" }, retry: [1s] }`,
          `dkim: { keys: [{ domain: mta.test, selector: dsn2026, key_file: ${dsnKey} }] }`,
        ].join("\n"),
      ),
    });
    swaks(
      mta.smtpPorts[0]!,
      "alice@example.org",
      "nobody@example.net",
      message("alice@example.org", "refused"),
    );
    const [dsn] = await received(peer, 1);
    const text = dsn!.toString("latin1");
    expect(text).toContain("From: Mail Delivery System <MAILER-DAEMON@mta.test>");
    expect(text).toContain("Content-Type: multipart/report; report-type=delivery-status");
    expect(text).toContain("Status: 5.1.1");
    expect(await verify(dsn!)).toEqual([
      { domain: "mta.test", selector: "dsn2026", algo: "ed25519-sha256", result: "pass" },
    ]);
    const session = peer.sessions.find((s) => s.messages.length > 0)!;
    expect(session.messages[0]!.from).toBe("");
    expect(session.messages[0]!.rcpts.map((r) => r.to)).toEqual(["alice@example.org"]);
    // In the delivery log: the bounce, the dsn line naming the DSN's id, and that id's own reception
    // line (from <>, to the original sender), as for any message the pipeline accepts.
    let events = deliveryLog(run.path);
    for (let i = 0; i < 100 && !events.some((e) => e.type === "delivery" && e.sender === ""); i++) {
      await Bun.sleep(50);
      events = deliveryLog(run.path);
    }
    const bounce = events.find((e) => e.type === "bounce")!;
    expect(bounce).toMatchObject({ recipient: "nobody@example.net", code: 550, enhanced: "5.1.1" });
    const dsnLine = events.find((e) => e.type === "dsn")!;
    expect(dsnLine).toMatchObject({ id: bounce.id, recipient: "alice@example.org", action: "failed" });
    const reception = events.find((e) => e.type === "reception" && e.id === dsnLine.dsnId);
    expect(reception).toMatchObject({ sender: "", recipients: ["alice@example.org"], dsn: bounce.id });
    expect(events.find((e) => e.type === "delivery" && e.id === dsnLine.dsnId)).toMatchObject({
      recipient: "alice@example.org",
    });
  }, 30_000);

  test.skipIf(lacking("smtp-sink"))(
    "a signed message arrives at Postfix's smtp-sink and still verifies (its LF dump turned back into CRLF)",
    async () => {
      using run = tempDir();
      await using sink = await startSink({ dir: run.path });
      await using mta = await startMta({
        dir: run.path,
        config: testConfig(
          run.path,
          [
            `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" }, retry: [1s] }`,
            dkimConfig([
              { selector: "rsa2026", file: rsaKey },
              { selector: "ed2026", file: edKey },
            ]),
          ].join("\n"),
        ),
      });
      swaks(
        mta.smtpPorts[0]!,
        "news@example.com",
        "someone@example.net",
        message("news@example.com", "sink"),
      );
      const [dump] = await sink.waitFor(1, 15_000);
      const crlf = Buffer.from(dump!.replace(/\r?\n/g, "\r\n"), "latin1");
      expect((await verify(crlf)).map((v) => [v.selector, v.result])).toEqual([
        ["rsa2026", "pass"],
        ["ed2026", "pass"],
      ]);
    },
    30_000,
  );
});

describe("bad DKIM keys", () => {
  function brokenKey(name: string): string {
    const file = join(dir.path, name);
    writeFileSync(file, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    chmodSync(file, 0o600);
    return file;
  }

  test("a malformed key file: check-config and serve exit 78 naming the key file", () => {
    using run = tempDir();
    const bad = brokenKey("malformed.pem");
    const configFile = join(run.path, "mta.yaml");
    writeFileSync(
      configFile,
      testConfig(
        run.path,
        dkimConfig([
          { selector: "rsa2026", file: rsaKey },
          { selector: "bad", file: bad },
        ]),
      ),
    );
    const check = runMta(["check-config", "-c", configFile]);
    expect(check.code).toBe(78);
    expect(check.stdout).toBe("");
    // The YAML path and line of the key, the file, the selector, and what is wrong with it.
    expect(check.stderr).toContain(`mta: configuration error in ${configFile}: 1 problem`);
    expect(check.stderr).toMatch(/\d+:\d+ {2}dkim\.keys\[1\]\.key_file: /);
    expect(check.stderr).toContain(
      `DKIM key file ${bad} (bad._domainkey.example.com): not a readable PEM private key`,
    );

    // serve refuses what check-config refuses, in the same words.
    const serve = runMta(["serve", "-c", configFile]);
    expect(serve.code).toBe(78);
    expect(serve.stderr).toBe(check.stderr);
    // Nothing was started: no spool directory was created.
    expect(() => readFileSync(join(run.path, "spool", "LOCK"))).toThrow();
  });

  test("an RSA key shorter than 2048 bits is refused by check-config", () => {
    using run = tempDir();
    const short = join(run.path, "short.pem");
    const r = spawnSync([
      "openssl",
      "genpkey",
      "-algorithm",
      "RSA",
      "-pkeyopt",
      "rsa_keygen_bits:1024",
      "-out",
      short,
    ]);
    expect(r.exitCode).toBe(0);
    const configFile = join(run.path, "mta.yaml");
    writeFileSync(configFile, testConfig(run.path, dkimConfig([{ selector: "short", file: short }])));
    const quiet = runMta(["check-config", "-c", configFile, "-q"]);
    expect(quiet).toEqual({ code: 78, stdout: "", stderr: "" });
    const check = runMta(["check-config", "-c", configFile]);
    expect(check.code).toBe(78);
    expect(check.stderr).toContain(
      `DKIM key file ${short} (short._domainkey.example.com): RSA key has 1024 bits`,
    );
  });

  test.skipIf(lacking("swaks"))(
    "SIGHUP with a broken key keeps the old keys (log line) and signing goes on; a good new key takes over",
    async () => {
      using run = tempDir();
      await using peer = await startScriptedPeer();
      const routes = `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" }, retry: [1s] }`;
      await using mta = await startMta({
        dir: run.path,
        config: testConfig(
          run.path,
          [routes, dkimConfig([{ selector: "rsa2026", file: rsaKey }])].join("\n"),
        ),
      });
      const port = mta.smtpPorts[0]!;
      // runDaemon installs its signal handlers just after the "started" line; one round trip to the
      // control endpoint makes sure the SIGHUP below is not delivered before them.
      expect((await fetch(`http://127.0.0.1:${mta.controlPort}/healthz`)).status).toBe(200);

      const bad = brokenKey("reload-bad.pem");
      writeFileSync(
        mta.configFile,
        testConfig(run.path, [routes, dkimConfig([{ selector: "ed2026", file: bad }])].join("\n")),
      );
      mta.proc.kill("SIGHUP");
      const failed = await mta.waitForLog(
        (r) => typeof r.msg === "string" && r.msg.startsWith("configuration reload failed"),
      );
      expect(String(failed.msg)).toContain(`DKIM key file ${bad} (ed2026._domainkey.example.com)`);
      expect(failed.level).toBe("error");

      swaks(port, "news@example.com", "someone@example.net", message("news@example.com", "after bad reload"));
      const [first] = await received(peer, 1);
      expect((await verify(first!)).map((v) => [v.selector, v.result])).toEqual([["rsa2026", "pass"]]);

      writeFileSync(
        mta.configFile,
        testConfig(run.path, [routes, dkimConfig([{ selector: "ed2026", file: edKey }])].join("\n")),
      );
      mta.proc.kill("SIGHUP");
      await mta.waitForLog((r) => r.msg === "configuration reloaded");
      swaks(
        port,
        "news@example.com",
        "someone@example.net",
        message("news@example.com", "after good reload"),
      );
      const got = await received(peer, 2);
      const second = got.find((m) => subjectOf(m) === "after good reload")!;
      expect((await verify(second)).map((v) => [v.selector, v.result])).toEqual([["ed2026", "pass"]]);
    },
    30_000,
  );
});
