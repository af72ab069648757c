/**
 * Interop with Postfix's smtp-sink, a real receiver nobody here wrote: the exact bytes arrive
 * (smtp-sink undoes the dot-stuffing and writes LF line ends), and its failure modes map to results.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import {
  type AttemptTarget,
  Deliverer,
  type OutboundMessage,
  RFC5321_TIMEOUTS,
} from "../../src/deliverer/index.ts";
import { silentLogger } from "../../src/observe/index.ts";
import { closedPort } from "../support/scriptedPeer.ts";
import { lacking, peer } from "../support/peers.ts";

const SINK = peer("smtp-sink");
const NO_SINK = lacking("smtp-sink");
const FAST = {
  ...RFC5321_TIMEOUTS,
  connectMs: 2000,
  greetingMs: 2000,
  dataInitMs: 500,
  dataDoneMs: 500,
  quitMs: 500,
};

let tmp: string;
const sinks: Bun.Subprocess[] = [];

beforeAll(() => {
  tmp = fs.mkdtempSync(`${os.tmpdir()}/mta-sink-`);
  fs.chmodSync(tmp, 0o777); // smtp-sink drops to `nobody` when run as root
});
afterAll(async () => {
  for (const s of sinks) {
    s.kill();
    await s.exited;
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function startSink(name: string, args: string[] = []): Promise<{ port: number; dir: string }> {
  const dir = `${tmp}/${name}`;
  fs.mkdirSync(dir, { mode: 0o777 });
  fs.chmodSync(dir, 0o777);
  const port = await closedPort();
  const user = process.getuid?.() === 0 ? ["-u", "nobody"] : [];
  const p = Bun.spawn([SINK!, ...user, ...args, "-d", `${dir}/%M.`, `127.0.0.1:${port}`, "100"], {
    stdout: "ignore",
    stderr: "ignore",
  });
  sinks.push(p);
  for (let i = 0; i < 200; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.on("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (up) return { port, dir };
    await Bun.sleep(10);
  }
  throw new Error("smtp-sink did not start");
}

function target(port: number): AttemptTarget {
  return {
    hosts: [{ name: "sink.test", ip: "127.0.0.1", port }],
    ehloName: "client.test",
    tls: "off",
    tlsVerify: false,
  };
}

function message(body: string, rcpts: string[]): OutboundMessage {
  return {
    id: "SINKTEST",
    sender: "sender@client.test",
    recipients: rcpts.map((address, index) => ({ index, address })),
    body: new TextEncoder().encode(body),
    needsSmtputf8: false,
    eightBit: false,
  };
}

/** The message as smtp-sink dumped it: its own headers up to its Received header removed. */
async function dumped(dir: string, count: number): Promise<{ headers: string; message: string }[]> {
  for (let i = 0; i < 300 && fs.readdirSync(dir).length < count; i++) await Bun.sleep(10);
  const files = fs.readdirSync(dir).sort();
  return files.map((f) => {
    const text = fs.readFileSync(`${dir}/${f}`, "latin1");
    const m = /^([\s\S]*?\nReceived: [^\n]*\n\t[^\n]*\n\t[^\n]*\n)([\s\S]*)$/.exec(text);
    if (!m) throw new Error(`unexpected dump format in ${f}`);
    return { headers: m[1]!, message: m[2]! };
  });
}

const asSinkWrites = (body: string) => `${body.replace(/\r\n/g, "\n")}\n`;

test.skipIf(NO_SINK)(
  "smtp-sink receives the exact message, dot lines included, for every recipient",
  async () => {
    const { port, dir } = await startSink("exact");
    const body =
      "From: a@client.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n.hidden\r\nplain\r\n. space\r\nlast\r\n";
    const d = new Deliverer({
      timeouts: FAST,
      maxMessagesPerConnection: 10,
      idleTimeoutMs: 5000,
      log: silentLogger(),
    });
    const r = await d.deliver(target(port), message(body, ["x@a.test", "y@a.test", "z@a.test"]));
    expect(r.recipients.map((x) => x.kind)).toEqual(["delivered", "delivered", "delivered"]);
    const [m] = await dumped(dir, 1);
    expect(m!.message).toBe(asSinkWrites(body));
    expect(m!.headers).toContain(
      "X-Rcpt-Args: <x@a.test>\nX-Rcpt-Args: <y@a.test>\nX-Rcpt-Args: <z@a.test>\n",
    );
    expect(m!.headers).toContain("X-Mail-Args: <sender@client.test>\n");
    await d.close();
  },
);

test.skipIf(NO_SINK)(
  "a 2 MB message and several messages on one reused connection arrive intact",
  async () => {
    const { port, dir } = await startSink("big");
    const line = `${"x".repeat(76)}\r\n`;
    const big = `Subject: big\r\n\r\n${line.repeat(Math.ceil(2_000_000 / line.length))}`;
    const d = new Deliverer({
      timeouts: FAST,
      maxMessagesPerConnection: 10,
      idleTimeoutMs: 5000,
      log: silentLogger(),
    });
    const bodies = [big, "Subject: 2\r\n\r\ntwo\r\n", "Subject: 3\r\n\r\n.three\r\n"];
    for (const b of bodies)
      expect((await d.deliver(target(port), message(b, ["r@a.test"]))).recipients[0]!.kind).toBe("delivered");
    const got = await dumped(dir, 3);
    expect(got.map((g) => g.message).sort()).toEqual(bodies.map(asSinkWrites).sort());
    await d.close();
  },
);

test.skipIf(NO_SINK)(
  "smtp-sink's 421 after RCPT (-Q) and soft RCPT rejects (-r) defer the recipients",
  async () => {
    const q = await startSink("q421", ["-Q", "RCPT"]);
    const d = new Deliverer({
      timeouts: FAST,
      maxMessagesPerConnection: 10,
      idleTimeoutMs: 5000,
      log: silentLogger(),
    });
    const r1 = await d.deliver(target(q.port), message("Subject: q\r\n\r\nq\r\n", ["a@a.test", "b@a.test"]));
    expect(r1.recipients.map((x) => [x.kind, x.reply.code])).toEqual([
      ["transient", 421],
      ["transient", 421],
    ]);
    const soft = await startSink("soft", ["-r", "RCPT"]);
    const r2 = await d.deliver(target(soft.port), message("Subject: s\r\n\r\ns\r\n", ["a@a.test"]));
    expect(r2.recipients[0]!.kind).toBe("transient");
    expect(r2.recipients[0]!.reply.code).toBeGreaterThanOrEqual(400);
    expect(r2.recipients[0]!.reply.code).toBeLessThan(500);
    await d.close();
  },
);

test.skipIf(NO_SINK)(
  "a slow smtp-sink (-W, delayed reply to the final dot) beyond the timeout defers",
  async () => {
    const { port } = await startSink("slow", ["-W", ".:1"]);
    const d = new Deliverer({
      timeouts: FAST,
      maxMessagesPerConnection: 10,
      idleTimeoutMs: 5000,
      log: silentLogger(),
    });
    const r = await d.deliver(target(port), message("Subject: slow\r\n\r\nslow\r\n", ["a@a.test"]));
    expect(r.recipients[0]).toMatchObject({ kind: "transient", reply: { enhanced: "4.4.2" } });
    await d.close();
  },
);
