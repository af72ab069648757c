import { expect, test } from "bun:test";
import { diskFull, diskFullDefaults } from "../../torture/diskFull.ts";
import { lacking } from "../support/peers.ts";

// Mounting the small tmpfs needs root; the scenario reports "not run" (a failure) when it cannot mount.
test.skipIf(lacking("root"))(
  "disk full: 452 while the spool's filesystem is full, 250 again once space returns, nothing acknowledged lost",
  async () => {
    const r = await diskFull(
      { ...diskFullDefaults, rounds: 2, refusals: 50, fullTimeoutMs: 15_000 },
      () => {},
    );
    expect(r.violations).toEqual([]);
    expect(Number(r.figures.refused452)).toBeGreaterThanOrEqual(100);
    expect(r.figures.recovered).toBe(2);
    expect(r.lost).toBe(0);
  },
  60_000,
);
