/**
 * The list's cluster-mode parts without Redis: the outbox of own changes, the order rule for changes
 * from other nodes, the durable stream position, and recovery after a crash between the outbox's
 * write and the list's.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import {
  CHANGE_REMOVE,
  decodeChanges,
  encodeChanges,
  LOG_FILE,
  type SuppressionChange,
  SuppressionList,
} from "../../src/suppression/index.ts";
import { tempDir } from "../support/mta.ts";

const add = (address: string, reason = 0): SuppressionChange => ({
  type: 1,
  reason,
  addedSec: 1_700_000_000,
  expiresSec: 0,
  scope: "",
  address,
});
const remove = (address: string): SuppressionChange => ({ ...add(address), type: CHANGE_REMOVE });

describe("SuppressionList in cluster mode (shared: true)", () => {
  test("own changes wait in the outbox, numbered; changes from other nodes do not; both survive a reopen", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, shared: true });
    await l.add([{ address: "a@example.net" }, { address: "b@example.net" }]);
    await l.remove([{ address: "a@example.net" }]);
    expect(await l.applyShared([add("c@example.net")])).toBe(1);
    expect(l.has("c@example.net")).toBe(true);
    const own = l.ownChanges(0, 10);
    expect(own.firstSeq).toBe(1);
    expect(own.changes.map((c) => [c.type, c.address])).toEqual([
      [1, "a@example.net"],
      [1, "b@example.net"],
      [CHANGE_REMOVE, "a@example.net"],
    ]);
    await l.close();
    const again = await SuppressionList.open({ dir: dir.path, shared: true });
    expect(again.ownPendingCount).toBe(3);
    expect(again.ownChanges(2, 10).changes.map((c) => c.address)).toEqual(["b@example.net", "a@example.net"]);
    // Confirmed through 2 and saved with the position: gone from the outbox, also after a reopen.
    await again.advanceShared({ epoch: "e1", id: "5-0", read: 3 }, 2);
    expect(again.ownPendingCount).toBe(1);
    await again.close();
    const third = await SuppressionList.open({ dir: dir.path, shared: true });
    expect(third.sharedPosition).toEqual({ epoch: "e1", id: "5-0", read: 3, confirmed: 2 });
    expect(third.ownChanges(0, 10)).toMatchObject({ firstSeq: 3, changes: [{ address: "a@example.net" }] });
    // Everything confirmed: the outbox is a bare header, and numbering goes on from 4.
    await third.advanceShared({ epoch: "e1", id: "6-0", read: 4 }, 3);
    expect(statSync(join(dir.path, "outbox.log")).size).toBe(16);
    await third.add([{ address: "d@example.net" }]);
    expect(third.ownChanges(0, 10).firstSeq).toBe(4);
    await third.close();
  });

  test("a change from another node that the stream puts before a pending own change of that key is not applied", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, shared: true });
    await l.add([{ address: "x@example.net" }]); // own change 1
    // Another node's removal, read from the stream before own change 1 came back: own 1 is later, it wins.
    expect(await l.applyShared([remove("x@example.net")], 0)).toBe(0);
    expect(l.has("x@example.net")).toBe(true);
    // The same removal after own change 1 in the stream: applied.
    expect(await l.applyShared([remove("x@example.net")], 1)).toBe(1);
    expect(l.has("x@example.net")).toBe(false);
    // What the list already shows is not written again.
    expect(
      await l.applyShared([remove("x@example.net"), add("y@example.net"), add("y@example.net")], 1),
    ).toBe(1);
    expect(await l.applyShared([add("y@example.net")], 1)).toBe(0);
    await l.close();
  });

  test("a crash between the outbox's write and the list's: the change is in the list after the next open", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, shared: true });
    const logBefore = statSync(join(dir.path, LOG_FILE)).size;
    await l.add([{ address: "late@example.net", reason: "complaint" }]);
    await l.close();
    truncateSync(join(dir.path, LOG_FILE), logBefore); // as if the list's write never happened
    const again = await SuppressionList.open({ dir: dir.path, shared: true });
    expect(again.check("late@example.net")).toEqual({ scope: "", reason: "complaint" });
    await again.close();
  });

  test("a full resync: the cluster's entries are applied, and local ones it lacks removed unless an own change is pending", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, shared: true });
    await l.applyShared([add("stale@example.net"), add("kept@example.net")]);
    await l.add([{ address: "mine@example.net" }]); // pending own change
    async function* pages() {
      yield [add("kept@example.net"), add("fresh@example.net")];
    }
    expect(await l.resyncShared(pages(), true)).toEqual({ applied: 1, removed: 1 });
    expect((await l.entries()).map((e) => e.address).sort()).toEqual([
      "fresh@example.net",
      "kept@example.net",
      "mine@example.net",
    ]);
    await l.close();
  });

  test("the whole list as add records, a bounded page at a time", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, sync: false });
    await l.add(
      Array.from({ length: 2500 }, (_, i) => ({
        address: `u${i}@example.net`,
        reason: "complaint" as const,
      })),
    );
    await l.remove([{ address: "u7@example.net" }]);
    const sizes: number[] = [];
    const seen = new Set<string>();
    await l.forEachChangePage(1000, async (page) => {
      sizes.push(page.length);
      for (const c of page) seen.add(`${c.type} ${c.reason} ${c.address}`);
      await Bun.sleep(1);
    });
    expect(sizes).toEqual([1000, 1000, 499]);
    expect(seen.size).toBe(2499);
    expect(seen.has("1 1 u0@example.net")).toBe(true);
    expect(seen.has("1 1 u7@example.net")).toBe(false);
    await l.close();
  });

  test("the wire encoding is the file's records, checked: a flipped byte is refused", () => {
    const bytes = encodeChanges([add("a@example.net", 3), remove("b@example.net")]);
    expect(decodeChanges(bytes).map((c) => [c.type, c.reason, c.address])).toEqual([
      [1, 3, "a@example.net"],
      [CHANGE_REMOVE, 0, "b@example.net"],
    ]);
    const bad = new Uint8Array(bytes);
    bad[20] = bad[20]! ^ 1;
    expect(() => decodeChanges(bad)).toThrow(/checksum/);
    expect(() => decodeChanges(bytes.subarray(0, bytes.length - 1))).toThrow(/incomplete/);
  });

  test("without shared: no outbox and no position file", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add([{ address: "a@example.net" }]);
    await l.close();
    expect(existsSync(join(dir.path, "outbox.log"))).toBe(false);
    expect(existsSync(join(dir.path, "shared.pos"))).toBe(false);
    expect(readFileSync(join(dir.path, LOG_FILE)).length).toBeGreaterThan(16);
  });
});
