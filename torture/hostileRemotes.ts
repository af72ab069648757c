/**
 * Scenario 4, hostile remotes: one receiving server per misbehaviour (stalls mid-reply, endless reply
 * lines, closes during DATA, answers garbage, greets then never answers, breaks the TLS handshake,
 * never answers the final dot), each the static route of its own domain, with 2 s client timeouts.
 *
 * Holds when: attempts time out and are retried, the daemon's RSS stays bounded, once the destinations
 * are suspended the outbound connection gauges (active and idle) return to 0 and no socket is left open
 * at the servers, every message is deferred (or delivered), and when the servers turn good every
 * acknowledged message is delivered.
 */
import { tempDir } from "../test/support/mta.ts";
import { startInjector } from "./_client.ts";
import { type RecordingSink, type SinkMode, startRecordingSink } from "./_sink.ts";
import {
  api,
  deliveryLog,
  fmt,
  type Log,
  metric,
  mib,
  rssSampler,
  type ScenarioResult,
  type StartedMta,
  startMta,
  tortureConfig,
  until,
} from "./_support.ts";

export interface HostileRemotesOptions {
  /** Messages queued per hostile server. */
  messagesPerServer: number;
  /** How long the servers stay hostile. */
  hostileMs: number;
  /** RSS may not grow beyond the first sample plus this. */
  rssBudgetMiB: number;
  /** Flush every destination this often while hostile. */
  flushEveryMs: number;
}

export const hostileRemotesDefaults: HostileRemotesOptions = {
  messagesPerServer: 50,
  hostileMs: 60_000,
  rssBudgetMiB: 150,
  flushEveryMs: 5_000,
};

const MODES: SinkMode[] = [
  "stall-mid-reply",
  "endless",
  "close-in-data",
  "garbage",
  "mute",
  "tls-fail",
  "stall-after-dot",
];

export async function hostileRemotes(o: HostileRemotesOptions, log: Log): Promise<ScenarioResult> {
  using dir = tempDir("mta-torture-remotes-");
  const violations: string[] = [];
  const sinks = new Map<SinkMode, RecordingSink>(MODES.map((m) => [m, startRecordingSink({ mode: m })]));
  const routes: Record<string, string> = {};
  for (const [m, s] of sinks) routes[`${m}.test`] = `127.0.0.1:${s.port}`;
  const t = "2s";
  const config = tortureConfig(dir.path, {
    routes,
    delivery: `idle_timeout: 1s, timeouts: { connect: ${t}, greeting: ${t}, ehlo: ${t}, mail: ${t}, rcpt: ${t}, data_init: ${t}, data_block: ${t}, data_done: ${t}, rset: ${t}, quit: ${t} }`,
  });
  let mta: StartedMta | undefined;
  const acked = new Map<string, string>();
  let figures: Record<string, number | string> = {};
  try {
    mta = await startMta({ dir: dir.path, config });
    const port = mta.smtpPorts[0] ?? 0;
    const rss = rssSampler(mta.proc.pid);
    for (const m of MODES) {
      const inj = startInjector({
        port: () => port,
        sessions: 2,
        prefix: `${m}-`,
        domain: `${m}.test`,
        max: o.messagesPerServer,
      });
      await until(() => inj.stats.acked.size >= o.messagesPerServer, 30_000);
      await inj.stop();
      for (const [k, v] of inj.stats.acked) acked.set(k, v);
    }
    // A whole-site failure (no greeting, a broken reply) backs the site off for 60 s, longer than a
    // short run; flushing now and then (the operator's "retry now") makes the retries happen anyway.
    const hostileEnd = Date.now() + o.hostileMs;
    while (Date.now() < hostileEnd) {
      await Bun.sleep(Math.min(o.flushEveryMs, Math.max(0, hostileEnd - Date.now())));
      for (const m of MODES)
        await api(mta.controlPort, "POST", "/api/v1/queue/flush", { destination: `${m}.test` });
    }
    const events = deliveryLog(dir.path);
    const failures = events.filter((e) => e.type === "transient-failure");
    const siteFailures = new Map<string, number>();
    for (const e of events)
      if (e.type === "suspension")
        siteFailures.set(String(e.destination), (siteFailures.get(String(e.destination)) ?? 0) + 1);
    const attemptsById = new Map<string, number>();
    for (const e of failures) attemptsById.set(String(e.id), (attemptsById.get(String(e.id)) ?? 0) + 1);
    const deliveredHostile = new Set(events.filter((e) => e.type === "delivery").map((e) => String(e.id)));
    // Suspend every destination; in-flight attempts must end and idle connections close.
    for (const m of MODES)
      await api(mta.controlPort, "POST", "/api/v1/queue/suspend", { destination: `${m}.test` });
    const drained = await until(
      async () =>
        (await metric(mta!.controlPort, "mta_deliverer_connections_active")) === 0 &&
        (await metric(mta!.controlPort, "mta_deliverer_connections_idle")) === 0 &&
        [...sinks.values()].every((s) => s.openSockets() === 0),
      15_000,
    );
    const activeLeft = await metric(mta.controlPort, "mta_deliverer_connections_active");
    const idleLeft = await metric(mta.controlPort, "mta_deliverer_connections_idle");
    const socketsLeft = [...sinks.values()].reduce((n, s) => n + s.openSockets(), 0);
    if (!drained)
      violations.push(
        `connections left after suspension: ${activeLeft} active, ${idleLeft} idle, ${socketsLeft} sockets open at the servers`,
      );
    const list = (await api(mta.controlPort, "GET", "/api/v1/queue/messages?limit=100000")) as {
      messages: { id: string; state: string; attempts: number }[];
    };
    const notDeferred = list.messages.filter((m) => m.state === "active").length;
    const queued = list.messages.length;
    if (queued + deliveredHostile.size < acked.size)
      violations.push(
        `${acked.size - queued - deliveredHostile.size} acknowledged message(s) neither queued nor delivered`,
      );
    const perMode: string[] = [];
    for (const m of MODES) {
      const ids = [...acked].filter(([k]) => k.startsWith(`${m}-`)).map(([, id]) => id);
      const att = ids.map((id) => attemptsById.get(id) ?? 0);
      const delivered = ids.filter((id) => deliveredHostile.has(id)).length;
      const retried = att.filter((a) => a >= 2).length;
      // A static route's next hop is the site that backs off (every domain it carries shares it).
      const sf = siteFailures.get(`127.0.0.1:${sinks.get(m)!.port}`) ?? 0;
      perMode.push(
        `${m}: ${fmt(att.reduce((a, b) => a + b, 0))} message attempts failed (${retried}/${ids.length} messages retried), ${sf} site failures (backoffs), ${delivered} delivered`,
      );
      if (sf < 2 && retried + delivered < ids.length)
        violations.push(
          `${m}: ${ids.length - retried - delivered} message(s) neither retried nor delivered in ${o.hostileMs} ms`,
        );
    }
    const rssHostile = rss.maxBytes;
    // The servers turn good; every acknowledged message must now arrive.
    for (const s of sinks.values()) s.mode = "good";
    for (const m of MODES) {
      await api(mta.controlPort, "POST", "/api/v1/queue/resume", { destination: `${m}.test` });
      await api(mta.controlPort, "POST", "/api/v1/queue/flush", { destination: `${m}.test` });
    }
    const received = (tok: string) => [...sinks.values()].some((s) => s.counts.has(tok));
    await until(() => [...acked.keys()].every(received), 30_000);
    rss.stop();
    const lost = [...acked.keys()].filter((k) => !received(k));
    if (lost.length > 0)
      violations.push(
        `${lost.length} acknowledged message(s) not delivered by the good servers, e.g. ${lost.slice(0, 5).join(" ")}`,
      );
    if (rssHostile > rss.firstBytes + o.rssBudgetMiB * 1024 * 1024)
      violations.push(`RSS grew from ${mib(rss.firstBytes)} to ${mib(rssHostile)}`);
    let duplicates = 0;
    for (const s of sinks.values()) for (const [, n] of s.counts) duplicates += n - 1;
    const almost = sinks.get("stall-after-dot")?.almost.length ?? 0;
    const summary = `${MODES.length} hostile servers, ${fmt(acked.size)} acknowledged, ${fmt(failures.length)} timed-out/failed attempts, ${fmt(lost.length)} lost, connections back to ${activeLeft}+${idleLeft}, RSS ${mib(rss.firstBytes)} → max ${mib(rssHostile)}`;
    log(`hostile remotes: ${summary}`);
    for (const p of perMode) log(`  ${p}`);
    log(
      `  after ${o.hostileMs} ms: ${queued} queued (${notDeferred} due now), then good servers: ${fmt(acked.size - lost.length)} delivered, ${duplicates} duplicates (${almost} messages were received but never answered by stall-after-dot)`,
    );
    figures = {
      acknowledged: acked.size,
      attempts: failures.length,
      lost: lost.length,
      activeLeft,
      idleLeft,
      socketsLeft,
      rssFirst: rss.firstBytes,
      rssMax: rssHostile,
      duplicates,
      almost,
    };
    await mta.stop("SIGTERM");
    return { name: "hostile remotes", summary, lost: lost.length, violations, figures };
  } finally {
    if (mta && mta.proc.exitCode === null) {
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    for (const s of sinks.values()) s.stop();
  }
}
