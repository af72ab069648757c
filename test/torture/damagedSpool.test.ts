import { expect, test } from "bun:test";
import { damagedSpool, damagedSpoolDefaults } from "../../torture/damagedSpool.ts";

test("damaged spool: verify exits 65 naming the damage, recovery logs and skips it, every intact message is delivered", async () => {
  const r = await damagedSpool({ ...damagedSpoolDefaults, rounds: 2, messages: 400 }, () => {});
  expect(r.violations).toEqual([]);
  expect(Number(r.figures.flips)).toBeGreaterThan(0);
  expect(Number(r.figures.reported)).toBeGreaterThan(0);
  expect(Number(r.figures.expected)).toBeGreaterThan(600);
  expect(r.lost).toBe(0);
}, 60_000);
