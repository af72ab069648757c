import { describe, expect, test } from "bun:test";
import { appendFileSync, renameSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { LogFollower, readPosition } from "../../src/webhook/_follow.ts";
import { tempDir } from "../support/mta.ts";

const line = (n: number) => `{"time":"t","type":"delivery","id":"${n}"}`;
const ids = (lines: string[]) => lines.map((l) => JSON.parse(l).id as string);

function drain(f: LogFollower): string[] {
  const out: string[] = [];
  for (;;) {
    const r = f.read(3, 1 << 20);
    if (r.lines.length === 0) return out;
    out.push(...r.lines);
    f.commit(r.next);
  }
}

describe("LogFollower", () => {
  test("a new follower starts at the end; only whole lines are read; the position is saved on commit", () => {
    using dir = tempDir();
    const log = join(dir.path, "d.jsonl");
    const pos = join(dir.path, "w.pos");
    writeFileSync(log, `${line(1)}\n`);
    const f = new LogFollower(log, pos, () => {});
    expect(drain(f)).toEqual([]);
    appendFileSync(log, `${line(2)}\n${line(3)}\n{"time":"t","type":"deliv`);
    expect(ids(drain(f))).toEqual(["2", "3"]);
    appendFileSync(log, `ery","id":"4"}\n`);
    expect(ids(drain(f))).toEqual(["4"]);
    expect(readPosition(pos)!.offset).toBe(Bun.file(log).size);
    f.close();
  });

  test("an uncommitted read is read again (after a crash too)", () => {
    using dir = tempDir();
    const log = join(dir.path, "d.jsonl");
    const pos = join(dir.path, "w.pos");
    writeFileSync(log, "");
    const f = new LogFollower(log, pos, () => {});
    appendFileSync(log, `${line(1)}\n${line(2)}\n`);
    expect(ids(f.read(10, 1 << 20).lines)).toEqual(["1", "2"]);
    f.close();
    const again = new LogFollower(log, pos, () => {});
    expect(ids(drain(again))).toEqual(["1", "2"]);
    again.close();
  });

  test("logrotate's rename then reopen: the old file is read to its end, then the new one", () => {
    using dir = tempDir();
    const log = join(dir.path, "d.jsonl");
    const pos = join(dir.path, "w.pos");
    writeFileSync(log, "");
    const f = new LogFollower(log, pos, () => {});
    appendFileSync(log, `${line(1)}\n`);
    expect(ids(drain(f))).toEqual(["1"]);
    renameSync(log, `${log}.1`);
    // The writer still writes to the old file until it reopens; the new file is empty meanwhile.
    appendFileSync(`${log}.1`, `${line(2)}\n`);
    writeFileSync(log, "");
    expect(ids(drain(f))).toEqual(["2"]);
    appendFileSync(log, `${line(3)}\n`);
    expect(ids(drain(f))).toEqual(["3"]);
    f.close();
  });

  test("after a restart, a position in a rotated file is found by its inode beside the log", () => {
    using dir = tempDir();
    const log = join(dir.path, "d.jsonl");
    const pos = join(dir.path, "w.pos");
    writeFileSync(log, "");
    const f = new LogFollower(log, pos, () => {});
    appendFileSync(log, `${line(1)}\n${line(2)}\n`);
    const r = f.read(1, 1 << 20);
    f.commit(r.next); // 1 sent, 2 not yet
    f.close();
    renameSync(log, `${log}.1`);
    writeFileSync(log, `${line(3)}\n`);
    const again = new LogFollower(log, pos, () => {});
    expect(ids(drain(again))).toEqual(["2", "3"]);
    again.close();
  });

  test("a truncated log (copytruncate) is read again from its start, with a warning", () => {
    using dir = tempDir();
    const log = join(dir.path, "d.jsonl");
    const pos = join(dir.path, "w.pos");
    writeFileSync(log, "");
    const warnings: string[] = [];
    const f = new LogFollower(log, pos, (m) => warnings.push(m));
    appendFileSync(log, `${line(1)}\n${line(2)}\n`);
    drain(f);
    truncateSync(log, 0);
    appendFileSync(log, `${line(3)}\n`);
    expect(ids(drain(f))).toEqual(["3"]);
    expect(warnings).toHaveLength(1);
    f.close();
  });
});
