/**
 * Scenario 1, crash loop: under continuous injection and delivery, `kill -9` the daemon at random
 * moments, restart it on the same spool, and at the end let it drain.
 *
 * Holds when: every token acknowledged with 250 reached the sink at least once; every duplicate has a
 * kill between its copies (it was delivered but its outcome not yet recorded when the daemon died);
 * every message at the sink carries exactly one token (nothing split or merged).
 */
import { join } from "node:path";
import { tempDir } from "../test/support/mta.ts";
import { startInjector } from "./_client.ts";
import { startRecordingSink } from "./_sink.ts";
import {
  fmt,
  type Log,
  Rng,
  type ScenarioResult,
  type StartedMta,
  startMta,
  tortureConfig,
  until,
} from "./_support.ts";

export interface CrashLoopOptions {
  rounds: number;
  sessions: number;
  /** Each life lasts a random time in [minLifeMs, maxLifeMs] before the kill. */
  minLifeMs: number;
  maxLifeMs: number;
  sizeBytes: number;
  seed: number;
  drainTimeoutMs: number;
}

export const crashLoopDefaults: CrashLoopOptions = {
  rounds: 200,
  sessions: 8,
  minLifeMs: 100,
  maxLifeMs: 2_000,
  sizeBytes: 1024,
  seed: 1,
  drainTimeoutMs: 120_000,
};

export async function crashLoop(o: CrashLoopOptions, log: Log): Promise<ScenarioResult> {
  using dir = tempDir("mta-torture-crash-");
  const rng = new Rng(o.seed);
  const sink = startRecordingSink();
  const config = tortureConfig(dir.path, {
    routes: { "torture.test": `127.0.0.1:${sink.port}` },
    // Small segments so that kills also land during segment rollover and compaction.
    spool: "segment_size: 256KiB",
    delivery:
      "idle_timeout: 1s, timeouts: { connect: 2s, greeting: 2s, ehlo: 2s, mail: 2s, rcpt: 2s, data_init: 2s, data_block: 2s, data_done: 2s }",
  });
  let port = 0;
  const injector = startInjector({ port: () => port, sessions: o.sessions, sizeBytes: o.sizeBytes });
  const startFailures: string[] = [];
  let mta: StartedMta | undefined;
  const started = Date.now();
  try {
    for (let round = 0; round < o.rounds; round++) {
      mta = await startMta({ dir: dir.path, config }).catch((e) => {
        startFailures.push(String(e).slice(0, 500));
        return undefined;
      });
      if (!mta) break;
      port = mta.smtpPorts[0] ?? 0;
      await Bun.sleep(rng.int(o.minLifeMs, o.maxLifeMs));
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
      sink.life++;
      port = 0;
      if ((round + 1) % 25 === 0)
        log(
          `  round ${round + 1}: ${fmt(injector.stats.acked.size)} acknowledged, ${fmt(sink.received.length)} received`,
        );
    }
    await injector.stop();
    // The last life: no kill; let it drain everything.
    mta = await startMta({ dir: dir.path, config });
    port = mta.smtpPorts[0] ?? 0;
    const acked = [...injector.stats.acked.keys()];
    await until(() => acked.every((t) => sink.counts.has(t)), o.drainTimeoutMs);
    // Give late duplicates a moment to show.
    await Bun.sleep(500);
    const code = await mta.stop("SIGTERM");
    if (code !== 0) startFailures.push(`graceful stop exited ${code}`);
  } finally {
    await injector.stop();
    if (mta && mta.proc.exitCode === null) {
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    sink.stop();
  }

  const violations: string[] = [...startFailures.map((f) => `daemon failed to start: ${f}`)];
  const acked = injector.stats.acked;
  const lostTokens = [...acked.keys()].filter((t) => !sink.counts.has(t));
  // Duplicates: a token received more than once. Each copy after the first must come from a later life.
  const lives = new Map<string, number[]>();
  let merged = 0;
  let untagged = 0;
  for (const r of sink.received) {
    if (r.tokens.length > 1) merged++;
    if (r.tokens.length === 0) untagged++;
    for (const t of r.tokens) {
      const l = lives.get(t) ?? [];
      l.push(r.life);
      lives.set(t, l);
    }
  }
  let duplicates = 0;
  let sameLife = 0;
  for (const [, l] of lives) {
    if (l.length < 2) continue;
    duplicates += l.length - 1;
    for (let i = 1; i < l.length; i++) if (l[i] === l[i - 1]) sameLife++;
  }
  const unackedDelivered = [...lives.keys()].filter((t) => !acked.has(t)).length;
  if (lostTokens.length > 0)
    violations.push(
      `${lostTokens.length} acknowledged message(s) never delivered, e.g. ${lostTokens.slice(0, 5).join(" ")} (ids ${lostTokens
        .slice(0, 5)
        .map((t) => acked.get(t))
        .join(" ")})`,
    );
  if (sameLife > 0)
    violations.push(
      `${sameLife} duplicate(s) delivered twice within one life of the daemon (no kill between)`,
    );
  if (merged > 0) violations.push(`${merged} message(s) at the sink carry more than one token (merged)`);
  if (untagged > 0) violations.push(`${untagged} message(s) at the sink carry no token (split)`);
  if (injector.stats.oddAcks > 0) violations.push(`${injector.stats.oddAcks} 250 replies without a queue id`);
  const refused = [...injector.stats.refused].map(([c, n]) => `${n}×${c}`).join(", ") || "none";
  const kills = sink.life;
  const summary = `${fmt(kills)} kills, ${fmt(acked.size)} acknowledged, ${fmt(lostTokens.length)} lost, ${fmt(duplicates)} duplicates`;
  log(`crash loop: ${summary}`);
  log(
    `  ${fmt(sink.received.length)} deliveries at the sink; ${fmt(unackedDelivered)} delivered whose 250 was cut by a kill; ` +
      `${fmt(injector.stats.unconfirmed.size)} sent whose reply a kill cut off; refused: ${refused}; ${Math.round((Date.now() - started) / 1000)} s, ` +
      `${o.sessions} sessions, ${o.sizeBytes} B messages, lives ${o.minLifeMs}-${o.maxLifeMs} ms, seed ${o.seed}`,
  );
  return {
    name: "crash loop",
    summary,
    lost: lostTokens.length,
    violations,
    figures: {
      kills,
      acknowledged: acked.size,
      lost: lostTokens.length,
      duplicates,
      deliveries: sink.received.length,
      unackedDelivered,
      spool: join(dir.path, "spool"),
    },
  };
}
