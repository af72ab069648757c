/**
 * Scenario 2, disk full during injection: the spool lives on a small tmpfs (else a loop-mounted ext4
 * image), a filler file takes nearly all of it, and clients keep injecting.
 *
 * Holds when: refused messages get 452 (never 250 for a message that was not stored), the daemon stays
 * up, injection succeeds again once the filler is deleted, and after kill -9 and a restart every message
 * acknowledged with 250 is delivered.
 */
import { spawnSync } from "bun";
import { mkdirSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../test/support/mta.ts";
import { SmtpConn, startInjector, taggedMessage } from "./_client.ts";
import { startRecordingSink } from "./_sink.ts";
import {
  fmt,
  type Log,
  mib,
  type ScenarioResult,
  type StartedMta,
  startMta,
  tortureConfig,
  until,
} from "./_support.ts";

export interface DiskFullOptions {
  /** Size of the small filesystem. */
  fsMiB: number;
  /** Free bytes left beside the filler. */
  headroomKiB: number;
  sessions: number;
  sizeBytes: number;
  /** Keep injecting against the full disk until this many refusals were seen (or fullTimeoutMs). */
  refusals: number;
  fullTimeoutMs: number;
  /** Rounds of fill / refuse / free. */
  rounds: number;
}

export const diskFullDefaults: DiskFullOptions = {
  fsMiB: 8,
  headroomKiB: 512,
  sessions: 8,
  sizeBytes: 10_240,
  refusals: 500,
  fullTimeoutMs: 60_000,
  rounds: 5,
};

function sh(cmd: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, out: r.stdout.toString() + r.stderr.toString() };
}

/** Mounts a small filesystem at `mnt`: tmpfs, else a loop-mounted ext4 image. Returns how, or an error. */
function mountSmall(mnt: string, image: string, sizeMiB: number): { how?: string; error?: string } {
  const t = sh(["mount", "-t", "tmpfs", "-o", `size=${sizeMiB}m`, "tmpfs", mnt]);
  if (t.ok) return { how: `tmpfs ${sizeMiB} MiB` };
  const mk = sh(["mkfs.ext4", "-q", "-F", image, `${sizeMiB * 1024}`]);
  if (!mk.ok) return { error: `mount tmpfs: ${t.out.trim()}; mkfs.ext4: ${mk.out.trim()}` };
  const l = sh(["mount", "-o", "loop", image, mnt]);
  if (l.ok) return { how: `loop-mounted ext4 ${sizeMiB} MiB` };
  return { error: `mount tmpfs: ${t.out.trim()}; mount -o loop: ${l.out.trim()}` };
}

function freeBytes(path: string): number {
  const s = statfsSync(path);
  return Number(s.bavail) * Number(s.bsize);
}

/** One transaction on a fresh connection; the final reply code (0 when the session broke). */
async function probe(port: number, token: string): Promise<{ code: number; text: string }> {
  try {
    const { conn } = await SmtpConn.open(port);
    await conn.cmd("EHLO probe.test");
    await conn.cmd("MAIL FROM:<probe@app.test>");
    await conn.cmd(`RCPT TO:<${token}@torture.test>`);
    const d = await conn.cmd("DATA");
    if (d.code !== 354) {
      conn.close();
      return d;
    }
    const r = conn.reply();
    conn.send(taggedMessage(token, 1024));
    const fin = await r;
    conn.close();
    return fin;
  } catch (e) {
    return { code: 0, text: String(e) };
  }
}

export async function diskFull(o: DiskFullOptions, log: Log): Promise<ScenarioResult> {
  using dir = tempDir("mta-torture-full-");
  const mnt = join(dir.path, "fs");
  mkdirSync(mnt);
  const mounted = mountSmall(mnt, join(dir.path, "fs.img"), o.fsMiB);
  if (!mounted.how) {
    const summary = `not run: no small filesystem could be mounted (${mounted.error})`;
    log(`disk full: ${summary}`);
    return { name: "disk full", summary, lost: 0, violations: [summary], figures: {} };
  }
  const violations: string[] = [];
  const sink = startRecordingSink();
  const filler = join(mnt, "filler");
  const spoolDir = join(mnt, "spool");
  const base = { spoolDir, spool: "segment_size: 1MiB" };
  // While full, deliveries go nowhere (a port nothing listens on), so the spool only grows.
  const deadConfig = tortureConfig(dir.path, { ...base, routes: { "torture.test": "127.0.0.1:9" } });
  const sinkConfig = tortureConfig(dir.path, {
    ...base,
    routes: { "torture.test": `127.0.0.1:${sink.port}` },
  });
  let mta: StartedMta | undefined;
  const acked = new Map<string, string>();
  const refusedCodes = new Map<number, number>();
  let refusedTotal = 0;
  let recovered = 0;
  let fullProbe250 = 0;
  let probeSeq = 0;
  const started = Date.now();
  try {
    mta = await startMta({ dir: dir.path, config: deadConfig });
    for (let round = 0; round < o.rounds; round++) {
      const free = freeBytes(mnt);
      writeFileSync(filler, Buffer.alloc(Math.max(0, free - o.headroomKiB * 1024)));
      const port = mta.smtpPorts[0] ?? 0;
      const inj = startInjector({
        port: () => port,
        sessions: o.sessions,
        sizeBytes: o.sizeBytes,
        prefix: `r${round}-`,
      });
      const full = await until(() => {
        let n = 0;
        for (const [c, k] of inj.stats.refused) if (c >= 400) n += k;
        return n >= o.refusals;
      }, o.fullTimeoutMs);
      await inj.stop();
      for (const [t, id] of inj.stats.acked) acked.set(t, id);
      for (const [c, k] of inj.stats.refused) {
        refusedCodes.set(c, (refusedCodes.get(c) ?? 0) + k);
        refusedTotal += k;
      }
      if (!full) violations.push(`round ${round}: fewer than ${o.refusals} refusals with the disk full`);
      if (mta.proc.exitCode !== null) {
        violations.push(`round ${round}: the daemon exited (${mta.proc.exitCode}) with the disk full`);
        break;
      }
      // Still full: a small probe usually gets 452; a 250 is fine as long as that message is delivered later.
      const p = await probe(port, `full${probeSeq++}`);
      if (p.code === 250) fullProbe250++;
      if (p.code === 250) {
        const q = /queued as (\S+)/.exec(p.text);
        acked.set(`full${probeSeq - 1}`, q?.[1] ?? "?");
      }
      log(
        `  round ${round}: ${mib(freeBytes(mnt))} free, ${fmt(inj.stats.acked.size)} acknowledged then ${fmt(refusedTotal)} refused so far; probe while full: ${p.text.split("\n")[0]}`,
      );
      rmSync(filler);
      // Space is back: injection must succeed again without a restart.
      let ok = false;
      for (let i = 0; i < 50 && !ok; i++) {
        const token = `back${probeSeq++}`;
        const r = await probe(port, token);
        if (r.code === 250) {
          ok = true;
          recovered++;
          acked.set(token, /queued as (\S+)/.exec(r.text)?.[1] ?? "?");
        } else await Bun.sleep(100);
      }
      if (!ok) violations.push(`round ${round}: no 250 after the filler was deleted`);
    }
    // Crash, then deliver everything acknowledged.
    mta.proc.kill("SIGKILL");
    await mta.proc.exited;
    mta = await startMta({ dir: dir.path, config: sinkConfig });
    await until(() => [...acked.keys()].every((t) => sink.counts.has(t)), 60_000);
    await mta.stop("SIGTERM");
  } finally {
    if (mta && mta.proc.exitCode === null) {
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    sink.stop();
    rmSync(filler, { force: true });
    const u = sh(["umount", mnt]);
    if (!u.ok) violations.push(`umount ${mnt}: ${u.out.trim()}`);
  }
  const lost = [...acked.keys()].filter((t) => !sink.counts.has(t));
  if (lost.length > 0)
    violations.push(`${lost.length} acknowledged message(s) lost, e.g. ${lost.slice(0, 5).join(" ")}`);
  const non452 = [...refusedCodes].filter(([c]) => c !== 452);
  if (non452.length > 0)
    violations.push(`refusals other than 452: ${non452.map(([c, n]) => `${n}×${c}`).join(", ")}`);
  if (fullProbe250 > 0)
    log(
      `  note: ${fullProbe250} 1 KB probe(s) got 250 while the filler was in place (a small message still fitted where the 10 KB ones did not; each was delivered later)`,
    );
  const summary = `${o.rounds} fills of a ${mounted.how}, ${fmt(refusedCodes.get(452) ?? 0)} × 452, ${fmt(acked.size)} acknowledged, ${fmt(lost.length)} lost, ${recovered}/${o.rounds} recoveries without restart`;
  log(`disk full: ${summary}`);
  log(
    `  ${o.sessions} sessions, ${o.sizeBytes} B messages, ${o.headroomKiB} KiB headroom beside the filler, ${Math.round((Date.now() - started) / 1000)} s`,
  );
  return {
    name: "disk full",
    summary,
    lost: lost.length,
    violations,
    figures: { acknowledged: acked.size, refused452: refusedCodes.get(452) ?? 0, refusedTotal, recovered },
  };
}
