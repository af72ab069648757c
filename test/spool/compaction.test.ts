import { expect, test } from "bun:test";
import * as fs from "node:fs";
import { type LastTls, Spool } from "../../src/spool/index.ts";
import { msg, segmentFiles, tempDir } from "./helpers.ts";

interface Model {
  states: string[];
  attempts: number;
  replies: (string | undefined)[];
  tls: (LastTls | undefined)[];
}

/** A seeded PRNG so that a failure replays. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function check(spool: Spool, model: Map<string, Model>): Promise<void> {
  expect(spool.messageCount).toBe(model.size);
  for (const [id, m] of model) {
    const slot = spool.slotOf(id);
    expect(slot).toBeDefined();
    const env = spool.readEnvelope(slot!);
    expect(env.recipients.map((r) => r.state as string)).toEqual(m.states);
    expect(env.recipients.map((r) => r.lastReply)).toEqual(m.replies);
    expect(env.recipients.map((r) => r.lastTls)).toEqual(m.tls);
    expect(env.attempts).toBe(m.attempts);
  }
}

for (const seed of [1, 2, 3]) {
  test(`random appends, outcomes, compactions and reopens never lose or resurrect a message (seed ${seed})`, async () => {
    using tmp = tempDir();
    const rand = rng(seed);
    const opts = { dir: tmp.dir, segmentSizeBytes: 4096, sync: false, compactBelowLiveRatio: 0.5 };
    let spool = await Spool.open(opts);
    const model = new Map<string, Model>();
    const finished: string[] = [];
    for (let step = 0; step < 1500; step++) {
      const r = rand();
      if (r < 0.45 || model.size === 0) {
        const n = 1 + Math.floor(rand() * 3);
        const { id } = await spool.append(msg(step, n, Math.floor(rand() * 300)));
        model.set(id, {
          states: new Array(n).fill("pending"),
          attempts: 0,
          replies: new Array(n).fill(undefined),
          tls: new Array(n).fill(undefined),
        });
      } else if (r < 0.95) {
        const ids = [...model.keys()];
        const id = ids[Math.floor(rand() * ids.length)]!;
        const m = model.get(id)!;
        const updates: {
          index: number;
          state: "pending" | "delivered" | "failed";
          reply: string;
          tls?: LastTls;
        }[] = [];
        // Some attempts had TLS (a few distinct kinds, so records share table entries), some not.
        const t = rand();
        const tls: LastTls | undefined =
          t < 0.3
            ? undefined
            : t < 0.6
              ? { policy: "opportunistic", verified: false }
              : { policy: "dane", version: "TLSv1.3", cipher: `C${step % 3}`, verified: true };
        m.states.forEach((s, index) => {
          if (s !== "pending" || rand() < 0.3) return;
          const state = rand() < 0.5 ? "pending" : rand() < 0.7 ? "delivered" : "failed";
          updates.push({ index, state, reply: `${state} at ${step}`, ...(tls ? { tls } : {}) });
        });
        m.attempts++;
        await spool.recordOutcome(spool.slotOf(id)!, {
          recipients: updates,
          attempts: m.attempts,
          nextAttemptMs: step,
        });
        for (const u of updates) {
          m.states[u.index] = u.state;
          m.replies[u.index] = u.reply;
          m.tls[u.index] = u.tls;
        }
        if (!m.states.includes("pending")) {
          model.delete(id);
          finished.push(id);
        }
      } else if (r < 0.98) {
        await spool.compact();
      } else {
        await spool.close();
        spool = await Spool.open(opts);
        expect(spool.recovery.damaged).toEqual([]);
        await check(spool, model);
      }
    }
    await spool.compact();
    await check(spool, model);
    const info = spool.segmentInfo();
    await spool.close();
    spool = await Spool.open(opts);
    await check(spool, model);
    for (const id of finished) expect(spool.slotOf(id)).toBeUndefined();
    // Space is reclaimed: the files hold little more than the live data.
    const fileBytes = segmentFiles(tmp.dir).reduce((n, f) => n + fs.statSync(f).size, 0);
    const liveBytes = info.reduce((n, s) => n + s.liveBytes, 0);
    expect(fileBytes).toBeLessThan(liveBytes * 3 + 4 * 4096);
    await spool.close();
  });
}

test("a few long-deferred messages do not pin many segments", async () => {
  using tmp = tempDir();
  const spool = await Spool.open({ dir: tmp.dir, segmentSizeBytes: 8192, sync: false });
  const all = await Promise.all(Array.from({ length: 2000 }, (_, i) => spool.append(msg(i, 1, 200))));
  const keep = new Set(all.filter((_, i) => i % 200 === 0).map((r) => r.id));
  const segmentsBefore = segmentFiles(tmp.dir).length;
  for (const r of all) {
    if (keep.has(r.id)) continue;
    await spool.recordOutcome(r.slot, { recipients: [{ index: 0, state: "delivered" }], attempts: 1 });
  }
  await spool.compact();
  expect(spool.messageCount).toBe(keep.size);
  const segmentsAfter = segmentFiles(tmp.dir).length;
  expect(segmentsBefore).toBeGreaterThan(40);
  expect(segmentsAfter).toBeLessThan(8);
  expect(spool.stats().compactions).toBeGreaterThan(0);
  for (const id of keep) expect(spool.readEnvelope(spool.slotOf(id)!).id).toBe(id);
  await spool.close();
});
