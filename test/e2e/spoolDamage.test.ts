/**
 * Torn tail versus damage through the binary: a flipped byte in the last acknowledged record is damage
 * (verify exits 65; the next start warns with segment, offset and the quarantine file), while a batch a
 * crash cut short is a torn tail (verify exits 0; the next start cuts it).
 */
import { expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { sendMessages } from "../support/smtpClient.ts";
import { segmentRecords } from "../spool/helpers.ts";

const DEAD = "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }";

function activeSegment(dir: string): string {
  const segs = join(dir, "spool", "segments");
  const names = readdirSync(segs)
    .filter((n) => n.endsWith(".seg"))
    .sort();
  return join(segs, names[names.length - 1]!);
}

/** A stopped daemon's spool holding three acknowledged messages, and its active segment's bytes. */
async function spoolOfThree(dir: string) {
  const config = testConfig(dir, DEAD);
  const configFile = join(dir, "mta.yaml");
  let ids: string[];
  {
    await using mta = await startMta({ dir, config });
    ids = await sendMessages(mta.smtpPorts[0]!, 3);
    expect(await mta.stop()).toBe(0);
  }
  const file = activeSegment(dir);
  return { config, configFile, ids, file, bytes: readFileSync(file) };
}

test("a flipped byte in the last acknowledged record: verify exits 65, the start warns with the quarantine path", async () => {
  using dir = tempDir();
  const { config, configFile, ids, file, bytes } = await spoolOfThree(dir.path);
  const name = file.split("/").pop()!;
  const last = segmentRecords(bytes)
    .filter((r) => r.type === 1)
    .pop()!;
  expect(last.end).toBe(bytes.length); // the very last bytes of the active segment
  bytes[last.offset + 40]! ^= 0x04;
  writeFileSync(file, bytes);

  const v = runMta(["queue", "verify", "-c", configFile]);
  expect(v.code).toBe(65);
  expect(v.stdout).toContain(`DAMAGED ${name} offset ${last.offset} (${last.end - last.offset} bytes)`);
  expect(v.stdout).not.toContain("torn tail");

  {
    await using mta = await startMta({ dir: dir.path, config });
    const warn = mta.logLines().find((l) => l.msg === "damaged spool record skipped");
    expect(warn).toMatchObject({ level: "warn", segment: name, offset: last.offset });
    const q = String(warn!.quarantine);
    expect(q).toBe(join(dir.path, "spool", "quarantine", `${name.replace(".seg", "")}-${last.offset}.bad`));
    expect(readFileSync(q)).toEqual(bytes.subarray(last.offset, last.end));
    const listed = runMta(["queue", "list", "--json", "-c", configFile]);
    expect(listed.code).toBe(0);
    const live = JSON.parse(listed.stdout)
      .messages.map((m: { id: string }) => m.id)
      .sort();
    expect(live).toEqual(ids.slice(0, 2).sort());
    expect(await mta.stop()).toBe(0);
    // Reclaimed from the segments, kept in the quarantine: verify keeps saying so until it is removed.
    const again = runMta(["queue", "verify", "-c", configFile]);
    expect(again.code).toBe(65);
    expect(again.stdout).toContain(`QUARANTINED ${q}`);
    expect(again.stdout).not.toContain("DAMAGED");
    rmSync(q);
  }
  expect(runMta(["queue", "verify", "-c", configFile]).code).toBe(0);
}, 40_000);

test("a batch cut short by a crash is a torn tail: verify exits 0 and says so, the start cuts it quietly", async () => {
  using dir = tempDir();
  const { config, configFile, ids, file, bytes } = await spoolOfThree(dir.path);
  const batches = segmentRecords(bytes).filter((r) => r.type === 3);
  const lastBatch = batches[batches.length - 1]!;
  truncateSync(file, bytes.length - 10); // inside the last batch: as if its write was cut
  const v = runMta(["queue", "verify", "-c", configFile]);
  expect(v.code).toBe(0);
  expect(v.stdout).toContain(`torn tail: ${file.split("/").pop()} from offset ${lastBatch.offset}`);
  expect(v.stdout).toContain("never acknowledged");
  await using mta = await startMta({ dir: dir.path, config });
  expect(mta.logLines().filter((l) => l.level === "warn" && String(l.msg).includes("damaged"))).toEqual([]);
  const listed = runMta(["queue", "list", "--json", "-c", configFile]);
  expect(JSON.parse(listed.stdout).messages.length).toBe(ids.length - 1);
  expect(existsSync(join(dir.path, "spool", "quarantine"))).toBe(false);
}, 40_000);
