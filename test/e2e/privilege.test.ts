/**
 * Least privilege through the binary: a non-root local user (nobody, via setpriv) submits mail with
 * `sendmail` through the maildrop and it arrives with `Received: ... (mta, from userid 65534)`, while the
 * same user can read neither the spool nor the control token and cannot drive the control API.
 * Root's own submissions record uid 0 (through the control socket, and delivering itself when no daemon
 * runs); the inject API over TCP records the client address; check-config redacts every secret.
 */
import { expect, test } from "bun:test";
import { spawnSync } from "bun";
import {
  chmodSync,
  chownSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { CONTROL_TOKEN, MTA, runMta, startMta, tempDir, testConfig, withToken } from "../support/mta.ts";
import { lacking, peer } from "../support/peers.ts";
import { freePort, startSink } from "../support/sink.ts";

const SETPRIV = peer("setpriv") ?? "/usr/bin/setpriv";
const noPeers = lacking("setpriv", "root", "smtp-sink", "curl");
const NOBODY = 65534;

/** Runs `argv` as nobody (uid and gid 65534, no supplementary groups). */
function asNobody(argv: string[], opts: { stdin?: string; cwd?: string; env?: Record<string, string> } = {}) {
  const r = spawnSync([SETPRIV, `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--", ...argv], {
    env: { PATH: "/usr/bin:/bin", HOME: "/nonexistent", USER: "nobody", MTA_LOOPBACK_ONLY: "1", ...opts.env },
    cwd: opts.cwd ?? "/",
    stdin: opts.stdin === undefined ? "ignore" : Buffer.from(opts.stdin),
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/**
 * A world-readable mta.yaml (as Postfix's main.cf) whose secret is in a file of its own, mode 0600,
 * in a directory other users may enter (as /etc/mta).
 */
function publicConfig(dir: string, sinkPort: number): { file: string; tokenFile: string } {
  chmodSync(dir, 0o755);
  const tokenFile = join(dir, "control.token");
  writeFileSync(tokenFile, `${CONTROL_TOKEN}\n`, { mode: 0o600 });
  // A fixed control port, as in production, so that clients find the daemon from the file.
  const text = testConfig(dir, `delivery: { routes: { example.net: '127.0.0.1:${sinkPort}' } }`).replace(
    "control: { address: 127.0.0.1:0 }",
    `control: { address: 127.0.0.1:${freePort()}, token_file: ${tokenFile} }`,
  );
  if (!text.includes("token_file")) throw new Error("testConfig changed: no control line to replace");
  const file = join(dir, "mta.yaml");
  writeFileSync(file, text, { mode: 0o644 });
  chmodSync(file, 0o644);
  return { file, tokenFile };
}

test.skipIf(noPeers)(
  "nobody submits with sendmail through the maildrop; it arrives from userid 65534; spool, token and API stay closed",
  async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    const { file, tokenFile } = publicConfig(dir.path, sink.port);
    const sendmail = join(dir.path, "sendmail");
    symlinkSync(MTA, sendmail);
    await using mta = await startMta({ dir: dir.path, config: readFileSync(file, "utf8") });

    const mode = (p: string) => statSync(p).mode & 0o7777;
    const spool = join(dir.path, "spool");
    expect(mode(spool)).toBe(0o700);
    expect(mode(join(dir.path, "maildrop"))).toBe(0o3733);
    expect(mode(join(dir.path, "deliveries.jsonl"))).toBe(0o640);
    expect(mode(join(spool, "control.sock"))).toBe(0o600);

    const msg =
      "From: nobody@mta.test\nTo: someone@example.net\nSubject: from nobody\n\nhello from a plain user\n";
    const sent = asNobody([sendmail, "-i", "someone@example.net"], { stdin: msg, env: { MTA_CONFIG: file } });
    expect(sent.stderr).toBe("");
    expect(sent.code).toBe(0);
    const [got] = await sink.waitFor(1, 15_000);
    expect(got).toContain("Subject: from nobody");
    expect(got).toMatch(/Received: by mta\.test \(mta, from userid 65534\);/);
    const picked = await mta.waitForLog((l) => l.msg === "maildrop: queued");
    expect(picked.uid).toBe(NOBODY);
    expect(readdirSync(join(dir.path, "maildrop"))).toEqual([]);

    // What nobody cannot do: read the spool or the token, list the maildrop, or drive the API.
    const seg = readdirSync(join(spool, "segments"))[0]!;
    expect(asNobody(["/bin/cat", join(spool, "segments", seg)]).code).not.toBe(0);
    expect(asNobody(["/bin/ls", spool]).stderr).toContain("Permission denied");
    expect(asNobody(["/bin/cat", tokenFile]).stderr).toContain("Permission denied");
    expect(asNobody(["/bin/ls", join(dir.path, "maildrop")]).stderr).toContain("Permission denied");
    const api = `http://127.0.0.1:${mta.controlPort}/api/v1/queue/delete`;
    const curl = asNobody([
      "/usr/bin/curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "-X",
      "POST",
      "-H",
      "Content-Type: application/json",
      "-d",
      '{"destination":"example.net","yes":true}',
      api,
    ]);
    expect(curl.stdout).toBe("401");
    const viaSocket = asNobody([
      "/usr/bin/curl",
      "-s",
      "--unix-socket",
      join(spool, "control.sock"),
      "http://localhost/api/v1/queue/summary",
    ]);
    expect(viaSocket.code).not.toBe(0);
    const q = asNobody([MTA, "queue", "summary", "-c", file]);
    expect(q.code).toBe(77);
    expect(q.stderr).toMatch(
      /^mta: queue: a daemon answers at .* but this user can neither open its control socket/,
    );
    const d = asNobody([MTA, "queue", "delete", "--destination", "example.net", "--yes", "-c", file]);
    expect(d.code).toBe(77);
    const local = asNobody([MTA, "queue", "summary", "--local", "-c", file]);
    expect(local.code).toBe(77);
    expect(local.stderr).toContain("permission denied");
    // Root's own client keeps working (through the control socket, no token needed).
    expect(runMta(["queue", "summary", "-c", file]).code).toBe(0);
  },
  60_000,
);

test.skipIf(noPeers)(
  "with no daemon running, nobody's mail waits in the maildrop and goes out once mta serve starts",
  async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    const { file } = publicConfig(dir.path, sink.port);
    {
      // A first start creates the spool and the maildrop, as installing the service would.
      await using mta = await startMta({ dir: dir.path, config: readFileSync(file, "utf8") });
      expect(await mta.stop()).toBe(0);
    }
    const sent = asNobody([MTA, "send", "-c", file, "-v", "later@example.net"], {
      stdin: "Subject: while down\n\nqueued by nobody\n",
    });
    expect(sent.code).toBe(0);
    expect(sent.stderr).toContain("left in the maildrop for the daemon");
    expect(readdirSync(join(dir.path, "maildrop")).filter((n) => n.endsWith(".msg")).length).toBe(1);
    await using mta = await startMta({ dir: dir.path, config: readFileSync(file, "utf8") });
    const [got] = await sink.waitFor(1, 15_000);
    expect(got).toContain("Subject: while down");
    expect(got).toContain("(mta, from userid 65534)");
    expect(mta.proc.exitCode).toBeNull();
  },
  60_000,
);

test.skipIf(noPeers)(
  "root's submissions record uid 0; the inject API records the client address; check-config redacts secrets",
  async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    const hash = runMta(["hash-password"], { stdin: "pw\npw\n" }).stdout.trim();
    const passFile = join(dir.path, "relay.pass");
    writeFileSync(passFile, "relay-secret\n", { mode: 0o600 });
    const config = withToken(
      testConfig(
        dir.path,
        [
          `delivery: { routes: { example.net: '127.0.0.1:${sink.port}', relay.test: { hosts: ['127.0.0.1:9'], auth: { username: u, password_file: ${passFile} } } } }`,
        ].join("\n"),
      ),
    ).replace(
      "listen: [{ address: 127.0.0.1:0 }]",
      `listen: [{ address: 127.0.0.1:0, users: { alice: "${hash}" } }]`,
    );
    const file = join(dir.path, "mta.yaml");
    writeFileSync(file, config);

    const shown = runMta(["check-config", "-c", file]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).not.toContain(CONTROL_TOKEN);
    expect(shown.stdout).not.toContain(hash);
    expect(shown.stdout).toContain("token: <redacted>");
    expect(shown.stdout).toContain("alice: <redacted>");
    expect(shown.stdout).toContain(`password_file: ${passFile}`);
    expect(shown.stdout).not.toContain("relay-secret");
    const json = runMta(["check-config", "--json", "-c", file]);
    expect(json.stdout).not.toContain(CONTROL_TOKEN);
    expect(JSON.parse(json.stdout).control.token).toBe("<redacted>");

    {
      // Daemon down: root's mta send delivers itself and records uid 0.
      const r = runMta(["send", "-c", file, "a@example.net"], { stdin: "Subject: local\n\nx\n" });
      expect(r.code).toBe(0);
      const [got] = await sink.waitFor(1, 15_000);
      expect(got).toContain("(mta, from userid 0)");
    }
    await using mta = await startMta({ dir: dir.path, config });
    const viaDaemon = runMta(["send", "-c", file, "-v", "b@example.net"], {
      stdin: "Subject: daemon\n\nx\n",
    });
    expect(viaDaemon.code).toBe(0);
    expect(viaDaemon.stderr).toContain("handed to the daemon");
    const res = await fetch(`http://127.0.0.1:${mta.controlPort}/api/v1/inject`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `bearer ${CONTROL_TOKEN}` },
      body: JSON.stringify({
        sender: "app@app.test",
        recipients: ["c@example.net"],
        subject: "api",
        text: "x",
      }),
    });
    expect(res.status).toBe(200);
    const all = await sink.waitFor(3, 15_000);
    const daemon = all.find((m) => m.includes("Subject: daemon"))!;
    expect(daemon).toContain("(mta, from userid 0)");
    expect(daemon).toContain("(mta, inject API on the control socket)");
    const api = all.find((m) => m.includes("Subject: api"))!;
    expect(api).toMatch(/Received: from \[127\.0\.0\.1\]\r?\n\tby mta\.test \(mta, inject API\) with HTTP;/);
  },
  60_000,
);

test.skipIf(noPeers)(
  "a hostile local user cannot make the pickup mail what they may not read, hang it, or forge the uid",
  async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    const { file } = publicConfig(dir.path, sink.port);
    await using mta = await startMta({ dir: dir.path, config: readFileSync(file, "utf8") });
    const drop = join(dir.path, "maildrop");
    const secret = join(dir.path, "secret.txt");
    writeFileSync(secret, 'MTADROP1\n{"sender":"","recipients":["x@example.net"]}\nroot only\n', {
      mode: 0o600,
    });
    const envelope = (rcpt: string) =>
      `MTADROP1\n${JSON.stringify({ sender: "n@mta.test", recipients: [rcpt], attributes: { uid: "0" } })}\n`;
    // As nobody: a symlink and a FIFO under names the pickup takes, a malformed file, and a message
    // that claims uid 0 in its attributes and in a Received line of its own.
    expect(asNobody(["/bin/ln", "-s", secret, join(drop, "aaa-link.msg")]).code).toBe(0);
    expect(asNobody(["/usr/bin/mkfifo", join(drop, "aaa-fifo.msg")]).code).toBe(0);
    expect(asNobody(["/bin/sh", "-c", `printf 'garbage' > ${join(drop, "aaa-bad.msg")}`]).code).toBe(0);
    const forged = `${envelope("forged@example.net")}Received: by mta.test (mta, from userid 0);\r\nSubject: forged\r\n\r\nx\r\n`;
    expect(
      asNobody(
        [
          "/bin/sh",
          "-c",
          `cat > ${join(drop, ".forged.tmp")} && mv ${join(drop, ".forged.tmp")} ${join(drop, "zzz-forged.msg")}`,
        ],
        { stdin: forged },
      ).code,
    ).toBe(0);
    // As root (a user could do this where fs.protected_hardlinks is 0): a hard link to a private file.
    spawnSync(["/bin/ln", secret, join(drop, "aaa-hard.msg")]);
    const got = (await sink.waitFor(1, 15_000))[0] ?? "";
    expect(got).toContain("Subject: forged");
    // The true uid comes first (the trace the daemon adds); the user's own line is below it.
    const first = got.indexOf("Received: by mta.test (mta, from userid 65534)");
    expect(first).toBeGreaterThan(-1);
    expect(got.indexOf("from userid 0")).toBeGreaterThan(first);
    await Bun.sleep(500);
    expect(sink.dumps().length).toBe(1);
    expect(sink.dumps().join("")).not.toContain("root only");
    const aside = mta
      .logLines()
      .filter((l) => String(l.msg).startsWith("maildrop:") && String(l.msg).includes("set aside"));
    expect(aside.map((l) => String(l.file).split("/").pop()).sort()).toEqual([
      "aaa-bad.msg",
      "aaa-fifo.msg",
      "aaa-hard.msg",
      "aaa-link.msg",
    ]);
    expect(readdirSync(drop).sort()).toEqual(["aaa-bad.bad", "aaa-fifo.bad", "aaa-hard.bad", "aaa-link.bad"]);
    expect(mta.proc.exitCode).toBeNull();
  },
  60_000,
);

test.skipIf(noPeers)(
  "run as a user of its own, the daemon reads a drop file of another user through the maildrop's group",
  async () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "sinks"));
    await using sink = await startSink({ dir: join(dir.path, "sinks") });
    const { file } = publicConfig(dir.path, sink.port);
    // As /var/spool/mta would be for a service with User=mta: here nobody owns the daemon's files.
    chownSync(dir.path, NOBODY, NOBODY);
    chownSync(join(dir.path, "control.token"), NOBODY, NOBODY);
    await using mta = await startMta({ dir: dir.path, config: readFileSync(file, "utf8"), uid: NOBODY });
    const drop = join(dir.path, "maildrop");
    expect([statSync(drop).uid, statSync(drop).gid, statSync(drop).mode & 0o7777]).toEqual([
      NOBODY,
      NOBODY,
      0o3733,
    ]);
    const r = spawnSync(
      [
        SETPRIV,
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "--",
        MTA,
        "send",
        "-c",
        file,
        "u@example.net",
      ],
      {
        env: { PATH: "/usr/bin:/bin", MTA_LOOPBACK_ONLY: "1" },
        stdin: Buffer.from("Subject: from 1000\n\nhi\n"),
      },
    );
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
    const [got] = await sink.waitFor(1, 15_000);
    expect(got).toContain("(mta, from userid 1000)");
    // uid 1000 and the daemon's user share nothing else: the spool stays closed to 1000.
    const peek = spawnSync([
      SETPRIV,
      "--reuid=1000",
      "--regid=1000",
      "--clear-groups",
      "--",
      "/bin/ls",
      join(dir.path, "spool"),
    ]);
    expect(peek.exitCode).not.toBe(0);
    expect(statSync(join(dir.path, "spool")).uid).toBe(NOBODY);
    expect((await mta.waitForLog((l) => l.msg === "maildrop: queued")).uid).toBe(1000);
  },
  60_000,
);
