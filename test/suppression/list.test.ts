import { describe, expect, test } from "bun:test";
import { spawn } from "bun";
import { appendFileSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  formatCsv,
  LOG_FILE,
  parseCsv,
  readEntries,
  SuppressionError,
  SuppressionList,
} from "../../src/suppression/index.ts";
import { tempDir } from "../support/mta.ts";

describe("SuppressionList", () => {
  test("an added address is suppressed in any case, survives a reopen, and a removed one is not", async () => {
    using dir = tempDir();
    const a = await SuppressionList.open({ dir: dir.path });
    expect(
      await a.add([{ address: "Bob@Example.NET", reason: "bad-mailbox" }, { address: "carol@example.net" }]),
    ).toEqual({
      added: 2,
      updated: 0,
      unchanged: 0,
    });
    expect(a.check("bob@example.net")).toEqual({ scope: "", reason: "bad-mailbox" });
    expect(a.has("BOB@EXAMPLE.NET")).toBe(true);
    expect(a.has("dave@example.net")).toBe(false);
    expect(await a.remove([{ address: "carol@example.net" }, { address: "nobody@example.net" }])).toEqual({
      removed: 1,
      absent: 1,
    });
    await a.close();
    const b = await SuppressionList.open({ dir: dir.path });
    expect(b.count).toBe(1);
    expect(b.has("bob@example.net")).toBe(true);
    expect(b.has("carol@example.net")).toBe(false);
    expect((await b.entries()).map((e) => [e.address, e.reason])).toEqual([
      ["bob@example.net", "bad-mailbox"],
    ]);
    await b.close();
  });

  test("a second process cannot open the same list while the first holds it", async () => {
    using dir = tempDir();
    const a = await SuppressionList.open({ dir: dir.path });
    const child = spawn(
      [
        process.execPath,
        "-e",
        `import { SuppressionList } from ${JSON.stringify(join(import.meta.dir, "../../src/suppression/index.ts"))};
         try { await SuppressionList.open({ dir: ${JSON.stringify(dir.path)} }); console.log("opened"); }
         catch (e) { console.log(e.kind, e.message); }`,
      ],
      { stdout: "pipe" },
    );
    const out = await new Response(child.stdout).text();
    expect(out).toContain("locked another process holds the suppression list");
    await a.close();
  });

  test("entries scoped to a sender domain apply only to mail from that domain", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add([{ address: "bob@example.net", scope: "News.Example.COM" }]);
    expect(l.has("bob@example.net")).toBe(false);
    expect(l.has("bob@example.net", "shop.example.com")).toBe(false);
    expect(l.check("bob@example.net", "news.example.com")).toEqual({
      scope: "news.example.com",
      reason: "manual",
    });
    await l.close();
  });

  test("an expired entry is no longer suppressed and is dropped when the file is read again", async () => {
    using dir = tempDir();
    let now = 1_700_000_000_000;
    const l = await SuppressionList.open({ dir: dir.path, now: () => now });
    await l.add([{ address: "a@example.net", expiresMs: now + 60_000 }, { address: "b@example.net" }]);
    expect(l.check("a@example.net")).toEqual({ scope: "", reason: "manual", expiresMs: now + 60_000 });
    now += 61_000;
    expect(l.has("a@example.net")).toBe(false);
    expect((await l.entries()).map((e) => e.address)).toEqual(["b@example.net"]);
    await l.close();
    const again = await SuppressionList.open({ dir: dir.path, now: () => now });
    expect(again.count).toBe(1);
    await again.close();
  });

  test("keepLonger: an automatic addition never shortens a permanent entry", async () => {
    using dir = tempDir();
    const now = Date.now();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add([{ address: "a@example.net", reason: "manual" }]);
    expect(
      await l.add([{ address: "a@example.net", reason: "quota-issues", expiresMs: now + 3600_000 }], {
        keepLonger: true,
      }),
    ).toEqual({
      added: 0,
      updated: 0,
      unchanged: 1,
    });
    expect(l.check("a@example.net")?.reason).toBe("manual");
    // Without keepLonger (the operator), the new entry replaces it.
    expect((await l.add([{ address: "a@example.net", reason: "complaint" }])).updated).toBe(1);
    expect(l.check("a@example.net")?.reason).toBe("complaint");
    // The same entry again writes nothing.
    const size = statSync(join(dir.path, LOG_FILE)).size;
    expect((await l.add([{ address: "a@example.net", reason: "complaint" }])).unchanged).toBe(1);
    expect(statSync(join(dir.path, LOG_FILE)).size).toBe(size);
    await l.close();
  });

  test("bad input is refused with the offending value and nothing is written", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    const size = statSync(join(dir.path, LOG_FILE)).size;
    for (const bad of [
      { address: "no-at-sign" },
      { address: "a b@example.net" },
      { address: "x@example.net", scope: "a b" },
    ]) {
      await expect(l.add([{ address: "ok@example.net" }, bad])).rejects.toThrow(SuppressionError);
    }
    await expect(l.add([{ address: `${"x".repeat(400)}@example.net` }])).rejects.toThrow(/not an address/);
    await expect(l.add([{ address: "a@example.net", reason: "nonsense" as never }])).rejects.toThrow(
      /unknown reason/,
    );
    expect(statSync(join(dir.path, LOG_FILE)).size).toBe(size);
    expect(l.count).toBe(0);
    await l.close();
  });

  test("UTF-8 addresses are kept as UTF-8 and found again", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add([{ address: "Jörg@Exämple.de" }]);
    expect(l.has("jörg@exämple.de")).toBe(true);
    await l.close();
    const again = await SuppressionList.open({ dir: dir.path });
    expect(again.has("JÖRG@EXÄMPLE.DE")).toBe(true);
    expect((await again.entries())[0]!.address).toBe("jörg@exämple.de");
    await again.close();
  });

  test("a torn tail is cut off at open; every whole record before it is kept", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add(Array.from({ length: 100 }, (_, i) => ({ address: `u${i}@example.net` })));
    await l.close();
    const file = join(dir.path, LOG_FILE);
    const size = statSync(file).size;
    truncateSync(file, size - 5); // the last record loses its end, as a crash mid-write leaves it
    const again = await SuppressionList.open({ dir: dir.path });
    expect(again.count).toBe(99);
    expect(again.recovery.truncatedBytes).toBeGreaterThan(0);
    expect(again.has("u98@example.net")).toBe(true);
    expect(again.has("u99@example.net")).toBe(false);
    // And the file is writable again after the cut.
    await again.add([{ address: "u99@example.net" }]);
    await again.close();
    const third = await SuppressionList.open({ dir: dir.path });
    expect(third.count).toBe(100);
    expect(third.recovery.truncatedBytes).toBe(0);
    await third.close();
  });

  test("a file that is not a suppression log is refused, not overwritten", async () => {
    using dir = tempDir();
    writeFileSync(join(dir.path, LOG_FILE), "hello, this is not ours\n");
    await expect(SuppressionList.open({ dir: dir.path })).rejects.toThrow(/not a suppression log/);
    expect(readFileSync(join(dir.path, LOG_FILE), "utf8")).toBe("hello, this is not ours\n");
  });

  test("garbage appended after good records is cut off with a warning, and a large damaged tail is kept aside", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    await l.add([{ address: "a@example.net" }]);
    await l.close();
    appendFileSync(join(dir.path, LOG_FILE), Buffer.alloc(100_000, 0x41));
    const warnings: unknown[] = [];
    const log = { warn: (...a: unknown[]) => warnings.push(a), info() {}, error() {} } as never;
    const again = await SuppressionList.open({ dir: dir.path, log });
    expect(again.count).toBe(1);
    expect(again.recovery.damage).toBeDefined();
    expect(warnings).toHaveLength(1);
    expect(readdirSync(dir.path).some((f) => f.startsWith(`${LOG_FILE}.damaged-`))).toBe(true);
    await again.close();
  });

  test("compaction rewrites the file to the live entries and keeps every one findable and listable", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    const n = 5000;
    await l.add(
      Array.from({ length: n }, (_, i) => ({ address: `u${i}@example.net`, reason: "bad-mailbox" as const })),
    );
    // Churn: remove and re-add half with another reason, so that most records are dead.
    for (let round = 0; round < 4; round++) {
      await l.remove(Array.from({ length: n / 2 }, (_, i) => ({ address: `u${i}@example.net` })));
      await l.add(
        Array.from({ length: n / 2 }, (_, i) => ({
          address: `u${i}@example.net`,
          reason: "complaint" as const,
        })),
      );
    }
    // Automatic compaction may already have run during the churn; an explicit one leaves one record per entry.
    await l.compact();
    const perRecord = 17 + 1 + "u0000@example.net".length;
    expect(l.fileBytes).toBeLessThanOrEqual(16 + n * perRecord);
    expect(l.recordCount).toBe(n);
    expect(l.count).toBe(n);
    const listed = await l.entries();
    expect(listed).toHaveLength(n);
    expect(listed.filter((e) => e.reason === "complaint")).toHaveLength(n / 2);
    expect(l.has("u0@example.net") && l.has(`u${n - 1}@example.net`)).toBe(true);
    // Changes after compaction land in the new file.
    await l.remove([{ address: "u1@example.net" }]);
    await l.add([{ address: "new@example.net" }]);
    await l.close();
    const again = await SuppressionList.open({ dir: dir.path });
    expect(again.count).toBe(n);
    expect(again.has("u1@example.net")).toBe(false);
    expect(again.has("new@example.net")).toBe(true);
    expect(readEntries(dir.path)).toHaveLength(n);
    await again.close();
  });

  test("many entries: each is found and none of many others is (no false positives)", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path, sync: false });
    const n = 100_000;
    for (let i = 0; i < n; i += 50_000)
      await l.add(
        Array.from({ length: 50_000 }, (_, j) => ({ address: `in${i + j}@d${(i + j) % 97}.example` })),
      );
    expect(l.count).toBe(n);
    let found = 0;
    let wrong = 0;
    for (let i = 0; i < n; i++) {
      if (l.has(`in${i}@d${i % 97}.example`)) found++;
      if (l.has(`out${i}@d${i % 97}.example`)) wrong++;
    }
    expect(found).toBe(n);
    expect(wrong).toBe(0);
    // Remove every third entry (backward-shift deletion must keep the others reachable).
    const gone = Array.from({ length: n }, (_, i) => i).filter((i) => i % 3 === 0);
    await l.remove(gone.map((i) => ({ address: `in${i}@d${i % 97}.example` })));
    let still = 0;
    for (let i = 0; i < n; i++) if (l.has(`in${i}@d${i % 97}.example`)) still++;
    expect(still).toBe(n - gone.length);
    expect(l.has("in0@d0.example")).toBe(false);
    await l.close();
  }, 30_000);

  test("every addition acknowledged before kill -9 is there after a restart", async () => {
    using dir = tempDir();
    const script = `
      import { SuppressionList } from ${JSON.stringify(join(import.meta.dir, "../../src/suppression/index.ts"))};
      const l = await SuppressionList.open({ dir: ${JSON.stringify(dir.path)} });
      for (let i = 0; ; i++) {
        await l.add([{ address: "k" + i + "@example.net" }, { address: "j" + i + "@example.net" }]);
        process.stdout.write("acked " + i + "\\n");
      }`;
    const child = spawn([process.execPath, "-e", script], { stdout: "pipe" });
    let acked = -1;
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of child.stdout) {
      buf += decoder.decode(chunk);
      const m = [...buf.matchAll(/acked (\d+)\n/g)];
      if (m.length > 0) acked = Number(m[m.length - 1]![1]);
      if (acked >= 200) {
        child.kill("SIGKILL");
        break;
      }
    }
    await child.exited;
    const l = await SuppressionList.open({ dir: dir.path });
    for (let i = 0; i <= acked; i++) {
      expect(l.has(`k${i}@example.net`)).toBe(true);
      expect(l.has(`j${i}@example.net`)).toBe(true);
    }
    await l.close();
  }, 30_000);
});

describe("CSV", () => {
  test("export then import gives back the same entries", async () => {
    using dir = tempDir();
    const l = await SuppressionList.open({ dir: dir.path });
    const expires = Date.parse("2099-01-01T00:00:00.000Z");
    await l.add([
      { address: "a@example.net", reason: "bad-mailbox" },
      {
        address: 'odd,"name"@example.net',
        scope: "news.example.com",
        reason: "complaint",
        expiresMs: expires,
      },
    ]);
    const csv = formatCsv(await l.entries());
    expect(csv.split("\n")[0]).toBe("address,scope,reason,added,expires");
    const back = parseCsv(csv);
    expect(back.problems).toEqual([]);
    expect(back.entries).toEqual([
      { address: "a@example.net", scope: "", reason: "bad-mailbox" },
      {
        address: 'odd,"name"@example.net',
        scope: "news.example.com",
        reason: "complaint",
        expiresMs: expires,
      },
    ]);
    await l.close();
  });

  test("a file of bare addresses (CRLF, BOM, blank lines) imports with the defaults", () => {
    const r = parseCsv("\ufeffA@Example.net\r\n\r\nb@example.net\r\n", {
      reason: "manual",
      scope: "x.example",
    });
    expect(r.entries).toEqual([
      { address: "a@example.net", scope: "x.example", reason: "manual" },
      { address: "b@example.net", scope: "x.example", reason: "manual" },
    ]);
  });

  test("every bad line is reported with its number and nothing is imported", () => {
    const r = parseCsv(
      [
        "address,reason,expires",
        "good@example.net,,",
        "bad,,",
        "x@example.net,weird,",
        "y@example.net,,tomorrow",
        "z@example.net,,2001-01-01",
        '"open@example.net',
      ].join("\n"),
    );
    expect(r.entries).toEqual([]);
    expect(r.problems.map((p) => p.line)).toEqual([3, 4, 5, 6, 7]);
  });

  test("an unknown column in the header is a problem", () => {
    expect(parseCsv("address,colour\na@example.net,red\n").problems).toEqual([
      { line: 1, message: 'unknown column "colour" (expected address, scope, reason, added, expires)' },
    ]);
  });
});
