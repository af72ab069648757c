import { expect, test } from "bun:test";
import { crashLoop, crashLoopDefaults } from "../../torture/crashLoop.ts";

test("crash loop: every message acknowledged with 250 is delivered after kill -9 restarts; duplicates only across kills", async () => {
  const r = await crashLoop(
    { ...crashLoopDefaults, rounds: 6, sessions: 4, minLifeMs: 100, maxLifeMs: 800, drainTimeoutMs: 30_000 },
    () => {},
  );
  expect(r.figures.kills).toBe(6);
  expect(Number(r.figures.acknowledged)).toBeGreaterThan(100);
  expect(r.violations).toEqual([]);
  expect(r.lost).toBe(0);
}, 60_000);
