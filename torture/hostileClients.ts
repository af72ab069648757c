/**
 * Scenario 3, hostile clients against the listener, all at once for `durationMs`:
 *   - a seeded fuzzer: sessions built from an SMTP grammar (valid commands, parameters, message bodies)
 *     mutated (bit flips, NULs, bare CR/LF, case, overlong lines, random bytes), pipelined and split
 *     at random byte boundaries;
 *   - slowloris sessions sending one byte per second;
 *   - a flood beyond max_connections_per_ip from one address, and a flood beyond max_connections;
 *   - oversize messages, SIZE declared and undeclared;
 *   - smuggling variants: <LF>.<LF>, <CR>.<CR>, <LF>.<CRLF>, <CRLF>.<LF>, <CR>.<CRLF> hiding a second
 *     transaction inside a message;
 *   - pipelined bursts of well-formed transactions split at random byte boundaries;
 *   - a good client (its own address) doing one transaction every `probeEveryMs`.
 * Holds when: the good client gets 250 throughout (except while the global flood is held: 421 there is
 * the limit working), the daemon never exits, RSS stays bounded, every acknowledged message reaches the
 * sink exactly once and as one message, no smuggled transaction ever arrives as its own message, and
 * nothing oversize is accepted.
 */
import net from "node:net";
import { tempDir } from "../test/support/mta.ts";
import { QUEUED_AS, SmtpConn, taggedMessage } from "./_client.ts";
import { startRecordingSink } from "./_sink.ts";
import {
  fmt,
  type Log,
  mib,
  Rng,
  rssSampler,
  type ScenarioResult,
  type StartedMta,
  startMta,
  tortureConfig,
  until,
} from "./_support.ts";

export interface HostileClientsOptions {
  durationMs: number;
  fuzzSessions: number;
  slowloris: number;
  probeEveryMs: number;
  rssBudgetMiB: number;
  seed: number;
}

export const hostileClientsDefaults: HostileClientsOptions = {
  durationMs: 120_000,
  fuzzSessions: 12,
  slowloris: 40,
  probeEveryMs: 200,
  rssBudgetMiB: 200,
  seed: 3,
};

const MAX_CONNECTIONS = 300;
const MAX_PER_IP = 60;
const MAX_MESSAGE_BYTES = 1_000_000;

/** A plain socket from a chosen loopback address; counts what it got back. */
function raw(port: number, localAddress: string) {
  const s = net.connect({ host: "127.0.0.1", port, localAddress });
  let got = "";
  let closed = false;
  s.on("data", (d) => {
    if (got.length < 65_536) got += d.toString("latin1");
  });
  s.on("error", () => {});
  const done = new Promise<void>((r) =>
    s.on("close", () => {
      closed = true;
      r();
    }),
  );
  const connected = new Promise<boolean>((r) => {
    s.once("connect", () => r(true));
    s.once("error", () => r(false));
  });
  return {
    connected,
    done,
    write: (b: string | Uint8Array) => {
      if (!closed) s.write(b);
    },
    got: () => got,
    closed: () => closed,
    destroy: () => s.destroy(),
  };
}

const COMMANDS = [
  "EHLO fuzz.test",
  "HELO fuzz.test",
  "MAIL FROM:<fz@app.test>",
  "MAIL FROM:<fz@app.test> SIZE=1000 BODY=8BITMIME",
  "MAIL FROM:<>",
  "MAIL FROM:<fz@app.test> SMTPUTF8 RET=HDRS ENVID=x",
  "MAIL FROM:fz@app.test",
  "RCPT TO:<fz@torture.test>",
  "RCPT TO:<fz@torture.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;fz@torture.test",
  "RCPT TO:<@relay.test:fz@torture.test>",
  "RCPT TO:<postmaster>",
  "DATA",
  "BDAT 12 LAST",
  "RSET",
  "NOOP",
  "VRFY fz",
  "EXPN list",
  "HELP",
  "STARTTLS",
  "AUTH PLAIN AGZvbwBiYXI=",
  "AUTH LOGIN",
  "ETRN torture.test",
];

/** One fuzz session's bytes: a walk over the grammar, mutated. */
function fuzzScript(rng: Rng, seq: () => number): Buffer {
  const parts: Buffer[] = [];
  const steps = rng.int(3, 25);
  for (let i = 0; i < steps; i++) {
    const roll = rng.next();
    let piece: Buffer;
    if (roll < 0.55) piece = Buffer.from(`${rng.pick(COMMANDS)}\r\n`, "latin1");
    else if (roll < 0.75) piece = Buffer.from(taggedMessage(`fz${seq()}`, rng.int(100, 3000)), "latin1");
    else if (roll < 0.82) piece = Buffer.from(".\r\n");
    else if (roll < 0.9) {
      piece = Buffer.alloc(rng.int(1, 2000));
      for (let j = 0; j < piece.length; j++) piece[j] = rng.int(0, 255);
    } else if (roll < 0.95)
      piece = Buffer.from(
        `${rng.pick(["MAIL FROM:<", "NOOP ", "X"])}${"A".repeat(rng.int(4000, 70_000))}\r\n`,
      );
    else piece = Buffer.from(`${rng.pick(COMMANDS).toLowerCase()}\r\n`);
    // Mutations.
    if (rng.chance(0.3)) {
      piece = Buffer.from(piece);
      const n = rng.int(1, 4);
      for (let j = 0; j < n && piece.length > 0; j++) {
        const at = rng.int(0, piece.length - 1);
        const kind = rng.int(0, 4);
        if (kind === 0) piece[at] = (piece[at] ?? 0) ^ (1 << rng.int(0, 7));
        else if (kind === 1) piece[at] = 0;
        else if (kind === 2) piece[at] = 0x0a;
        else if (kind === 3) piece[at] = 0x0d;
        else piece = piece.subarray(0, at);
      }
    }
    parts.push(piece);
  }
  return Buffer.concat(parts);
}

/** Writes `bytes` in chunks cut at random byte boundaries, with small random pauses. */
async function writeSplit(
  rng: Rng,
  write: (b: Uint8Array) => void,
  bytes: Uint8Array,
  maxPauseMs = 15,
): Promise<void> {
  let off = 0;
  while (off < bytes.length) {
    const n = Math.min(bytes.length - off, rng.int(1, rng.chance(0.5) ? 16 : 4096));
    write(bytes.subarray(off, off + n));
    off += n;
    if (rng.chance(0.3)) await Bun.sleep(rng.int(0, maxPauseMs));
  }
}

const SMUGGLING: [string, string][] = [
  ["<LF>.<LF>", "\n.\n"],
  ["<CR>.<CR>", "\r.\r"],
  ["<LF>.<CRLF>", "\n.\r\n"],
  ["<CRLF>.<LF>", "\r\n.\n"],
  ["<CR>.<CRLF>", "\r.\r\n"],
  ["<CRLF>.<CR>", "\r\n.\r"],
];

export async function hostileClients(o: HostileClientsOptions, log: Log): Promise<ScenarioResult> {
  using dir = tempDir("mta-torture-clients-");
  const violations: string[] = [];
  const sink = startRecordingSink();
  const config = tortureConfig(dir.path, {
    routes: { "torture.test": `127.0.0.1:${sink.port}` },
    listen: `max_connections: ${MAX_CONNECTIONS}, max_connections_per_ip: ${MAX_PER_IP}, max_message_size: ${MAX_MESSAGE_BYTES}, command_timeout: 5s, data_timeout: 5s`,
  });
  let mta: StartedMta | undefined;
  const acked = new Map<string, string>();
  const c = {
    probes: 0,
    probeOk: 0,
    probeFailInFlood: 0,
    probeFail: [] as string[],
    fuzzSessions: 0,
    fuzzBytes: 0,
    slowlorisOpened: 0,
    slowlorisClosedByServer: 0,
    perIpRefused: 0,
    perIpHeld: 0,
    globalRefused: 0,
    globalHeld: 0,
    oversizeTried: 0,
    oversizeAccepted: 0,
    smuggleTried: 0,
    smuggleAccepted: 0,
    smuggleRejected: 0,
    pipeSent: 0,
    pipeAcked: 0,
    pipeRefusedInFlood: 0,
    pipeFail: 0,
    slowDataHeldS: 0,
  };
  const smuggleOutcomes = new Map<string, string>();
  let seq = 0;
  let floodActive = false;
  let stopping = false;
  const started = Date.now();
  let rss: ReturnType<typeof rssSampler> | undefined;
  try {
    mta = await startMta({ dir: dir.path, config });
    const port = mta.smtpPorts[0] ?? 0;
    rss = rssSampler(mta.proc.pid);

    const probeLoop = async () => {
      while (!stopping) {
        const token = `good${seq++}`;
        const inFlood = floodActive;
        let res = "";
        try {
          const { conn, greeting } = await SmtpConn.open(port);
          if (greeting.code !== 220) res = greeting.text;
          else {
            await conn.cmd("EHLO good.test");
            await conn.cmd("MAIL FROM:<good@app.test>");
            await conn.cmd(`RCPT TO:<${token}@torture.test>`);
            const d = await conn.cmd("DATA");
            if (d.code !== 354) res = d.text;
            else {
              const r = conn.reply();
              conn.send(taggedMessage(token, 2000));
              const fin = await r;
              const q = QUEUED_AS.exec(fin.text);
              if (q) acked.set(token, q[1] as string);
              else res = fin.text;
              await conn.cmd("QUIT").catch(() => {});
            }
          }
          conn.close();
        } catch (e) {
          res = String(e);
        }
        c.probes++;
        if (!res) c.probeOk++;
        else if (inFlood || floodActive) c.probeFailInFlood++;
        else c.probeFail.push(`${new Date().toISOString()} ${res.split("\n")[0]}`);
        await Bun.sleep(o.probeEveryMs);
      }
    };

    const fuzzLoop = async (n: number) => {
      const r = new Rng(o.seed * 7919 + n);
      while (!stopping) {
        const s = raw(port, `127.0.0.${3 + (n % 4)}`);
        if (!(await s.connected)) {
          await Bun.sleep(50);
          continue;
        }
        // Some sessions open with a valid transaction so that fuzz mail also reaches the sink.
        const prelude = r.chance(0.3)
          ? `EHLO fuzz.test\r\nMAIL FROM:<fz@app.test>\r\nRCPT TO:<fz@torture.test>\r\nDATA\r\n${taggedMessage(`fz${seq++}`, r.int(100, 3000))}`
          : "";
        const bytes = Buffer.concat([Buffer.from(prelude, "latin1"), fuzzScript(r, () => seq++)]);
        c.fuzzSessions++;
        c.fuzzBytes += bytes.length;
        await writeSplit(r, s.write, bytes);
        await Promise.race([s.done, Bun.sleep(r.int(50, 1500))]);
        s.destroy();
      }
    };

    const slowlorisLoop = async (n: number) => {
      const text = "EHLO slow.test\r\nMAIL FROM:<slow@app.test>\r\nRCPT TO:<slow@torture.test>\r\nDATA\r\n";
      while (!stopping) {
        const s = raw(port, "127.0.0.20");
        if (!(await s.connected)) {
          await Bun.sleep(1000);
          continue;
        }
        c.slowlorisOpened++;
        // Odd sessions reach DATA at once and trickle the body; even ones trickle the commands.
        const inData = n % 2 === 1;
        if (inData) s.write(text);
        const t0 = Date.now();
        let i = 0;
        while (!stopping && !s.closed()) {
          s.write(text[i % text.length] ?? "x");
          i++;
          await Bun.sleep(1000 + (n % 7) * 10);
        }
        if (s.closed()) c.slowlorisClosedByServer++;
        if (inData) c.slowDataHeldS += (Date.now() - t0) / 1000;
        s.destroy();
      }
    };

    /** Opens `count` connections from `addrs`; counts greetings 220 vs refusals; holds them `holdMs`. */
    const flood = async (addrs: string[], count: number, holdMs: number) => {
      const socks = Array.from({ length: count }, (_, i) =>
        raw(port, addrs[i % addrs.length] ?? "127.0.0.30"),
      );
      await Promise.all(socks.map((s) => s.connected));
      await Bun.sleep(500);
      const held = socks.filter((s) => s.got().startsWith("220")).length;
      const refused = socks.filter((s) => s.got().startsWith("421")).length;
      await Bun.sleep(holdMs);
      for (const s of socks) s.destroy();
      return { held, refused };
    };

    const floodLoop = async () => {
      while (!stopping) {
        // Beyond the per-address limit, from an address of its own: the good client must not notice.
        const p = await flood(["127.0.0.40"], MAX_PER_IP + 30, 1500);
        c.perIpHeld += p.held;
        c.perIpRefused += p.refused;
        await Bun.sleep(500);
        if (stopping) break;
        // Beyond the global limit, from many addresses: refusals (421) are the limit working.
        floodActive = true;
        const g = await flood(
          Array.from({ length: 8 }, (_, i) => `127.0.1.${i + 1}`),
          MAX_CONNECTIONS + 50,
          1000,
        );
        c.globalHeld += g.held;
        c.globalRefused += g.refused;
        await Bun.sleep(1000); // the closes reach the daemon and free its slots
        floodActive = false;
        await Bun.sleep(3000);
      }
    };

    const oversizeLoop = async () => {
      while (!stopping) {
        for (const declared of [true, false]) {
          const token = `big${seq++}`;
          c.oversizeTried++;
          try {
            const { conn } = await SmtpConn.open(port, "127.0.0.50");
            await conn.cmd("EHLO big.test");
            const m = await conn.cmd(
              `MAIL FROM:<big@app.test>${declared ? ` SIZE=${MAX_MESSAGE_BYTES * 3}` : ""}`,
            );
            if (m.code === 250) {
              await conn.cmd(`RCPT TO:<${token}@torture.test>`);
              const d = await conn.cmd("DATA");
              if (d.code === 354) {
                const r = conn.reply(15_000);
                conn.send(taggedMessage(token, MAX_MESSAGE_BYTES * 2));
                const fin = await r;
                if (fin.code === 250) c.oversizeAccepted++;
              }
            }
            conn.close();
          } catch {
            // a closed session is a refusal too
          }
        }
        await Bun.sleep(1000);
      }
    };

    const smuggleLoop = async () => {
      let k = 0;
      while (!stopping) {
        const [name, seqBytes] = SMUGGLING[k++ % SMUGGLING.length] as [string, string];
        const n = seq++;
        const inner = `MAIL FROM:<evil@app.test>\r\nRCPT TO:<victim${n}@torture.test>\r\nDATA\r\nX-Torture-Seq: smug-inner${n}\r\n\r\nsmuggled\r\n`;
        const body = `From: <a@app.test>\r\nX-Torture-Seq: smug-outer${n}\r\n\r\nhello${seqBytes}${inner}`;
        c.smuggleTried++;
        try {
          const { conn } = await SmtpConn.open(port, "127.0.0.60");
          await conn.cmd("EHLO smuggle.test");
          await conn.cmd("MAIL FROM:<a@app.test>");
          await conn.cmd(`RCPT TO:<outer${n}@torture.test>`);
          const d = await conn.cmd("DATA");
          if (d.code === 354) {
            const r = conn.reply();
            conn.send(`${body}.\r\n`);
            const fin = await r;
            // A second reply here would be the smuggled transaction being answered.
            const extra = await conn.reply(300).catch(() => undefined);
            if (extra)
              violations.push(`smuggling ${name}: a second reply after the final dot: ${extra.text}`);
            const q = QUEUED_AS.exec(fin.text);
            if (q) {
              c.smuggleAccepted++;
              acked.set(`smug-outer${n}`, q[1] as string);
            } else c.smuggleRejected++;
            smuggleOutcomes.set(name, fin.text.split("\n")[0] ?? "");
          }
          conn.close();
        } catch {
          // closed: counted as neither
        }
        await Bun.sleep(300);
      }
    };

    const pipeLoop = async () => {
      const r = new Rng(o.seed * 31);
      while (!stopping) {
        const k = r.int(2, 20);
        const tokens = Array.from({ length: k }, () => `pipe${seq++}`);
        const floodAtStart = floodActive;
        let ackedHere = 0;
        try {
          const { conn } = await SmtpConn.open(port, "127.0.0.70");
          const replies: Promise<{ code: number; text: string }>[] = [];
          // EHLO + per transaction MAIL, RCPT, DATA, body: 4 replies each (354 included).
          replies.push(conn.reply());
          let text = "EHLO pipe.test\r\n";
          for (const t of tokens) {
            text += `MAIL FROM:<p@app.test>\r\nRCPT TO:<${t}@torture.test>\r\nDATA\r\n${taggedMessage(t, r.int(200, 5000))}`;
            for (let i = 0; i < 4; i++) replies.push(conn.reply(15_000));
          }
          c.pipeSent += k;
          // The replies are awaited after the whole burst is written; until then a close must not be
          // an unhandled rejection.
          for (const p of replies) p.catch(() => {});
          await writeSplit(r, (b) => conn.send(b), Buffer.from(text, "latin1"), 5);
          const got = await Promise.all(replies);
          for (let i = 0; i < k; i++) {
            const fin = got[1 + i * 4 + 3];
            const q = fin ? QUEUED_AS.exec(fin.text) : null;
            if (q) {
              acked.set(tokens[i] as string, q[1] as string);
              c.pipeAcked++;
              ackedHere++;
            }
          }
          await conn.cmd("QUIT").catch(() => {});
          conn.close();
        } catch {
          // a broken burst: its acknowledged part is in `acked`
        }
        if (ackedHere < k) {
          if (floodAtStart || floodActive) c.pipeRefusedInFlood += k - ackedHere;
          else c.pipeFail += k - ackedHere;
        }
        await Bun.sleep(100);
      }
    };

    const tasks = [
      probeLoop(),
      floodLoop(),
      oversizeLoop(),
      smuggleLoop(),
      pipeLoop(),
      ...Array.from({ length: o.fuzzSessions }, (_, i) => fuzzLoop(i)),
      ...Array.from({ length: o.slowloris }, (_, i) => slowlorisLoop(i)),
    ];
    const end = Date.now() + o.durationMs;
    while (Date.now() < end && mta.proc.exitCode === null) await Bun.sleep(100);
    stopping = true;
    await Promise.all(tasks);
    if (mta.proc.exitCode !== null) violations.push(`the daemon exited with ${mta.proc.exitCode}`);
    await until(() => [...acked.keys()].every((t) => sink.counts.has(t)), 30_000);
    await Bun.sleep(300);
    rss.stop();
    await mta.stop("SIGTERM");
  } finally {
    rss?.stop();
    if (mta && mta.proc.exitCode === null) {
      mta.proc.kill("SIGKILL");
      await mta.proc.exited;
    }
    sink.stop();
  }

  // What arrived: one message per acknowledged token, never split or merged.
  const lost = [...acked.keys()].filter((t) => !sink.counts.has(t));
  let duplicates = 0;
  for (const t of acked.keys()) duplicates += Math.max(0, (sink.counts.get(t) ?? 0) - 1);
  let merged = 0;
  let smuggledAlone = 0;
  let fuzzDelivered = 0;
  let bigDelivered = 0;
  for (const m of sink.received) {
    const fam = m.tokens.map((t) => t.replace(/\d+$/, ""));
    if (m.tokens.some((t) => t.startsWith("smug-inner")) && !m.tokens.some((t) => t.startsWith("smug-outer")))
      smuggledAlone++;
    if (m.tokens.some((t) => t.startsWith("big"))) bigDelivered++;
    if (fam.every((f) => f === "fz") && m.tokens.length > 0) fuzzDelivered++;
    const families = new Set(fam.filter((f) => f !== "fz"));
    const outerInner =
      m.tokens.length === 2 &&
      families.has("smug-outer") &&
      families.has("smug-inner") &&
      m.tokens[0]?.replace(/\D+/, "") === m.tokens[1]?.replace(/\D+/, "");
    if (m.tokens.filter((t) => !t.startsWith("fz")).length > 1 && !outerInner) merged++;
  }
  const rssFirst = rss?.firstBytes ?? 0;
  const rssMax = rss?.maxBytes ?? 0;
  if (lost.length > 0)
    violations.push(
      `${lost.length} acknowledged message(s) never delivered, e.g. ${lost.slice(0, 5).join(" ")}`,
    );
  if (duplicates > 0) violations.push(`${duplicates} duplicate deliveries with no crash`);
  if (merged > 0) violations.push(`${merged} message(s) at the sink merge two transactions`);
  if (smuggledAlone > 0)
    violations.push(`${smuggledAlone} smuggled transaction(s) delivered as their own message`);
  if (c.oversizeAccepted > 0 || bigDelivered > 0)
    violations.push(`oversize accepted ${c.oversizeAccepted}, delivered ${bigDelivered}`);
  if (c.probeFail.length > 0)
    violations.push(
      `the good client failed ${c.probeFail.length} time(s) outside floods: ${c.probeFail.slice(0, 3).join("; ")}`,
    );
  if (c.pipeFail > 0)
    violations.push(`${c.pipeFail} pipelined transaction(s) not acknowledged outside floods`);
  if (c.perIpRefused === 0) violations.push("no per-address flood connection was refused");
  if (c.globalRefused === 0) violations.push("no global flood connection was refused");
  if (rssMax > rssFirst + o.rssBudgetMiB * 1024 * 1024)
    violations.push(`RSS grew from ${mib(rssFirst)} to ${mib(rssMax)}`);

  const secs = Math.round((Date.now() - started) / 1000);
  const summary = `${fmt(c.fuzzSessions)} fuzz sessions (${mib(c.fuzzBytes)}), ${fmt(c.probes)} good probes ${fmt(c.probeOk)} ok, ${fmt(acked.size)} acknowledged, ${fmt(lost.length)} lost, 0 split/merged: ${merged + smuggledAlone === 0 ? "yes" : "NO"}, RSS ${mib(rssFirst)} → max ${mib(rssMax)}`;
  log(`hostile clients: ${summary}`);
  log(
    `  ${secs} s, seed ${o.seed}; good probe: ${c.probeOk}/${c.probes} ok, ${c.probeFailInFlood} refused while the global flood was held, ${c.probeFail.length} other failures`,
  );
  log(
    `  floods: per-address ${fmt(c.perIpHeld)} held / ${fmt(c.perIpRefused)} refused (limit ${MAX_PER_IP}); global ${fmt(c.globalHeld)} held / ${fmt(c.globalRefused)} refused (limit ${MAX_CONNECTIONS}); slowloris ${c.slowlorisOpened} opened, ${c.slowlorisClosedByServer} closed by the daemon (trickling commands: command_timeout 5s; trickling DATA held ${fmt(Math.round(c.slowDataHeldS))} connection-seconds)`,
  );
  log(
    `  oversize: ${c.oversizeTried} tried, ${c.oversizeAccepted} accepted; pipelined bursts: ${fmt(c.pipeAcked)}/${fmt(c.pipeSent)} acknowledged (${fmt(c.pipeRefusedInFlood)} refused during the global flood, ${c.pipeFail} otherwise); fuzz messages delivered: ${fmt(fuzzDelivered)}`,
  );
  log(
    `  smuggling: ${c.smuggleTried} tried, ${c.smuggleRejected} rejected, ${c.smuggleAccepted} accepted as one message, ${smuggledAlone} smuggled delivered alone; ${[...smuggleOutcomes].map(([k, v]) => `${k} → ${v}`).join("; ")}`,
  );
  return {
    name: "hostile clients",
    summary,
    lost: lost.length,
    violations,
    figures: {
      ...Object.fromEntries(Object.entries(c).filter(([, v]) => typeof v === "number")),
      acknowledged: acked.size,
      lost: lost.length,
      merged,
      smuggledAlone,
      rssFirst,
      rssMax,
    } as Record<string, number>,
  };
}
