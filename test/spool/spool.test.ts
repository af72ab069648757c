import { expect, test } from "bun:test";
import * as fs from "node:fs";
import { join } from "node:path";
import { ManualClock } from "../../src/lib/index.ts";
import {
  type FileLayer,
  nodeFileLayer,
  Spool,
  SpoolLockedError,
  SpoolWriteError,
  spoolStats,
  verifySpool,
} from "../../src/spool/index.ts";
import { msg, segmentFiles, tempDir } from "./helpers.ts";

test("an appended message reads back with its envelope and body, also after reopening", async () => {
  using tmp = tempDir();
  const clock = new ManualClock(1_800_000_000_000);
  let spool = await Spool.open({ dir: tmp.dir, clock });
  const m = msg(7, 2, 300);
  m.recipients[1]!.notify = ["SUCCESS", "FAILURE"];
  m.recipients[1]!.orcpt = "rfc822;x@y";
  const { id, slot } = await spool.append(m);
  expect(spool.isLive(slot)).toBe(true);
  expect(spool.idOf(slot)).toBe(id);
  expect(spool.slotOf(id)).toBe(slot);
  expect([spool.destinationOf(slot), spool.arrivalOf(slot), spool.sizeOf(slot)]).toEqual([
    "d2.test",
    1_800_000_000_000,
    300,
  ]);
  expect(spool.pendingRecipientsOf(slot)).toBe(2);
  const { message, body } = await spool.read(slot);
  expect(body).toEqual(m.body);
  expect(message).toEqual({
    id,
    slot,
    sender: m.sender,
    destination: "d2.test",
    arrivalMs: 1_800_000_000_000,
    attempts: 0,
    nextAttemptMs: 1_800_000_000_000,
    sizeBytes: 300,
    recipients: [
      { address: m.recipients[0]!.address, state: "pending" },
      {
        address: m.recipients[1]!.address,
        state: "pending",
        notify: ["SUCCESS", "FAILURE"],
        orcpt: "rfc822;x@y",
      },
    ],
    attributes: { n: "7" },
  });
  await spool.close();
  spool = await Spool.open({ dir: tmp.dir, bodyCacheBytes: 0 });
  const again = spool.slotOf(id)!;
  expect(spool.readEnvelope(again)).toEqual({ ...message, slot: again });
  expect((await spool.read(again)).body).toEqual(m.body);
  expect(spool.recovery.messages).toBe(1);
  await spool.close();
});

test("concurrent appends share batches and each resolves only after an fdatasync that covers it", async () => {
  using tmp = tempDir();
  const events: string[] = [];
  const layer: FileLayer = {
    ...nodeFileLayer,
    write: async (fd, buf, pos) => {
      await nodeFileLayer.write(fd, buf, pos);
      events.push("write");
    },
    fdatasync: async (fd) => {
      await nodeFileLayer.fdatasync(fd);
      events.push("sync");
    },
  };
  const spool = await Spool.open({ dir: tmp.dir, fileLayer: layer });
  events.length = 0;
  const all = Array.from({ length: 1000 }, (_, i) =>
    spool.append(msg(i)).then((r) => {
      expect(events[events.length - 1]).toBe("sync");
      return r;
    }),
  );
  const results = await Promise.all(all);
  expect(new Set(results.map((r) => r.id)).size).toBe(1000);
  const st = spool.stats();
  expect(st.groupCommit.records).toBe(1000);
  expect(st.groupCommit.batches).toBeLessThan(10);
  expect(events.filter((e) => e === "sync").length).toBeLessThan(10);
  expect(st.messages).toBe(1000);
  await spool.close();
});

test("appends made while a batch is syncing are gathered into the next batch", async () => {
  using tmp = tempDir();
  let release!: () => void;
  let hold = false;
  const layer: FileLayer = {
    ...nodeFileLayer,
    fdatasync: async (fd) => {
      if (hold) await new Promise<void>((r) => (release = r));
      await nodeFileLayer.fdatasync(fd);
    },
  };
  const spool = await Spool.open({ dir: tmp.dir, fileLayer: layer });
  hold = true;
  const first = spool.append(msg(0));
  await Bun.sleep(20); // the first batch is now waiting in fdatasync
  const rest = Array.from({ length: 50 }, (_, i) => spool.append(msg(i + 1)));
  hold = false;
  release();
  await first;
  await Promise.all(rest);
  expect(spool.stats().groupCommit.batches).toBe(2);
  await spool.close();
});

test("a deferred attempt keeps its state, reply and attempt count across reopen; a finished message is gone", async () => {
  using tmp = tempDir();
  let spool = await Spool.open({ dir: tmp.dir });
  const a = await spool.append(msg(1, 3));
  const b = await spool.append(msg(2, 1));
  await spool.recordOutcome(a.slot, {
    recipients: [
      { index: 0, state: "delivered", reply: "250 2.0.0 ok" },
      { index: 2, state: "failed", reply: "550 5.1.1 unknown" },
      { index: 1, state: "pending", reply: "451 4.3.0 later" },
    ],
    attempts: 1,
    nextAttemptMs: 1234,
  });
  await spool.recordOutcome(a.slot, {
    recipients: [{ index: 1, state: "pending", reply: "452 4.2.2 full" }],
    attempts: 2,
    nextAttemptMs: 5678,
    reason: "retry",
  });
  await spool.recordOutcome(b.slot, {
    recipients: [{ index: 0, state: "delivered", reply: "250 ok" }],
    attempts: 1,
  });
  expect(spool.isLive(b.slot)).toBe(false);
  expect(spool.slotOf(b.id)).toBeUndefined();
  expect(spool.pendingRecipientsOf(a.slot)).toBe(1);
  const expected = spool.readEnvelope(a.slot);
  expect(expected.recipients.map((r) => [r.state, r.lastReply])).toEqual([
    ["delivered", "250 2.0.0 ok"],
    ["pending", "452 4.2.2 full"],
    ["failed", "550 5.1.1 unknown"],
  ]);
  expect([expected.attempts, expected.nextAttemptMs]).toEqual([2, 5678]);
  await spool.close();
  spool = await Spool.open({ dir: tmp.dir });
  expect(spool.slotOf(b.id)).toBeUndefined();
  const slot = spool.slotOf(a.id)!;
  expect(spool.readEnvelope(slot)).toEqual({ ...expected, slot });
  expect(spool.recovery).toMatchObject({ messages: 1, deadMessages: 1 });
  await expect(spool.recordOutcome(999, { recipients: [], attempts: 1 })).rejects.toThrow(RangeError);
  await expect(
    spool.recordOutcome(slot, { recipients: [{ index: 3, state: "delivered" }], attempts: 1 }),
  ).rejects.toThrow(RangeError);
  await spool.close();
});

test("getters, iteration and counts by destination follow the index", async () => {
  using tmp = tempDir();
  const spool = await Spool.open({ dir: tmp.dir, sync: false });
  const rs = await Promise.all(
    Array.from({ length: 20 }, (_, i) => spool.append({ ...msg(i, 2), arrivalMs: 1000 + i })),
  );
  await spool.recordOutcome(rs[0]!.slot, { recipients: [{ index: 0, state: "delivered" }], attempts: 1 });
  const live: number[] = [];
  spool.forEachLive((s) => live.push(s));
  expect(live.sort((x, y) => x - y)).toEqual(rs.map((r) => r.slot).sort((x, y) => x - y));
  const counts = spool.countsByDestination();
  expect(counts.get("d0.test")).toEqual({ messages: 4, recipients: 7, bytes: 4 * 64, oldestMs: 1000 });
  expect(counts.size).toBe(5);
  expect(spool.stats().recipients).toEqual({ pending: 39, delivered: 1, failed: 0 });
  await spool.close();
});

test("a second open of a held spool fails naming the holder, and kill -9 of the holder frees it", async () => {
  using tmp = tempDir();
  const spool = await Spool.open({ dir: tmp.dir });
  const err = await Spool.open({ dir: tmp.dir }).catch((e) => e);
  expect(err).toBeInstanceOf(SpoolLockedError);
  expect(err.holderPid).toBe(process.pid);
  await spool.close();
  const child = Bun.spawn(
    [
      process.execPath,
      "-e",
      `const { Spool } = await import(${JSON.stringify(join(import.meta.dir, "../../src/spool/index.ts"))});
       await Spool.open({ dir: ${JSON.stringify(tmp.dir)} }); console.log("held"); await Bun.sleep(60000);`,
    ],
    { stdout: "pipe" },
  );
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  expect(new TextDecoder().decode(value)).toContain("held");
  const err2 = await Spool.open({ dir: tmp.dir }).catch((e) => e);
  expect(err2).toBeInstanceOf(SpoolLockedError);
  expect(err2.holderPid).toBe(child.pid);
  child.kill("SIGKILL");
  await child.exited;
  const again = await Spool.open({ dir: tmp.dir });
  await again.close();
});

test("a failing disk rejects that batch with a typed error, keeps what was acknowledged, and recovers", async () => {
  using tmp = tempDir();
  let failing = false;
  const enospc = () => Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
  const layer: FileLayer = {
    ...nodeFileLayer,
    write: async (fd, buf, pos) => {
      if (failing) {
        // A partial write, then the failure: the worst case for the file's tail.
        await nodeFileLayer.write(fd, buf.subarray(0, Math.floor(buf.length / 2)), pos);
        throw enospc();
      }
      return nodeFileLayer.write(fd, buf, pos);
    },
  };
  let spool = await Spool.open({ dir: tmp.dir, fileLayer: layer });
  const acked = await Promise.all(Array.from({ length: 10 }, (_, i) => spool.append(msg(i))));
  failing = true;
  const failed = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => spool.append(msg(100 + i))));
  for (const f of failed) {
    expect(f.status).toBe("rejected");
    const reason = (f as PromiseRejectedResult).reason;
    expect(reason).toBeInstanceOf(SpoolWriteError);
    expect(reason.errno).toBe("ENOSPC");
  }
  const outcome = await spool
    .recordOutcome(acked[0]!.slot, { recipients: [{ index: 0, state: "delivered" }], attempts: 1 })
    .catch((e) => e);
  expect(outcome).toBeInstanceOf(SpoolWriteError);
  expect(spool.isLive(acked[0]!.slot)).toBe(true);
  failing = false;
  const later = await spool.append(msg(200));
  expect(spool.messageCount).toBe(11);
  await spool.close();
  spool = await Spool.open({ dir: tmp.dir });
  expect(spool.recovery.damaged).toEqual([]);
  expect(spool.messageCount).toBe(11);
  for (const a of [...acked, later]) expect(spool.slotOf(a.id)).toBeDefined();
  await spool.close();
  expect((await verifySpool(tmp.dir)).ok).toBe(true);
});

test("a torn last record is cut off at every byte offset, and the spool appends cleanly afterwards", async () => {
  using tmp = tempDir();
  const src = join(tmp.dir, "src");
  const spool = await Spool.open({ dir: src });
  const kept = [await spool.append(msg(1)), await spool.append(msg(2, 2))];
  const before = fs.statSync(segmentFiles(src)[0]!).size;
  const torn = await spool.append(msg(3, 3, 40));
  await spool.close();
  const file = segmentFiles(src)[0]!;
  const full = fs.readFileSync(file);
  for (let cut = before; cut < full.length; cut++) {
    const dir = join(tmp.dir, `cut${cut}`);
    fs.mkdirSync(join(dir, "segments"), { recursive: true });
    fs.writeFileSync(join(dir, "segments", file.split("/").pop()!), full.subarray(0, cut));
    const s = await Spool.open({ dir, sync: false });
    expect(s.recovery.truncatedBytes).toBe(cut - before);
    expect(s.recovery.damaged).toEqual([]);
    expect(s.messageCount).toBe(2);
    for (const k of kept) expect(s.slotOf(k.id)).toBeDefined();
    expect(s.slotOf(torn.id)).toBeUndefined();
    const after = await s.append(msg(4));
    await s.close();
    const s2 = await Spool.open({ dir, sync: false });
    expect(s2.recovery.truncatedBytes).toBe(0);
    expect(s2.messageCount).toBe(3);
    expect(s2.slotOf(after.id)).toBeDefined();
    await s2.close();
    fs.rmSync(dir, { recursive: true });
  }
}, 60_000); // ~1 s on a quiet machine, over 5 s on a busy one: it asserts recovery, not speed

test("a flipped byte in a sealed segment loses that record only, and verify names segment and offset", async () => {
  using tmp = tempDir();
  let spool = await Spool.open({ dir: tmp.dir, segmentSizeBytes: 2048, sync: false });
  const ids: string[] = [];
  for (let i = 0; i < 40; i++) ids.push((await spool.append(msg(i))).id);
  const victimSlot = spool.slotOf(ids[5]!)!;
  const info = spool.segmentInfo();
  expect(info.length).toBeGreaterThan(2);
  const victim = spool.readEnvelope(victimSlot);
  await spool.close();
  const first = segmentFiles(tmp.dir)[0]!;
  const bytes = fs.readFileSync(first);
  // Find the victim's record: records follow the 16-byte header in append order, each batch behind
  // its BATCH record (type 3).
  let off = 16;
  let n = 0;
  const skipBatch = () => {
    while (bytes[off + 12] === 3) off += 16 + bytes.readUInt32LE(off + 8);
  };
  skipBatch();
  while (n < 5) {
    off += 16 + bytes.readUInt32LE(off + 8);
    skipBatch();
    n++;
  }
  const recordLen = 16 + bytes.readUInt32LE(off + 8);
  bytes[off + 40]! ^= 0xff;
  fs.writeFileSync(first, bytes);
  const report = await verifySpool(tmp.dir);
  expect(report.ok).toBe(false);
  expect(report.damaged).toEqual([
    { segment: first.split("/").pop()!, offset: off, bytes: recordLen, reason: "checksum mismatch" },
  ]);
  expect(report.messages).toBe(39);
  spool = await Spool.open({ dir: tmp.dir, segmentSizeBytes: 2048, sync: false });
  expect(spool.recovery.damaged.length).toBe(1);
  expect(spool.messageCount).toBe(39);
  expect(spool.slotOf(victim.id)).toBeUndefined();
  for (const id of ids) if (id !== victim.id) expect(spool.slotOf(id)).toBeDefined();
  await spool.close();
});

test("verify and stats read a spool without its lock and without changing it", async () => {
  using tmp = tempDir();
  const spool = await Spool.open({ dir: tmp.dir, sync: false });
  const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => spool.append(msg(i, 2))));
  await spool.recordOutcome(rs[0]!.slot, { recipients: [{ index: 0, state: "failed" }], attempts: 1 });
  await spool.close();
  const before = segmentFiles(tmp.dir).map((f) => fs.readFileSync(f));
  const report = await verifySpool(tmp.dir);
  expect(report).toMatchObject({ ok: true, messages: 10, records: 11, damaged: [] });
  expect(report.recipients).toEqual({ pending: 19, delivered: 0, failed: 1 });
  const st = await spoolStats(tmp.dir);
  expect([st.segments, st.messages, st.recipients.pending]).toEqual([1, 10, 19]);
  expect(st.deadBytes).toBeGreaterThan(0);
  expect(segmentFiles(tmp.dir).map((f) => fs.readFileSync(f))).toEqual(before);
});

test("each recipient's last TLS is kept with its last reply: across reopen and compaction, untouched recipients keep theirs", async () => {
  using tmp = tempDir();
  const opts = { dir: tmp.dir, segmentSizeBytes: 4096, sync: false };
  let spool = await Spool.open(opts);
  const a = await spool.append(msg(1, 3));
  const sts = { policy: "sts-enforce", version: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384", verified: true };
  const plain = { policy: "opportunistic", verified: false };
  await spool.recordOutcome(a.slot, {
    recipients: [
      { index: 0, state: "delivered", reply: "250 2.0.0 ok", tls: sts },
      { index: 1, state: "pending", reply: "451 4.3.0 later", tls: sts },
      { index: 2, state: "pending", reply: "451 4.3.0 later", tls: sts },
    ],
    attempts: 1,
  });
  // The second attempt went elsewhere, in plain text, for one recipient only.
  await spool.recordOutcome(a.slot, {
    recipients: [{ index: 1, state: "pending", reply: "452 4.2.2 full", tls: plain }],
    attempts: 2,
  });
  // A third with no TLS at all (the plan deferred before any connection): that recipient has none.
  await spool.recordOutcome(a.slot, {
    recipients: [{ index: 2, state: "pending", reply: "451 4.7.5 no host" }],
    attempts: 3,
  });
  const want = [sts, plain, undefined];
  expect(spool.readEnvelope(a.slot).recipients.map((r) => r.lastTls)).toEqual(want);
  await spool.close();
  spool = await Spool.open(opts);
  expect(spool.readEnvelope(spool.slotOf(a.id)!).recipients.map((r) => r.lastTls)).toEqual(want);
  // Messages after it that are delivered fill its segment and leave it mostly dead: compaction moves
  // its record into a new segment (a MESSAGE copy, which must carry the notes).
  const before = spool.segmentInfo()[0]!.name;
  for (let i = 0; i < 30; i++) {
    const f = await spool.append(msg(100 + i, 1, 200));
    await spool.recordOutcome(f.slot, { recipients: [{ index: 0, state: "delivered" }], attempts: 1 });
  }
  await spool.compact();
  expect(spool.segmentInfo().map((g) => g.name)).not.toContain(before);
  expect(spool.readEnvelope(spool.slotOf(a.id)!).recipients.map((r) => r.lastTls)).toEqual(want);
  await spool.close();
  spool = await Spool.open(opts);
  expect(spool.readEnvelope(spool.slotOf(a.id)!).recipients.map((r) => r.lastTls)).toEqual(want);
  await spool.close();
});

test("the first read of a just-appended message is decoded from the record appended, without reading the disk; later reads go to the disk and agree", async () => {
  using tmp = tempDir();
  let reads = 0;
  const counting: FileLayer = {
    ...nodeFileLayer,
    readSync: (...a) => {
      reads++;
      return nodeFileLayer.readSync(...a);
    },
  };
  const spool = await Spool.open({ dir: tmp.dir, fileLayer: counting });
  const m = msg(3, 2, 500);
  const { slot } = await spool.append(m);
  const before = reads;
  const first = await spool.read(slot);
  expect(reads).toBe(before);
  expect(first.body).toEqual(m.body);
  expect(first.message.recipients.map((r) => r.address)).toEqual(m.recipients.map((r) => r.address));
  // An outcome ends the cached record's use: the next read is from the segment, with the reply.
  await spool.recordOutcome(slot, {
    attempts: 1,
    nextAttemptMs: Date.now() + 60_000,
    recipients: [{ index: 0, state: "pending", reply: "451 4.3.0 later" }],
  });
  const second = await spool.read(slot);
  expect(reads).toBeGreaterThan(before);
  expect(second.body).toEqual(m.body);
  expect(second.message.recipients[0]!.lastReply).toBe("451 4.3.0 later");
  expect({ ...second.message, recipients: [], attempts: 0, nextAttemptMs: 0 }).toEqual({
    ...first.message,
    recipients: [],
    attempts: 0,
    nextAttemptMs: 0,
  });
  await spool.close();
});
