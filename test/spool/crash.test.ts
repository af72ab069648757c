import { expect, test } from "bun:test";
import { join } from "node:path";
import { Spool } from "../../src/spool/index.ts";
import { tempDir } from "./helpers.ts";

interface Known {
  acked: boolean;
  attemptsAcked: number;
  finalStarted: boolean;
  finalAcked: boolean;
}

test("after kill -9 at random moments, every acknowledged message is there with its latest acknowledged state", async () => {
  using tmp = tempDir();
  const known = new Map<string, Known>();
  const get = (id: string): Known => {
    let k = known.get(id);
    if (!k) known.set(id, (k = { acked: false, attemptsAcked: 0, finalStarted: false, finalAcked: false }));
    return k;
  };
  let seed = 42;
  const rand = (): number => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const rounds = 12;
  for (let round = 0; round < rounds; round++) {
    const child = Bun.spawn([process.execPath, join(import.meta.dir, "crash-child.ts"), tmp.dir], {
      stdout: "pipe",
      stderr: "inherit",
    });
    let text = "";
    const reader = child.stdout.getReader();
    const decoder = new TextDecoder();
    const pump = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        text += decoder.decode(value, { stream: true });
      }
    })();
    while (!text.includes("ready\n")) await Bun.sleep(5);
    await Bun.sleep(30 + Math.floor(rand() * 200));
    child.kill("SIGKILL");
    await child.exited;
    await pump;
    expect(child.signalCode).toBe("SIGKILL");
    const lines = text.split("\n");
    lines.pop(); // an incomplete last line
    for (const line of lines) {
      const [kind, id] = line.split(" ");
      if (!id) continue;
      const k = get(id);
      if (kind === "A") k.acked = true;
      else if (kind === "d") k.attemptsAcked = 1;
      else if (kind === "F") k.finalStarted = true;
      else if (kind === "f") k.finalAcked = true;
    }
    const spool = await Spool.open({ dir: tmp.dir, segmentSizeBytes: 32 * 1024 });
    expect(spool.recovery.damaged).toEqual([]);
    let live = 0;
    for (const [id, k] of known) {
      if (!k.acked) continue;
      const slot = spool.slotOf(id);
      if (k.finalAcked) {
        expect(slot).toBeUndefined();
        continue;
      }
      if (slot === undefined) {
        // Only a final outcome that was in flight at the kill may have finished it.
        expect(k.finalStarted).toBe(true);
        k.finalAcked = true;
        continue;
      }
      live++;
      const env = spool.readEnvelope(slot);
      expect(env.attempts).toBeGreaterThanOrEqual(k.attemptsAcked);
      expect(env.recipients[0]!.state).toBe("pending");
      if (env.attempts > 0) expect(env.recipients[0]!.lastReply).toBe("451 later");
    }
    // More is fine: a batch can be durable when the kill lands before its acknowledgement is printed.
    expect(spool.messageCount).toBeGreaterThanOrEqual(live);
    await spool.close();
  }
  expect([...known.values()].filter((k) => k.acked).length).toBeGreaterThan(rounds * 50);
}, 60_000);
