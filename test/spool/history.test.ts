import { expect, test } from "bun:test";
import { ManualClock } from "../../src/lib/index.ts";
import { Spool } from "../../src/spool/index.ts";
import { msg, tempDir } from "./helpers.ts";

test("a message appended with its history keeps arrival, attempts, next attempt and last replies across reopen", async () => {
  using tmp = tempDir();
  const clock = new ManualClock(1_800_000_000_000);
  let spool = await Spool.open({ dir: tmp.dir, clock });
  const m = msg(3, 2, 100);
  const arrivalMs = 1_799_000_000_000;
  const nextAttemptMs = 1_800_000_600_000;
  const { id, slot } = await spool.append({
    ...m,
    arrivalMs,
    attempts: 4,
    nextAttemptMs,
    recipients: [
      { address: m.recipients[0]!.address, lastReply: "451 4.3.0 try later" },
      { address: m.recipients[1]!.address },
    ],
  });
  expect([spool.arrivalOf(slot), spool.attemptsOf(slot), spool.nextAttemptOf(slot)]).toEqual([
    arrivalMs,
    4,
    nextAttemptMs,
  ]);
  await spool.close();
  spool = await Spool.open({ dir: tmp.dir, clock, bodyCacheBytes: 0 });
  const again = spool.slotOf(id)!;
  const e = spool.readEnvelope(again);
  expect([e.arrivalMs, e.attempts, e.nextAttemptMs]).toEqual([arrivalMs, 4, nextAttemptMs]);
  expect(e.recipients.map((r) => [r.state, r.lastReply])).toEqual([
    ["pending", "451 4.3.0 try later"],
    ["pending", undefined],
  ]);
  // The next attempt's outcome builds on that history.
  await spool.recordOutcome(again, {
    recipients: [{ index: 1, state: "delivered", reply: "250 ok" }],
    attempts: 5,
  });
  expect(spool.readEnvelope(again).recipients.map((r) => [r.state, r.lastReply])).toEqual([
    ["pending", "451 4.3.0 try later"],
    ["delivered", "250 ok"],
  ]);
  await spool.close();
});
