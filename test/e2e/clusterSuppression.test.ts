/**
 * The suppression list shared by cluster nodes (dist/mta serve x 2-3, one real redis-server): a
 * change on one node is refused at RCPT on the others; an automatic suppression (550 5.1.1 at a
 * peer) travels too; a node that was down catches up; with Redis down each list keeps working, and
 * the lists converge when it is back (also when Redis lost its data, and when the stream was trimmed
 * past a stopped node).
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { api, startNodes } from "../support/cluster.ts";
import { lacking } from "../support/peers.ts";
import { runMta, type StartedMta, startMta, tempDir, waitUntil } from "../support/mta.ts";
import { startRedis } from "../support/redis.ts";
import { startScriptedPeer } from "../support/scriptedPeer.ts";
import { rawSession } from "../support/smtpClient.ts";

const env = { MTA_LOOPBACK_ONLY: "1" };

/** The node's answer to RCPT TO:<to> (after EHLO and MAIL FROM), through its SMTP listener. */
async function rcpt(node: StartedMta, to: string): Promise<string> {
  const s = await rawSession(node.smtpPorts[0]!);
  try {
    await s.reply();
    s.socket.write("EHLO client.test\r\n");
    await s.reply();
    s.socket.write("MAIL FROM:<app@origin.test>\r\n");
    await s.reply();
    s.socket.write(`RCPT TO:<${to}>\r\n`);
    return (await s.reply()).trim();
  } finally {
    s.socket.write("QUIT\r\n");
    s.socket.end();
  }
}

const refused = async (node: StartedMta, to: string) =>
  (await rcpt(node, to)).startsWith("550 5.7.1") ? true : undefined;
const accepted = async (node: StartedMta, to: string) =>
  (await rcpt(node, to)).startsWith("250") ? true : undefined;

function suppress(node: StartedMta, ...args: string[]) {
  const r = runMta(["suppress", ...args, "-c", node.configFile], { env });
  if (r.code !== 0) throw new Error(`mta suppress ${args.join(" ")}: ${r.code} ${r.stderr}`);
  return r;
}

/** Starts a stopped node again on its own directory and configuration. */
function restart(node: StartedMta & { node: string }) {
  return startMta({ dir: node.dir, config: readFileSync(node.configFile, "utf8"), env }).then((m) =>
    Object.assign(m, { node: node.node }),
  );
}

async function entries(node: StartedMta, withReason = false): Promise<string[]> {
  const r = await api<{ entries: { address: string; reason: string }[] }>(
    node,
    "GET",
    "/api/v1/suppressions?limit=1000",
  );
  return r.json.entries.map((e) => (withReason ? `${e.address} ${e.reason}` : e.address)).sort();
}

describe.skipIf(lacking("redis-server"))("the suppression list in cluster mode", () => {
  test("mta suppress add on one node: the others refuse that RCPT within about a second; remove travels too", async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    const nodes = await startNodes(dir.path, redis.url, 3);
    try {
      const [a, b, c] = [nodes[0]!, nodes[1]!, nodes[2]!];
      expect(await rcpt(b, "gone@example.net")).toMatch(/^250/);
      const t0 = performance.now();
      suppress(a, "add", "gone@example.net", "--reason", "bad-mailbox");
      await waitUntil("b refuses", () => refused(b, "gone@example.net"), 1500);
      await waitUntil("c refuses", () => refused(c, "gone@example.net"), 1500);
      const ms = performance.now() - t0;
      console.log(`suppress add on node-a refused at RCPT on node-b and node-c after ${ms.toFixed(0)} ms`);
      expect(await rcpt(c, "gone@example.net")).toBe(
        "550 5.7.1 <gone@example.net>: recipient address is on the suppression list (bad-mailbox)",
      );
      // The same entry, with its reason, on every node.
      const listed = await api<{ entries: { address: string; reason: string }[] }>(
        c,
        "GET",
        "/api/v1/suppressions",
      );
      expect(listed.json.entries).toEqual([
        expect.objectContaining({ address: "gone@example.net", reason: "bad-mailbox" }),
      ]);
      // A removal on another node reaches the first.
      suppress(c, "remove", "gone@example.net");
      await waitUntil("a accepts again", () => accepted(a, "gone@example.net"), 1500);
      await waitUntil("b accepts again", () => accepted(b, "gone@example.net"), 1500);
      // Nothing echoes: each node wrote the add and the remove once, published only its own.
      for (const n of nodes) {
        const h = await api<{ cluster: { suppression: { pending: number } } }>(n, "GET", "/healthz");
        expect(h.json.cluster.suppression.pending).toBe(0);
      }
      const stream = redis.cli("XLEN", "mta:log:suppression");
      expect(Number(stream)).toBe(2);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  }, 60_000);

  test("an automatic suppression from a 550 5.1.1 at node A's peer is refused at node B", async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    await using peer = await startScriptedPeer({
      rcpt: (to) =>
        to.startsWith("unknown@") ? "550 5.1.1 <unknown@example.net>: user unknown" : "250 2.1.5 ok",
    });
    const nodes = await startNodes(dir.path, redis.url, 2, {
      extra: `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" }, retry: [1h] }`,
    });
    try {
      const [a, b] = [nodes[0]!, nodes[1]!];
      const r = await api(a, "POST", "/api/v1/inject", {
        messages: [
          { sender: "app@origin.test", recipients: ["unknown@example.net"], subject: "s", text: "t\n" },
        ],
      });
      expect(r.status).toBe(200);
      await waitUntil("b refuses the bounced address", () => refused(b, "unknown@example.net"), 15_000);
      expect(await rcpt(b, "unknown@example.net")).toBe(
        "550 5.7.1 <unknown@example.net>: recipient address is on the suppression list (bad-mailbox)",
      );
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  }, 60_000);

  test("a node that was down catches up when it starts; a trimmed stream means a full resync", async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    const nodes = await startNodes(dir.path, redis.url, 2);
    let [a, b] = [nodes[0]!, nodes[1]!];
    try {
      suppress(a, "add", "old@example.net");
      await waitUntil("b has old", () => refused(b, "old@example.net"), 3000);
      expect(await b.stop()).toBe(0);
      // While b is down: an add and a remove on a, and a change made on b's own list by hand
      // (no daemon: it waits in b's outbox).
      suppress(a, "add", "new@example.net");
      suppress(a, "remove", "old@example.net");
      expect(suppress(b, "add", "offline@example.net").stdout).toBe("offline@example.net: added\n");
      b = await restart(b);
      await waitUntil("b has new", () => refused(b, "new@example.net"), 3000);
      await waitUntil("b lost old", () => accepted(b, "old@example.net"), 3000);
      await waitUntil("a has b's offline change", () => refused(a, "offline@example.net"), 3000);
      expect(await entries(a)).toEqual(["new@example.net", "offline@example.net"]);
      expect(await entries(b)).toEqual(["new@example.net", "offline@example.net"]);

      // b down again; the stream is trimmed past b's position: b resynchronises from Redis's copy.
      expect(await b.stop()).toBe(0);
      suppress(a, "add", "later@example.net");
      suppress(a, "remove", "new@example.net");
      redis.cli("XTRIM", "mta:log:suppression", "MAXLEN", "0");
      b = await restart(b);
      await waitUntil("b has later", () => refused(b, "later@example.net"), 3000);
      await waitUntil("b lost new", () => accepted(b, "new@example.net"), 3000);
      expect(await entries(b)).toEqual(["later@example.net", "offline@example.net"]);
      expect(
        b.logLines().some((l) => String(l.msg).includes("trimmed from the stream; resynchronised")),
      ).toBe(true);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  }, 90_000);

  test("Redis down: each node's list keeps working; back (even empty), the lists converge", async () => {
    using dir = tempDir();
    await using redis = await startRedis();
    const nodes = await startNodes(dir.path, redis.url, 2);
    try {
      const [a, b] = [nodes[0]!, nodes[1]!];
      suppress(a, "add", "both@example.net");
      suppress(a, "add", "contested@example.net");
      suppress(a, "add", "fought@example.net");
      await waitUntil("b has both", () => refused(b, "fought@example.net"), 3000);

      // A pause (Redis keeps its data): changes on both sides meanwhile, one of them on the same address.
      redis.freeze();
      await waitUntil("a sees Redis down", async () =>
        (await api<{ status: string }>(a, "GET", "/healthz")).json.status === "degraded" ? true : undefined,
      );
      suppress(a, "add", "during-a@example.net");
      suppress(b, "add", "during-b@example.net");
      suppress(b, "remove", "contested@example.net");
      // The same address changed on both sides: whichever the stream carries last wins on both.
      suppress(a, "add", "fought@example.net", "--reason", "complaint");
      suppress(b, "remove", "fought@example.net");
      // Local lists keep working without Redis.
      expect(await rcpt(a, "during-a@example.net")).toMatch(/^550 5\.7\.1/);
      expect(await rcpt(b, "both@example.net")).toMatch(/^550 5\.7\.1/);
      expect(await rcpt(b, "contested@example.net")).toMatch(/^250/);
      redis.thaw();
      await waitUntil("a has b's changes", () => refused(a, "during-b@example.net"), 10_000);
      await waitUntil("a applied b's removal", () => accepted(a, "contested@example.net"), 10_000);
      await waitUntil("b has a's", () => refused(b, "during-a@example.net"), 10_000);
      const agreed = await waitUntil("a and b agree", async () => {
        const [x, y] = [await entries(a, true), await entries(b, true)];
        return JSON.stringify(x) === JSON.stringify(y) ? x : undefined;
      });
      const want = ["both@example.net", "during-a@example.net", "during-b@example.net"];
      expect(agreed.filter((e) => !e.startsWith("fought@"))).toEqual(want.map((w) => `${w} manual`));
      const fought = agreed.filter((e) => e.startsWith("fought@"));
      expect([[], ["fought@example.net complaint"]]).toContainEqual(fought);
      if (fought.length > 0) want.push("fought@example.net");

      // Redis killed and started empty (no persistence): the nodes republish and merge their lists.
      await redis.kill();
      suppress(b, "add", "lost@example.net");
      await redis.start();
      await waitUntil(
        "a has b's change made while Redis was gone",
        () => refused(a, "lost@example.net"),
        15_000,
      );
      const all = [...want, "lost@example.net"].sort();
      expect(await entries(a)).toEqual(all);
      expect(await entries(b)).toEqual(all);
      expect(Number(redis.cli("HLEN", "mta:log:suppression:state"))).toBe(all.length);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  }, 90_000);
});

test("a single node (no cluster: section) keeps no outbox and no stream position", async () => {
  using dir = tempDir();
  await using mta = await startMta({ dir: dir.path, env });
  expect(runMta(["suppress", "add", "x@example.net", "-c", mta.configFile], { env }).code).toBe(0);
  const files = [...new Bun.Glob("*").scanSync(join(dir.path, "spool", "suppression"))].sort();
  expect(files).toEqual(["LOCK", "suppressions.log"]);
});
