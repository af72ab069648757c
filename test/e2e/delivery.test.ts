import { describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { deliveryLog, startMta, tempDir, testConfig } from "../support/mta.ts";
import { startSink } from "../support/sink.ts";
import { lacking } from "../support/peers.ts";

function swaks(port: number, args: string[]): { code: number; out: string } {
  const r = spawnSync(["swaks", "--server", `127.0.0.1:${port}`, "--helo", "client.test", ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

async function waitFor<T>(fn: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("timed out");
    await Bun.sleep(25);
  }
}

describe.skipIf(lacking("swaks", "smtp-sink", "python3"))("mail through mta serve", () => {
  test("swaks → mta serve → smtp-sink: the exact bytes arrive, dot-stuffed lines survive", async () => {
    using dir = tempDir();
    await using sink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" }, retry: [1s] }`,
      ),
    });
    const body = "Subject: dots\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n";
    const r = swaks(mta.smtpPorts[0]!, [
      "--from",
      "alice@app.test",
      "--to",
      "bob@example.net",
      "--data",
      body,
    ]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/);
    const [dump] = await sink.waitFor(1);
    // The body as received (smtp-sink dumps lines with LF): our Received: header, then the exact lines swaks sent.
    expect(dump).toContain("Received: from client.test");
    expect(dump).toContain("\nSubject: dots\n\nline one\n.leading dot\n..two dots\n.\nnot the end\n");
    const log = await waitFor(() => {
      const l = deliveryLog(dir.path);
      return l.some((e) => e.type === "delivery") ? l : undefined;
    });
    expect(log.find((e) => e.type === "reception")).toMatchObject({
      sender: "alice@app.test",
      destination: "example.net",
    });
    expect(log.find((e) => e.type === "delivery")).toMatchObject({ recipient: "bob@example.net", code: 250 });
  }, 30_000);

  test("a 550 recipient produces a DSN to the sender that Python's email parser reads as a delivery-status report", async () => {
    using dir = tempDir();
    // The receiving MX for example.net rejects every RCPT with 550; the sender's domain goes to a sink.
    await using reject = await startSink({
      dir: dir.path,
      args: ["-f", "RCPT", "-B", "550 5.1.1 No such user"],
    });
    await using senderSink = await startSink({ dir: dir.path });
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(
        dir.path,
        `delivery: { routes: { example.net: "127.0.0.1:${reject.port}", app.test: "127.0.0.1:${senderSink.port}" } }`,
      ),
    });
    const r = swaks(mta.smtpPorts[0]!, ["--from", "alice@app.test", "--to", "nobody@example.net"]);
    expect(r.code).toBe(0);
    const [dsn] = await senderSink.waitFor(1, 15_000);
    const py = spawnSync(
      [
        "python3",
        "-c",
        [
          "import sys, email",
          "from email import policy",
          "m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)",
          "print(m.get_content_type(), m.get_param('report-type'))",
          "for p in m.walk():",
          "    if p.get_content_type() == 'message/delivery-status':",
          "        for block in p.get_payload():",
          "            for k in ('Final-Recipient', 'Action', 'Status'):",
          "                if block.get(k): print(k + ': ' + str(block.get(k)))",
        ].join("\n"),
      ],
      { stdin: Buffer.from(dsn!, "latin1") },
    );
    const out = py.stdout.toString();
    expect(out).toContain("multipart/report delivery-status");
    expect(out).toContain("Final-Recipient: rfc822; nobody@example.net");
    expect(out).toContain("Action: failed");
    expect(out).toContain("Status: 5.1.1");
  }, 30_000);

  test("messages acknowledged with 250 survive kill -9 of the daemon and are delivered after restart", async () => {
    using dir = tempDir();
    // First life: the route is dead (nothing listens on port 9), so nothing is delivered before the kill.
    const config = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1s] }");
    const ids: string[] = [];
    {
      await using mta = await startMta({ dir: dir.path, config });
      for (let i = 0; i < 5; i++) {
        const r = swaks(mta.smtpPorts[0]!, ["--from", "a@app.test", "--to", `r${i}@example.net`]);
        const m = /queued as ([0-9A-Z]{14})/.exec(r.out);
        expect(m).not.toBeNull();
        ids.push(m![1]!);
      }
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    await using sink = await startSink({ dir: dir.path });
    await using again = await startMta({
      dir: dir.path,
      config: config.replace("example.net: '127.0.0.1:9'", `example.net: '127.0.0.1:${sink.port}'`),
    });
    expect(again.logLines().find((l) => l.msg === "spool open")?.messages).toBe(5);
    const dumps = await sink.waitFor(5, 20_000);
    expect(dumps).toHaveLength(5);
    const delivered = await waitFor(() => {
      const l = deliveryLog(dir.path).filter((e) => e.type === "delivery");
      return l.length >= 5 ? l : undefined;
    });
    expect(delivered.map((e) => e.id).sort()).toEqual(ids.sort());
  }, 40_000);
});
