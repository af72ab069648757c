/**
 * Interop with real clients nobody here wrote: swaks, Postfix's smtp-source, Python's smtplib and
 * `openssl s_client -starttls smtp`. A test is skipped only when its tool is missing (never under CI=true).
 * The children run with Bun.spawn (never spawnSync: the listener lives on this process's event loop).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Listener, startListener } from "../../src/listener/index.ts";
import { lacking, peer } from "../support/peers.ts";
import { log, options, RecordingAcceptor, selfSignedCert } from "./_harness.ts";

const swaks = peer("swaks-tls");
const smtpSource = peer("smtp-source");
const python = peer("python3");
const openssl = peer("openssl");
const msmtp = peer("msmtp");

async function run(cmd: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn(cmd, {
    stdin: stdin === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  if (stdin !== undefined && p.stdin) {
    p.stdin.write(stdin);
    await p.stdin.end();
  }
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, out, err };
}

// Without openssl (outside CI) the TLS variants are left out; under CI=true a missing openssl fails.
const cert = lacking("openssl") ? undefined : selfSignedCert();
const acceptor = new RecordingAcceptor();
let listener: Listener;
let users: Record<string, string>;

beforeAll(async () => {
  users = { alice: await Bun.password.hash("s3cret", { algorithm: "bcrypt", cost: 4 }) };
  listener = await startListener(
    options({
      tls: cert ? { cert: cert.cert, key: cert.key } : undefined,
      auth: "optional",
      users,
      maxConnections: 2000,
    }),
    acceptor,
    { log },
  );
});
afterAll(async () => {
  await listener.close();
  cert?.dispose();
});

const since = (n: number) => acceptor.messages.slice(n);

describe("interop", () => {
  test.skipIf(lacking("swaks-tls"))("swaks: plain, --pipeline, --tls, --tls --auth", async () => {
    const base = [
      swaks!,
      "--server",
      `127.0.0.1:${listener.port}`,
      "--from",
      "a@example.com",
      "--to",
      "d@example.org",
    ];
    const variants: string[][] = [[], ["--pipeline"]];
    if (cert)
      variants.push(
        ["--tls"],
        ["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"],
      );
    if (cert)
      variants.push([
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "s3cret",
        "--pipeline",
      ]);
    for (const v of variants) {
      const before = acceptor.messages.length;
      const r = await run([...base, ...v, "--body", `variant ${v.join(" ")}`]);
      expect(r.code, `${v.join(" ")}\n${r.out}${r.err}`).toBe(0);
      expect(r.out).toMatch(/<[-~] {2}250 2\.0\.0 Ok: queued as ID\d+/);
      const got = since(before);
      expect(got.length).toBe(1);
      expect(got[0]!.text).toContain(`variant ${v.join(" ")}`);
      if (v.includes("--auth")) expect(got[0]!.envelope.authUser).toBe("alice");
      if (v.includes("--tls")) expect(got[0]!.envelope.tls).toBeDefined();
    }
    // Wrong password: swaks exits non-zero and nothing is accepted.
    if (cert) {
      const before = acceptor.messages.length;
      const r = await run([
        ...base,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "nope",
      ]);
      expect(r.code).not.toBe(0);
      expect(r.out).toContain("535 5.7.8");
      expect(since(before).length).toBe(0);
    }
  });

  test.skipIf(lacking("smtp-source"))(
    "smtp-source: 500 messages over 200 concurrent sessions, 10 recipients each",
    async () => {
      const before = acceptor.messages.length;
      const r = await run([
        smtpSource!,
        "-s",
        "200",
        "-m",
        "500",
        "-r",
        "10",
        "-l",
        "2048",
        "-M",
        "client.test",
        "-f",
        "sender@example.com",
        "-t",
        "rcpt@example.org",
        `127.0.0.1:${listener.port}`,
      ]);
      expect(r.code, r.err).toBe(0);
      const got = since(before);
      expect(got.length).toBe(500);
      expect(got.every((m) => m.envelope.recipients.length === 10)).toBe(true);
      expect(got.every((m) => m.message.length > 2048)).toBe(true);
    },
    30_000,
  );

  test.skipIf(lacking("python3"))(
    "python smtplib: sendmail, send_message with SMTPUTF8, starttls + login",
    async () => {
      const script = `
import smtplib, ssl, sys
from email.message import EmailMessage
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port) as s:
    s.sendmail("a@example.com", ["d@example.org"], b"Subject: plain\\r\\n\\r\\n.dot line\\r\\nbody\\r\\n")
    m = EmailMessage()
    m["From"] = "用户@例子.广告"
    m["To"] = "δοκιμή@παράδειγμα.δοκιμή"
    m["Subject"] = "utf8 ✓"
    m.set_content("héllo wörld\\n")
    s.send_message(m)
if sys.argv[2] == "tls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.starttls(context=ctx)
        s.login("alice", "s3cret")
        s.sendmail("a@example.com", ["d@example.org"], "Subject: tls\\r\\n\\r\\nx\\r\\n")
print("ok")
`;
      const before = acceptor.messages.length;
      const r = await run([python!, "-c", script, String(listener.port), cert ? "tls" : "plain"]);
      expect(r.code, r.err).toBe(0);
      expect(r.out.trim()).toBe("ok");
      const got = since(before);
      expect(got.length).toBe(cert ? 3 : 2);
      expect(got[0]!.text.endsWith("Subject: plain\r\n\r\n.dot line\r\nbody\r\n")).toBe(true);
      expect(got[1]!.envelope.smtputf8).toBe(true);
      expect(got[1]!.envelope.sender).toBe("用户@例子.广告");
      expect(got[1]!.envelope.recipients[0]!.address).toBe("δοκιμή@παράδειγμα.δοκιμή");
      expect(got[1]!.text).toContain("Subject: utf8 ✓");
      if (cert) expect(got[2]!.envelope.authUser).toBe("alice");
    },
  );

  test.skipIf(lacking("openssl"))("openssl s_client -starttls smtp", async () => {
    const before = acceptor.messages.length;
    const r = await run(
      [
        openssl!,
        "s_client",
        "-starttls",
        "smtp",
        "-connect",
        `127.0.0.1:${listener.port}`,
        "-crlf",
        "-quiet",
        "-ign_eof",
      ],
      "EHLO openssl.test\nMAIL FROM:<a@example.com>\nRCPT TO:<d@example.org>\nDATA\nSubject: via openssl\n\nhi\n.\nQUIT\n",
    );
    expect(r.out).toContain("250 2.0.0 Ok: queued as");
    expect(r.out).toContain("221 2.0.0 Bye");
    const got = since(before);
    expect(got.length).toBe(1);
    expect(got[0]!.envelope.tls?.protocol).toMatch(/^TLSv1\.[23]$/);
    expect(got[0]!.text).toContain("Subject: via openssl\r\n\r\nhi\r\n");
  });

  // msmtp as a cron job or mutt would use it: a message on stdin, STARTTLS, AUTH PLAIN, two recipients.
  test.skipIf(lacking("msmtp", "openssl"))(
    "msmtp: STARTTLS, AUTH, two recipients, the message from stdin",
    async () => {
      const before = acceptor.messages.length;
      const r = await run(
        [
          msmtp!,
          "--host=127.0.0.1",
          `--port=${listener.port}`,
          "--domain=msmtp.test",
          "--tls=on",
          "--tls-starttls=on",
          "--tls-certcheck=off",
          "--auth=plain",
          "--user=alice",
          "--passwordeval=echo s3cret",
          "--from=cron@example.com",
          "--",
          "d@example.org",
          "e@example.org",
        ],
        "From: cron@example.com\nSubject: via msmtp\n\n.a line with a dot\nbody\n",
      );
      expect(r.code, r.err).toBe(0);
      const got = since(before);
      expect(got.length).toBe(1);
      expect(got[0]!.envelope.authUser).toBe("alice");
      expect(got[0]!.envelope.tls?.protocol).toMatch(/^TLSv1\.[23]$/);
      expect(got[0]!.envelope.recipients.map((x) => x.address)).toEqual(["d@example.org", "e@example.org"]);
      expect(got[0]!.text).toContain("Subject: via msmtp\r\n\r\n.a line with a dot\r\nbody\r\n");
    },
  );
});
