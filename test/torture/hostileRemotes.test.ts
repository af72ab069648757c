import { expect, test } from "bun:test";
import { hostileRemotes, hostileRemotesDefaults } from "../../torture/hostileRemotes.ts";

test("hostile remotes: attempts time out and retry, connections return to 0, everything is delivered once the servers behave", async () => {
  const r = await hostileRemotes(
    { ...hostileRemotesDefaults, messagesPerServer: 5, hostileMs: 10_000, flushEveryMs: 3_000 },
    () => {},
  );
  expect(r.violations).toEqual([]);
  expect(r.figures.activeLeft).toBe(0);
  expect(r.figures.idleLeft).toBe(0);
  expect(r.figures.socketsLeft).toBe(0);
  expect(Number(r.figures.acknowledged)).toBe(35);
  expect(r.lost).toBe(0);
}, 60_000);
