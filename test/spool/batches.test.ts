/**
 * Torn tail versus damage (format version 2): every batch starts with a BATCH record, so recovery can
 * tell a batch a crash cut (never acknowledged: cut off) from acknowledged bytes damaged later
 * (reported, copied to the quarantine, never cut away); version 1 spools still open.
 */
import { expect, test } from "bun:test";
import * as fs from "node:fs";
import { join } from "node:path";
import { Spool, verifySpool } from "../../src/spool/index.ts";
import { msg, segmentFiles, segmentRecords, tempDir } from "./helpers.ts";

test("a flipped byte in the last acknowledged record is damage: reported, quarantined, reclaimed, never cut", async () => {
  using tmp = tempDir();
  let spool = await Spool.open({ dir: tmp.dir });
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) ids.push((await spool.append(msg(i))).id);
  await spool.close();
  const file = segmentFiles(tmp.dir)[0]!;
  const name = file.split("/").pop()!;
  const bytes = fs.readFileSync(file);
  const last = segmentRecords(bytes)
    .filter((r) => r.type === 1)
    .pop()!;
  expect(last.end).toBe(bytes.length);
  bytes[last.offset + 30]! ^= 0x01;
  fs.writeFileSync(file, bytes);

  const report = await verifySpool(tmp.dir);
  expect(report.ok).toBe(false);
  expect(report.tornTail).toBeUndefined();
  expect(report.damaged).toEqual([
    { segment: name, offset: last.offset, bytes: last.end - last.offset, reason: "checksum mismatch" },
  ]);

  spool = await Spool.open({ dir: tmp.dir });
  const d = spool.recovery.damaged;
  expect(d.length).toBe(1);
  expect(spool.recovery.truncatedBytes).toBe(0);
  const q = d[0]!.quarantine!;
  expect(q).toBe(join(tmp.dir, "quarantine", `${name.replace(".seg", "")}-${last.offset}.bad`));
  expect(fs.readFileSync(q)).toEqual(bytes.subarray(last.offset, last.end));
  expect(fs.statSync(q).mode & 0o777).toBe(0o600);
  expect(spool.messageCount).toBe(4);
  for (const id of ids.slice(0, 4)) expect(spool.slotOf(id)).toBeDefined();
  // The damaged segment is sealed and compacted away; new mail goes to a fresh segment.
  const later = await spool.append(msg(9));
  await spool.close();
  expect(segmentFiles(tmp.dir).map((f) => f.split("/").pop())).not.toContain(name);
  spool = await Spool.open({ dir: tmp.dir });
  expect(spool.recovery.damaged).toEqual([]);
  expect(spool.messageCount).toBe(5);
  expect(spool.slotOf(later.id)).toBeDefined();
  await spool.close();
  // The quarantine keeps verify failing until the operator has looked at it.
  const after = await verifySpool(tmp.dir);
  expect([after.ok, after.damaged.length, after.quarantined.map((x) => x.path)]).toEqual([false, 0, [q]]);
  fs.rmSync(q);
  expect((await verifySpool(tmp.dir)).ok).toBe(true);
});

test("a batch cut anywhere is never-acknowledged: all of its records go, nothing is damage", async () => {
  using tmp = tempDir();
  const src = join(tmp.dir, "src");
  const spool = await Spool.open({ dir: src });
  const kept = await spool.append(msg(1));
  const before = fs.statSync(segmentFiles(src)[0]!).size;
  // Three appends in one turn share one batch.
  const batch = await Promise.all([spool.append(msg(2)), spool.append(msg(3)), spool.append(msg(4))]);
  await spool.close();
  const full = fs.readFileSync(segmentFiles(src)[0]!);
  const recs = segmentRecords(full).filter((r) => r.offset >= before);
  expect(recs.map((r) => r.type)).toEqual([3, 1, 1, 1]);
  for (let cut = before + 1; cut < full.length; cut += 7) {
    const dir = join(tmp.dir, `cut${cut}`);
    fs.mkdirSync(join(dir, "segments"), { recursive: true });
    fs.writeFileSync(join(dir, "segments", "00000000000000000001.seg"), full.subarray(0, cut));
    const v = await verifySpool(dir);
    expect(v.damaged).toEqual([]);
    expect(v.tornTail).toMatchObject({ offset: before, bytes: cut - before });
    const s = await Spool.open({ dir, sync: false });
    expect(s.recovery.truncatedBytes).toBe(cut - before);
    expect(s.messageCount).toBe(1);
    expect(s.slotOf(kept.id)).toBeDefined();
    for (const b of batch) expect(s.slotOf(b.id)).toBeUndefined();
    await s.close();
    fs.rmSync(dir, { recursive: true });
  }
});

test("zeros where a batch should be (the file grew before the data landed) are a torn tail", async () => {
  using tmp = tempDir();
  const spool = await Spool.open({ dir: tmp.dir });
  await spool.append(msg(1));
  await spool.close();
  const file = segmentFiles(tmp.dir)[0]!;
  const size = fs.statSync(file).size;
  fs.appendFileSync(file, new Uint8Array(4096));
  const s = await Spool.open({ dir: tmp.dir });
  expect([s.recovery.damaged.length, s.recovery.truncatedBytes, s.messageCount]).toEqual([0, 4096, 1]);
  await s.close();
  expect(fs.statSync(file).size).toBe(size);
});

test("a damaged BATCH record costs its 24 bytes: the records behind it are still read", async () => {
  using tmp = tempDir();
  let spool = await Spool.open({ dir: tmp.dir });
  const a = await spool.append(msg(1));
  const b = await Promise.all([spool.append(msg(2)), spool.append(msg(3))]);
  await spool.close();
  const file = segmentFiles(tmp.dir)[0]!;
  const bytes = fs.readFileSync(file);
  const hdr = segmentRecords(bytes).filter((r) => r.type === 3)[1]!;
  bytes[hdr.offset + 17]! ^= 0x80; // its batchBytes field
  fs.writeFileSync(file, bytes);
  spool = await Spool.open({ dir: tmp.dir });
  expect(spool.recovery.damaged.map((d) => [d.offset, d.bytes])).toEqual([[hdr.offset, 24]]);
  for (const x of [a, ...b]) expect(spool.slotOf(x.id)).toBeDefined();
  await spool.close();
});

test("a version 1 spool opens, keeps its rule for a torn tail, and new batches go to a version 2 segment", async () => {
  using tmp = tempDir();
  const src = join(tmp.dir, "src");
  let spool = await Spool.open({ dir: src });
  const ids = [(await spool.append(msg(1))).id, (await spool.append(msg(2))).id];
  await spool.close();
  // Rewrite as version 1: no BATCH records, header version 1, and half a record at the end.
  const v2 = fs.readFileSync(segmentFiles(src)[0]!);
  const parts = [Buffer.from(v2.subarray(0, 16))];
  parts[0]!.writeUInt32LE(1, 8);
  for (const r of segmentRecords(v2)) if (r.type !== 3) parts.push(v2.subarray(r.offset, r.end));
  const lastRec = parts[parts.length - 1]!;
  parts.push(lastRec.subarray(0, 20));
  fs.mkdirSync(join(tmp.dir, "v1", "segments"), { recursive: true });
  const v1file = join(tmp.dir, "v1", "segments", "00000000000000000001.seg");
  fs.writeFileSync(v1file, Buffer.concat(parts));
  spool = await Spool.open({ dir: join(tmp.dir, "v1") });
  expect([spool.recovery.damaged.length, spool.recovery.truncatedBytes, spool.messageCount]).toEqual([
    0, 20, 2,
  ]);
  for (const id of ids) expect(spool.slotOf(id)).toBeDefined();
  const c = await spool.append(msg(3));
  await spool.close();
  const segs = segmentFiles(join(tmp.dir, "v1"));
  expect(segs.length).toBe(2);
  expect(fs.readFileSync(segs[1]!).readUInt32LE(8)).toBe(2);
  spool = await Spool.open({ dir: join(tmp.dir, "v1") });
  expect(spool.messageCount).toBe(3);
  expect(spool.slotOf(c.id)).toBeDefined();
  await spool.close();
});

test("spool directories are 0700 and its files 0600 whatever the umask; an old 0755/0644 spool is tightened", async () => {
  using tmp = tempDir();
  const old = process.umask(0);
  try {
    let spool = await Spool.open({ dir: join(tmp.dir, "s") });
    await spool.append(msg(1));
    await spool.close();
    const mode = (p: string) => fs.statSync(p).mode & 0o7777;
    const dir = join(tmp.dir, "s");
    expect([mode(dir), mode(join(dir, "segments")), mode(join(dir, "LOCK"))]).toEqual([0o700, 0o700, 0o600]);
    for (const f of segmentFiles(dir)) expect(mode(f)).toBe(0o600);
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(join(dir, "segments"), 0o755);
    for (const f of segmentFiles(dir)) fs.chmodSync(f, 0o644);
    spool = await Spool.open({ dir });
    await spool.close();
    expect([mode(dir), mode(join(dir, "segments"))]).toEqual([0o700, 0o700]);
    for (const f of segmentFiles(dir)) expect(mode(f)).toBe(0o600);
  } finally {
    process.umask(old);
  }
});
