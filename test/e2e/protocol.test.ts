/**
 * RFC exactness at the SMTP edge, through dist/mta with Python's smtplib as the client: replies that
 * fit one 512-octet line whatever the number of queue entries, recipients stored once, <postmaster>,
 * and the junk command limit.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { controlFetch, deliveryLog, startMta, tempDir, testConfig } from "../support/mta.ts";
import { startSink } from "../support/sink.ts";

/** Runs a Python 3 script (smtplib is the client under test) and returns what it printed as JSON. */
function py(script: string, env: Record<string, string>): Record<string, unknown> {
  const r = spawnSync(["/usr/bin/python3", "-c", script], {
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  if (r.exitCode !== 0) throw new Error(`python failed (${r.exitCode}): ${r.stderr.toString()}`);
  return JSON.parse(r.stdout.toString());
}

/** Every RCPT address smtp-sink recorded, over all its dumps (one X-Rcpt-Args line per RCPT). */
function rcptsOf(dumps: string[]): string[] {
  return dumps.flatMap((d) => [...d.matchAll(/^X-Rcpt-Args: <([^>]*)>/gm)].map((m) => m[1]!));
}

describe("SMTP replies and transactions (dist/mta, Python smtplib)", () => {
  test("smtplib sends one message to 1,000 domains: one 250 line of at most 512 octets, every recipient receives it exactly once", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { "*": "127.0.0.1:${sink.port}" }, retry: [1s] }`),
    });
    const out = py(
      `
import json, os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]))
s.ehlo("client.test")
rcpts = ["user%d@domain%04d.test" % (i, i) for i in range(1000)]
refused = s.sendmail("app@sender.test", rcpts, "Subject: many\\r\\n\\r\\nhello\\r\\n")
# sendmail raised if the reply was not 250 or a line was too long; ask again for the raw reply length.
s.mail("app@sender.test")
for r in rcpts: s.rcpt(r)
code, text = s.data("Subject: again\\r\\n\\r\\nhello\\r\\n")
s.quit()
print(json.dumps({"refused": list(refused), "code": code, "text": text.decode()}))
`,
      { PORT: String(mta.smtpPorts[0]) },
    );
    expect(out.refused).toEqual([]);
    expect(out.code).toBe(250);
    const line = `250 ${out.text}\r\n`;
    expect(Buffer.byteLength(line)).toBeLessThanOrEqual(512);
    const m = /^2\.0\.0 Ok: queued as ((?:[0-9A-Z]{14} ?)+) \(and (\d+) more\)$/.exec(String(out.text));
    expect(m).not.toBeNull();
    const named = m![1]!.trim().split(" ");
    expect(named.length + Number(m![2])).toBe(1000);
    // Both transactions: 2,000 queue entries, each recipient exactly twice (once per transaction), no more.
    const dumps = await sink.waitFor(2000, 60_000);
    const rcpts = rcptsOf(dumps);
    expect(rcpts).toHaveLength(2000);
    const counts = new Map<string, number>();
    for (const r of rcpts) counts.set(r, (counts.get(r) ?? 0) + 1);
    expect(counts.size).toBe(1000);
    expect([...counts.values()].every((n) => n === 2)).toBe(true);
    // Every id is in the delivery log, tied to the first one named in the reply.
    const receptions = deliveryLog(dir.path).filter(
      (e) => e.type === "reception" && e.transaction === named[0],
    );
    expect(receptions).toHaveLength(1000);
    expect(receptions.map((e) => e.id)).toEqual(expect.arrayContaining(named));
  }, 90_000);

  test("the same recipient three times is delivered once; the local part is exact, the domain is not case-sensitive", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { "*": "127.0.0.1:${sink.port}" } }`),
    });
    const out = py(
      `
import json, os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]))
refused = s.sendmail("app@sender.test", ["bob@x.test", "bob@X.TEST", "bob@x.test", "Bob@x.test"], "Subject: d\\r\\n\\r\\nhi\\r\\n")
s.quit()
print(json.dumps({"refused": list(refused)}))
`,
      { PORT: String(mta.smtpPorts[0]) },
    );
    expect(out.refused).toEqual([]);
    const [dump] = await sink.waitFor(1);
    await Bun.sleep(300);
    expect(sink.dumps()).toHaveLength(1);
    expect(rcptsOf(sink.dumps()).sort()).toEqual(["Bob@x.test", "bob@x.test"]);
    const r = await controlFetch(mta.dir, "/api/v1/inject", {
      method: "POST",
      body: JSON.stringify({
        sender: "app@sender.test",
        recipients: ["ann@y.test", "ann@Y.test"],
        text: "x",
      }),
    });
    expect(r.status).toBe(200);
    await sink.waitFor(2);
    await Bun.sleep(300);
    expect(rcptsOf(sink.dumps()).filter((a) => a.startsWith("ann@"))).toEqual(["ann@y.test"]);
    expect(dump).toContain("Subject: d");
  }, 30_000);

  test("RCPT TO:<postmaster> is accepted from a client that may not relay, and goes to postmaster@<hostname>", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { mta.test: "127.0.0.1:${sink.port}" } }`).replace(
        "listen: [{ address: 127.0.0.1:0 }]",
        "listen: [{ address: 127.0.0.1:0, relay_from: [] }]",
      ),
    });
    const out = py(
      `
import json, os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]))
s.ehlo("client.test")
s.mail("reporter@outside.test")
other = s.rcpt("someone@example.net")
pm = s.rcpt("<PostMaster>")
code, text = s.data("Subject: abuse report\\r\\n\\r\\nhello\\r\\n")
s.quit()
print(json.dumps({"other": [other[0], other[1].decode()], "pm": [pm[0], pm[1].decode()], "data": code}))
`,
      { PORT: String(mta.smtpPorts[0]) },
    );
    expect(out.other).toEqual([554, "5.7.1 Relay access denied"]);
    expect(out.pm).toEqual([250, "2.1.5 Ok"]);
    expect(out.data).toBe(250);
    const [dump] = await sink.waitFor(1);
    expect(rcptsOf([dump!])).toEqual(["postmaster@mta.test"]);
  }, 30_000);

  test("NOOP, RSET, VRFY and HELP past max_junk_commands count as errors; an accepted message resets the count", async () => {
    using dir = tempDir();
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, "delivery: { routes: { x.test: '127.0.0.1:9' } }").replace(
        "listen: [{ address: 127.0.0.1:0 }]",
        "listen: [{ address: 127.0.0.1:0, max_junk_commands: 20, max_errors: 3 }]",
      ),
    });
    const out = py(
      `
import json, os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]))
s.ehlo("client.test")
codes = []
for i in range(20):
    codes.append([s.noop, s.rset, lambda: s.verify("a"), lambda: s.docmd("HELP")][i % 4]()[0])
s.sendmail("a@b.test", ["c@x.test"], "Subject: s\\r\\n\\r\\nx\\r\\n")
for i in range(20): codes.append(s.noop()[0])
# The count was reset by the message: 20 more are fine, then each one is an error; the third ends it.
late = [s.noop()[0], s.noop()[0], s.noop()[0]]
# The third error's 250 is followed by the 421 that ends the session; smtplib reads it as the next reply.
nxt = s.noop()
try:
    s.noop()
    after = "open"
except smtplib.SMTPServerDisconnected:
    after = "closed"
print(json.dumps({"codes": codes, "late": late, "next": [nxt[0], nxt[1].decode()], "after": after}))
`,
      { PORT: String(mta.smtpPorts[0]) },
    );
    expect((out.codes as number[]).filter((c) => c !== 250 && c !== 252 && c !== 214)).toEqual([]);
    expect(out.codes).toHaveLength(40);
    expect(out.late).toEqual([250, 250, 250]);
    expect(out.next).toEqual([421, "4.7.0 mta.test Error: too many errors"]);
    expect(out.after).toBe("closed");
  }, 30_000);
});
