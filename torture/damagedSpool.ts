/**
 * Scenario 5, damaged spool: queue messages in small segments, stop the daemon, flip random bytes in
 * sealed segments and truncate the active one at a random offset, then check `mta queue verify` and a
 * restart.
 *
 * Holds when: `mta queue verify` exits 65 naming every damaged sealed segment, the restarted daemon logs
 * `damaged spool record skipped` with segment, offset and the quarantine file holding exactly those
 * bytes, keeps running, and every message whose MESSAGE record was left intact (and, in the active
 * segment, whose batch the cut left whole) is delivered. Messages whose only record was damaged are
 * counted as "lost to damage" (that is the damage, not a broken promise).
 * The record layout read here is docs/spool-format.md (magic, crc32, length, type, payload; BATCH
 * records).
 */
import { existsSync, readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../test/support/mta.ts";
import { startInjector } from "./_client.ts";
import { startRecordingSink, tokensOf } from "./_sink.ts";
import {
  api,
  fmt,
  type Log,
  queueCli,
  Rng,
  type ScenarioResult,
  type StartedMta,
  startMta,
  tortureConfig,
  until,
} from "./_support.ts";

export interface DamagedSpoolOptions {
  messages: number;
  sizeBytes: number;
  /** Random single-byte flips in each sealed segment. */
  flipsPerSegment: number;
  rounds: number;
  seed: number;
}

export const damagedSpoolDefaults: DamagedSpoolOptions = {
  messages: 2_000,
  sizeBytes: 1024,
  flipsPerSegment: 3,
  rounds: 5,
  seed: 5,
};

const RECORD_MAGIC = 0x43455253;
const SEGMENT_HEADER_BYTES = 16;
const RECORD_HEADER_BYTES = 16;
const TYPE_MESSAGE = 1;

const TYPE_BATCH = 3;

interface RecordSpan {
  segment: string;
  offset: number;
  end: number;
  type: number;
  /** End of the group-commit batch the record belongs to (a BATCH record says; format version 2). */
  batchEnd: number;
  tokens: string[];
}

/** Every record of a segment file, walked by its length fields (the file is intact when this runs). */
function recordsOf(segment: string, bytes: Buffer): RecordSpan[] {
  const out: RecordSpan[] = [];
  let off = SEGMENT_HEADER_BYTES;
  let batchEnd = 0;
  while (off + RECORD_HEADER_BYTES <= bytes.length) {
    if (bytes.readUInt32LE(off) !== RECORD_MAGIC) throw new Error(`${segment}: no record magic at ${off}`);
    const len = bytes.readUInt32LE(off + 8);
    const type = bytes[off + 12] ?? 0;
    const end = off + RECORD_HEADER_BYTES + len;
    if (type === TYPE_BATCH) batchEnd = end + bytes.readUInt32LE(off + RECORD_HEADER_BYTES);
    const payload = bytes.subarray(off + RECORD_HEADER_BYTES, end).toString("latin1");
    out.push({
      segment,
      offset: off,
      end,
      type,
      batchEnd: Math.max(batchEnd, end),
      tokens: type === TYPE_MESSAGE ? tokensOf(payload) : [],
    });
    off = end;
  }
  return out;
}

async function oneRound(o: DamagedSpoolOptions, round: number, log: Log) {
  using dir = tempDir("mta-torture-damage-");
  const rng = new Rng(o.seed * 1000 + round);
  const violations: string[] = [];
  const sink = startRecordingSink();
  const spool = "segment_size: 64KiB";
  const deadConfig = tortureConfig(dir.path, { spool, routes: { "torture.test": "127.0.0.1:9" } });
  const sinkConfig = tortureConfig(dir.path, { spool, routes: { "torture.test": `127.0.0.1:${sink.port}` } });
  let mta: StartedMta | undefined;
  try {
    mta = await startMta({ dir: dir.path, config: deadConfig });
    const port = mta.smtpPorts[0] ?? 0;
    const inj = startInjector({
      port: () => port,
      sessions: 4,
      sizeBytes: o.sizeBytes,
      prefix: `d${round}-`,
    });
    await until(() => inj.stats.acked.size >= o.messages, 60_000);
    await inj.stop();
    const acked = inj.stats.acked;
    await mta.stop("SIGTERM");

    // Map every record, then damage: flips in sealed segments, a cut in the active one.
    const segDir = join(dir.path, "spool", "segments");
    const names = readdirSync(segDir)
      .filter((n) => n.endsWith(".seg"))
      .sort();
    const active = names[names.length - 1] ?? "";
    const records: RecordSpan[] = [];
    /** Each damaged segment as it was after the damage, to check the quarantine files against. */
    const originals = new Map<string, Buffer>();
    const damaged = new Set<string>();
    const hits: { segment: string; at: number }[] = [];
    let cut = Number.POSITIVE_INFINITY;
    for (const name of names) {
      const file = join(segDir, name);
      const bytes = readFileSync(file);
      records.push(...recordsOf(name, bytes));
      if (name === active) {
        cut = rng.int(SEGMENT_HEADER_BYTES, bytes.length);
        truncateSync(file, cut);
        continue;
      }
      for (let i = 0; i < o.flipsPerSegment; i++) {
        const at = rng.int(SEGMENT_HEADER_BYTES, bytes.length - 1);
        bytes[at] = (bytes[at] ?? 0) ^ (1 << rng.int(0, 7));
        hits.push({ segment: name, at });
        damaged.add(name);
      }
      writeFileSync(file, bytes);
      originals.set(name, Buffer.from(bytes));
    }
    // A cut inside a batch of the active segment is a torn tail: the whole batch was never
    // acknowledged and goes, complete records and all.
    const intact = (r: RecordSpan) =>
      !hits.some((h) => h.segment === r.segment && h.at >= r.offset && h.at < r.end) &&
      !(r.segment === active && r.batchEnd > cut);
    const expected = new Set<string>();
    for (const r of records)
      if (r.type === TYPE_MESSAGE && intact(r)) for (const t of r.tokens) expected.add(t);
    const brokenRecords = records.filter((r) => !intact(r) && r.segment !== active).length;

    // verify: exit 65, naming every damaged sealed segment.
    const configFile = join(dir.path, "verify.yaml");
    writeFileSync(configFile, deadConfig);
    const v = queueCli(configFile, ["verify"]);
    if (damaged.size > 0 && v.code !== 65)
      violations.push(`mta queue verify exited ${v.code}, not 65:\n${v.stdout}${v.stderr}`);
    for (const name of damaged)
      if (!new RegExp(`DAMAGED \\S*${name} offset \\d+`).test(v.stdout))
        violations.push(`mta queue verify does not name ${name}:\n${v.stdout}`);
    const verifyLines = v.stdout.split("\n").filter((l) => l.startsWith("DAMAGED")).length;

    // Restart towards the sink; everything intact must arrive.
    mta = await startMta({ dir: dir.path, config: sinkConfig });
    const skipped = mta.logLines().filter((l) => l.msg === "damaged spool record skipped");
    for (const name of damaged)
      if (!skipped.some((l) => String(l.segment).endsWith(name) && typeof l.offset === "number"))
        violations.push(`no "damaged spool record skipped" log line names ${name}`);
    for (const l of skipped) {
      // Moved aside, never cut away: the quarantine file holds exactly the bytes found bad.
      const q = typeof l.quarantine === "string" ? l.quarantine : "";
      const original = originals.get(String(l.segment));
      if (!q || !existsSync(q)) violations.push(`no quarantine file for ${l.segment} offset ${l.offset}`);
      else if (original) {
        const off = Number(l.offset);
        const want = original.subarray(off, off + Number(l.bytes));
        if (!readFileSync(q).equals(want)) violations.push(`${q} does not hold the damaged bytes`);
      }
    }
    await api(mta.controlPort, "POST", "/api/v1/queue/flush", { destination: "torture.test" });
    await until(() => [...expected].every((t) => sink.counts.has(t)), 30_000);
    if (mta.proc.exitCode !== null) violations.push(`the daemon exited ${mta.proc.exitCode} after recovery`);
    await mta.stop("SIGTERM");
    const lost = [...expected].filter((t) => acked.has(t) && !sink.counts.has(t));
    const lostToDamage = [...acked.keys()].filter((t) => !expected.has(t));
    const deliveredAnyway = lostToDamage.filter((t) => sink.counts.has(t)).length;
    if (lost.length > 0)
      violations.push(
        `round ${round}: ${lost.length} message(s) with an intact record not delivered, e.g. ${lost.slice(0, 5).join(" ")}`,
      );
    log(
      `  round ${round}: ${names.length} segments, ${fmt(acked.size)} acknowledged, ${hits.length} flips hit ${brokenRecords} record(s), active cut at ${cut}; ` +
        `verify named ${verifyLines}, log named ${skipped.length}; ${fmt(expected.size)} intact delivered ${fmt(expected.size - lost.length)}, ` +
        `${lostToDamage.length} lost to damage (${deliveredAnyway} of them delivered anyway)`,
    );
    return {
      acked: acked.size,
      segments: names.length,
      flips: hits.length,
      expected: expected.size,
      lost: lost.length,
      lostToDamage: lostToDamage.length,
      reported: skipped.length,
      violations,
    };
  } finally {
    if (mta && mta.proc.exitCode === null) {
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    sink.stop();
  }
}

export async function damagedSpool(o: DamagedSpoolOptions, log: Log): Promise<ScenarioResult> {
  const t = { acked: 0, segments: 0, flips: 0, expected: 0, lost: 0, lostToDamage: 0, reported: 0 };
  const violations: string[] = [];
  for (let round = 0; round < o.rounds; round++) {
    const r = await oneRound(o, round, log);
    t.acked += r.acked;
    t.segments += r.segments;
    t.flips += r.flips;
    t.expected += r.expected;
    t.lost += r.lost;
    t.lostToDamage += r.lostToDamage;
    t.reported += r.reported;
    violations.push(...r.violations);
  }
  const summary = `${o.rounds} spools, ${fmt(t.segments)} segments, ${fmt(t.flips)} bit flips + ${o.rounds} truncations, ${fmt(t.reported)} damaged records reported, ${fmt(t.expected)} intact messages, ${fmt(t.lost)} lost, ${fmt(t.lostToDamage)} lost to damage`;
  log(`damaged spool: ${summary}`);
  return { name: "damaged spool", summary, lost: t.lost, violations, figures: { ...t } };
}
