import { expect, test } from "bun:test";
import { hostileClients, hostileClientsDefaults } from "../../torture/hostileClients.ts";

test("hostile clients: fuzz, slowloris, floods, oversize and smuggling; the good client keeps getting 250, nothing split or merged, RSS bounded", async () => {
  const r = await hostileClients(
    { ...hostileClientsDefaults, durationMs: 12_000, fuzzSessions: 6, slowloris: 20 },
    () => {},
  );
  expect(r.violations).toEqual([]);
  expect(Number(r.figures.probeOk)).toBeGreaterThan(10);
  expect(Number(r.figures.fuzzSessions)).toBeGreaterThan(100);
  expect(Number(r.figures.smuggleRejected) + Number(r.figures.smuggleAccepted)).toBeGreaterThan(10);
  expect(r.figures.smuggledAlone).toBe(0);
  expect(r.figures.merged).toBe(0);
  expect(r.figures.oversizeAccepted).toBe(0);
  expect(r.lost).toBe(0);
}, 60_000);
