/**
 * `mta send` (and `sendmail`): one message from standard input, or batches from files, handed to the
 * running daemon through its inject API, or enqueued and delivered by this process itself.
 *
 * Owns: the pump from readers to the sink with bounded concurrency, the batch journal's use, progress,
 * the summary and the exit code.
 * Does not own: choosing where mail goes (_submit.ts: a daemon this user may talk to → inject API; a
 * user who may not touch the spool → the maildrop; else the spool itself), the sinks (_sinks.ts),
 * flag parsing (_args.ts), message fixing (message/), readers (_readers.ts), the journal file
 * (_journal.ts).
 * Invariants: a message counts as accepted only once durable (spool append resolved, or the daemon
 * answered 200 after its group commit); its journal key is written after that, never before; memory holds
 * at most `inFlight × batchSize` messages whatever the input size.
 * Exit codes (sysexits): 0 all delivered or bounced, or handed to the daemon; 75 some deferred (left in
 * the spool); 65 some input item was bad or unreadable (the others were still sent); 66 a batch held
 * no message at all; 69 spool or daemon unavailable; 64 usage. "Nothing was sent" is never 0 (except
 * a --dry-run, or a re-run whose items the journal already holds).
 */
import type { Config } from "../config/index.ts";
import { findConfigPath, loadConfig } from "../config/index.ts";
import { EXIT, fileError, loginName, MtaError, UnavailableError, UsageError } from "../lib/index.ts";
import { createLogger, Metrics } from "../observe/index.ts";
import type { Engine } from "../app/index.ts";
import { MaildropSink, submissionWay, withSecrets } from "./_submit.ts";
import { injectLimitBytes } from "../accept/index.ts";
import { parseSendArgs, type SendArgs } from "./_args.ts";
import { BatchJournal, JournalBusyError } from "./_journal.ts";
import { DaemonSink, LocalSink, type Sink, startEngine } from "./_sinks.ts";
import { messageItem, qualify, type ReadContext, type ReadResult, type SendItem } from "./_items.ts";
import { inputBytes, type ReadProgress, readInputs } from "./_readers.ts";

export { parseSendArgs, type SendArgs } from "./_args.ts";

export interface SendIo {
  stdin: AsyncIterable<Uint8Array>;
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  env: Record<string, string | undefined>;
}

export interface SendSummary {
  mode: "daemon" | "local" | "maildrop" | "dry-run";
  /** Messages accepted (durable) in this run. */
  accepted: number;
  /** Items skipped because the batch journal says they were accepted by an earlier run. */
  skipped: number;
  /** Malformed items, reported and not sent. */
  invalid: number;
  /** Recipients of the accepted messages. */
  recipients: number;
  /** Local mode: recipient results during this run (including mail that was already in the spool). */
  delivered: number;
  bounced: number;
  /** Local mode: recipients of this run's messages still pending when it ended. */
  deferred: number;
  /** Items not sent because the spool or daemon became unavailable. */
  unsent: number;
  elapsedMs: number;
  exitCode: number;
}

async function readStdin(
  stdin: AsyncIterable<Uint8Array>,
  maxBytes: number,
  ignoreDots: boolean,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const c of stdin) {
    chunks.push(c);
    size += c.length;
    if (size > maxBytes * 2 + 65536)
      throw new MtaError("data", `standard input is over the message size limit of ${maxBytes} bytes`);
  }
  const all = Buffer.concat(chunks);
  if (ignoreDots) return all;
  // Without -i, a line holding a single "." ends the message (sendmail(8)).
  const m = /(^|\n)\.\r?(\n|$)/.exec(all.toString("latin1"));
  return m ? all.subarray(0, m.index + m[1]!.length) : all;
}

function fmt(n: number): string {
  return n.toLocaleString("en-US");
}

class Progress {
  private timer: ReturnType<typeof setInterval> | undefined;
  private shown = false;
  private readonly started = Date.now();
  constructor(
    private readonly out: SendIo["stderr"],
    private readonly line: (elapsedMs: number) => string,
  ) {}
  start(): void {
    this.timer = setInterval(() => this.draw(), 200);
  }
  draw(): void {
    this.shown = true;
    this.out.write(`\r\x1b[2K${this.line(Date.now() - this.started)}`);
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.shown) {
      this.draw();
      this.out.write("\n");
    }
  }
}

function bar(fraction: number, width = 24): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.round(f * width);
  return `[${"#".repeat(full)}${"-".repeat(width - full)}] ${String(Math.floor(f * 100)).padStart(3)}%`;
}

/** Runs `mta send` with a parsed command line; returns the summary (whose exitCode the CLI uses). */
export async function send(args: SendArgs, config: Config, io: SendIo): Promise<SendSummary> {
  const started = Date.now();
  const s: SendSummary = {
    mode: args.dryRun ? "dry-run" : "local",
    accepted: 0,
    skipped: 0,
    invalid: 0,
    recipients: 0,
    delivered: 0,
    bounced: 0,
    deferred: 0,
    unsent: 0,
    elapsedMs: 0,
    exitCode: EXIT.ok,
  };
  const origin = config.send.origin;
  // Postfix's sendmail: the default sender is the login name of the real user id, from the user
  // database, qualified like every other bare name ($USER is the caller's to set; it is not asked).
  const login = loginName();
  let sender: string | undefined;
  if (args.sender !== undefined) {
    sender = qualify(args.sender, origin);
    if (sender === undefined) throw new UsageError(`-f ${JSON.stringify(args.sender)} is not an address`);
  }
  // The same limit as the daemon's inject API: what local mode accepts, a daemon accepts too.
  const maxMessageBytes = injectLimitBytes(config);
  const ctx: ReadContext = {
    hostname: config.hostname,
    origin,
    ...(login !== undefined ? { defaultSender: `${login}@${origin}` } : {}),
    maxMessageBytes,
    ...(sender !== undefined ? { sender } : {}),
    ...(args.fullName !== undefined ? { fullName: args.fullName } : {}),
    ...(args.bodyType !== undefined ? { bodyType: args.bodyType } : {}),
  };
  const batch = args.inputs.length > 0;
  if (!batch && args.recipients.length === 0 && !args.extractRecipients)
    throw new UsageError(
      "no recipients: name them, use -t to take them from the header, or send files with --batch",
    );
  if (!batch) noteFileLikeRecipients(args.recipients, origin, io);
  const progressState: ReadProgress = { bytesRead: 0, totalBytes: batch ? inputBytes(args.inputs) : 0 };

  // The items, one at a time: from files, or the single message on standard input.
  let items: Iterable<ReadResult>;
  if (batch) items = readInputs(args.inputs, ctx, progressState);
  else {
    let raw: Uint8Array;
    try {
      raw = await readStdin(io.stdin, maxMessageBytes, args.ignoreDots);
    } catch (err) {
      throw fileError(err, "standard input", "read");
    }
    items = [
      messageItem(
        raw,
        { source: "stdin", keyPlace: "stdin", recipients: args.recipients, extract: args.extractRecipients },
        ctx,
      ),
    ];
  }
  const reportBad = (source: string, problem: string) => {
    s.invalid++;
    if (progress) io.stderr.write("\r\x1b[2K");
    io.stderr.write(`mta send: ${source}: ${problem}; skipped\n`);
  };

  let progress: Progress | undefined;
  const wantProgress = args.progress ?? (Boolean(io.stderr.isTTY) && batch);

  if (args.dryRun) {
    for (const r of items) {
      if (r.ok) {
        s.accepted++;
        s.recipients += r.item.recipients.length;
      } else reportBad(r.source, r.problem);
    }
    s.elapsedMs = Date.now() - started;
    s.exitCode = s.invalid > 0 ? EXIT.dataErr : s.accepted === 0 ? EXIT.noInput : EXIT.ok;
    if (s.exitCode === EXIT.noInput) io.stderr.write("mta send: no message in the input\n");
    return s;
  }

  const log = createLogger({ level: args.verbose ? "info" : "error", format: config.log.format });
  const metrics = new Metrics();
  // Local mode: results of this run's own messages (a DSN that the run's bounces queue is not one).
  const runIds = new Set<string>();
  const onEvent = (e: { type: string; id?: string }) => {
    if (e.id === undefined || !runIds.has(e.id)) return;
    if (e.type === "delivery") s.delivered++;
    else if (e.type === "bounce" || e.type === "expiration") s.bounced++;
  };
  let journal: BatchJournal | undefined;
  let engine: Engine | undefined;
  let sink: Sink;
  let unavailable: string | undefined;
  try {
    if (args.batchId) {
      try {
        journal = await BatchJournal.open(config.spool.dir, args.batchId, args.lockWaitMs);
      } catch (err) {
        if (err instanceof JournalBusyError) throw new UnavailableError(err.message);
        throw fileError(err, `--batch-id journal in spool.dir ${config.spool.dir}`, "write");
      }
      if (args.verbose && journal.size > 0)
        log.info(`batch ${args.batchId}: ${journal.size} items already accepted`);
    }
    const way = await submissionWay(config);
    if (way.daemon) {
      sink = new DaemonSink(way.daemon, config.hostname);
      s.mode = "daemon";
    } else if (way.maildrop) {
      sink = new MaildropSink(way.maildrop);
      s.mode = "maildrop";
    } else {
      engine = await startEngine(withSecrets(config), { log, metrics, onEvent }, args.lockWaitMs);
      sink = new LocalSink(engine, runIds);
      s.mode = "local";
    }
    if (wantProgress) {
      progress = new Progress(io.stderr, (ms) => {
        const rate = ms > 0 ? Math.round((s.accepted * 1000) / ms) : 0;
        const frac = progressState.totalBytes > 0 ? progressState.bytesRead / progressState.totalBytes : 1;
        const tail = s.mode === "local" ? `  ${fmt(s.delivered)} delivered` : "";
        return `mta send ${bar(frac)}  ${fmt(s.accepted)} accepted${s.skipped ? `  ${fmt(s.skipped)} skipped` : ""}${tail}  ${fmt(rate)} msg/s`;
      });
      progress.start();
    }

    // The pump: batches of items, at most sink.inFlight batches at a time.
    const inFlight = new Set<Promise<void>>();
    const run = (group: SendItem[]) => {
      const p = sink
        .submit(group)
        .then(async (outcomes) => {
          const keys: string[] = [];
          outcomes.forEach((o, i) => {
            const it = group[i]!;
            if (o.ok) {
              s.accepted++;
              s.recipients += it.recipients.length - (o.refused?.length ?? 0);
              keys.push(it.key);
              // Suppressed recipients are not sent to: said, and counted, never silently dropped.
              for (const r of o.refused ?? []) reportBad(it.source, `${r}; not sent to this recipient`);
            } else if ("bad" in o) reportBad(it.source, o.bad);
            else {
              s.unsent++;
              unavailable ??= o.unavailable;
            }
          });
          if (journal && keys.length > 0) await journal.add(keys);
        })
        .finally(() => inFlight.delete(p));
      inFlight.add(p);
    };
    let group: SendItem[] = [];
    let groupBytes = 0;
    const seen = new Set<string>();
    for (const r of items) {
      if (unavailable) {
        if (r.ok) s.unsent++;
        continue;
      }
      if (!r.ok) {
        reportBad(r.source, r.problem);
        continue;
      }
      if (journal) {
        if (journal.has(r.item.key) || seen.has(r.item.key)) {
          s.skipped++;
          continue;
        }
        seen.add(r.item.key);
      }
      if (group.length > 0 && groupBytes + r.item.message.byteLength > sink.batchBytes) {
        run(group);
        group = [];
        groupBytes = 0;
        while (inFlight.size >= sink.inFlight) await Promise.race(inFlight);
      }
      group.push(r.item);
      groupBytes += r.item.message.byteLength;
      if (group.length >= sink.batchSize) {
        run(group);
        group = [];
        groupBytes = 0;
        while (inFlight.size >= sink.inFlight) await Promise.race(inFlight);
        await sink.waitForRoom?.();
      }
    }
    if (group.length > 0 && !unavailable) run(group);
    else s.unsent += unavailable ? group.length : 0;
    while (inFlight.size > 0) await Promise.race(inFlight);

    // Local mode: deliver until nothing is due or in flight, or --max-time passed.
    if (engine) {
      const remaining = Math.max(0, args.maxTimeMs - (Date.now() - started));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        engine.scheduler.idle(),
        new Promise<void>((r) => (timer = setTimeout(r, remaining))),
      ]);
      if (timer) clearTimeout(timer);
      s.deferred = countDeferred(engine, (sink as LocalSink).ids);
      await engine.stop(1000);
    }
  } finally {
    progress?.stop();
    if (engine) await engine.stop(1000).catch(() => {});
    await journal?.close();
  }
  s.elapsedMs = Date.now() - started;
  if (unavailable) {
    io.stderr.write(`mta send: ${unavailable}; ${fmt(s.unsent)} message(s) not sent\n`);
    s.exitCode = EXIT.unavailable;
  } else if (s.invalid > 0) s.exitCode = EXIT.dataErr;
  else if (s.deferred > 0) s.exitCode = EXIT.tempFail;
  else if (s.accepted === 0 && s.skipped === 0) {
    // An empty file or a directory without .eml files: nothing was sent, and that is not success.
    io.stderr.write("mta send: no message in the input\n");
    s.exitCode = EXIT.noInput;
  } else s.exitCode = EXIT.ok;
  return s;
}

/**
 * A recipient that looks like a path (`x.eml`, `./mail/`, `/tmp/a.eml`) is still a recipient, as in
 * sendmail: say so on stderr, in case files were meant (they need --batch). Bare words (`root`, even
 * where a directory /root exists) are never questioned.
 */
function noteFileLikeRecipients(recipients: readonly string[], origin: string, io: SendIo): void {
  for (const r of recipients) {
    if (r.includes("@") || !(r.includes("/") || /\.(eml|mbox|mbx|jsonl|ndjson|json)$/i.test(r))) continue;
    io.stderr.write(
      `mta send: note: ${JSON.stringify(r)} is a recipient (${r}@${origin}); to send the file, use mta send --batch ${r}\n`,
    );
  }
}

/** Pending recipients of this run's messages: read from the spool index before it closes. */
function countDeferred(engine: Engine, ids: readonly string[]): number {
  let n = 0;
  for (const id of ids) {
    const slot = engine.spool.slotOf(id);
    if (slot !== undefined && engine.spool.isLive(slot)) n += engine.spool.pendingRecipientsOf(slot);
  }
  return n;
}

export function formatSummary(s: SendSummary): string {
  const parts = [
    `${fmt(s.accepted)} accepted`,
    ...(s.mode === "local"
      ? [`${fmt(s.delivered)} delivered`, `${fmt(s.deferred)} deferred`, `${fmt(s.bounced)} bounced`]
      : s.mode === "daemon"
        ? ["handed to the daemon"]
        : s.mode === "maildrop"
          ? ["left in the maildrop for the daemon"]
          : ["valid (dry run)"]),
  ];
  if (s.skipped) parts.push(`${fmt(s.skipped)} skipped (already sent)`);
  if (s.invalid) parts.push(`${fmt(s.invalid)} invalid`);
  if (s.unsent) parts.push(`${fmt(s.unsent)} not sent`);
  return `mta send: ${parts.join(", ")} in ${(s.elapsedMs / 1000).toFixed(1)} s`;
}

export const SEND_USAGE = `Usage: mta send [flags] recipient... < message     (every operand is a recipient)
       mta send [flags] -t < message                  (recipients from To, Cc, Bcc)
       mta send --batch [flags] FILE|DIR...           (.eml, directories of .eml, mbox, JSON Lines)
       sendmail [flags] recipient... < message        (mta invoked through a symlink named sendmail)

A bare name (root, -f backup, To: ops) gets @ and send.origin appended (default: hostname).

sendmail flags:
  -t              recipients from To, Cc and Bcc (added to those named); Bcc is removed
  -f ADDR, -r ADDR  envelope sender (also glued: -fADDR); default: your login name @ send.origin
  -F NAME         display name of the From header when one is added
  -i, -oi         a line with a single "." does not end the message
  -B 7BIT|8BITMIME  body type
  -oXXX, -odi, -odb, -oem, -N, -R, -V, -L, -h, -m, -n, -U, -G   accepted and ignored
  --              end of flags
mta options:
  --batch             the operands are files and directories to send, not recipients
  -c, --config FILE   configuration (else $MTA_CONFIG, ./mta.yaml, /etc/mta/mta.yaml)
  --batch-id ID       journal accepted items in <spool>/batches/ID.journal; a re-run skips them
  --dry-run           validate the input only
  --max-time DUR      local delivery: stop after this long (default 5m); deferred mail stays queued
  --lock-wait DUR     wait this long for a spool held by another mta send (default 2m), then exit 69
  --json              print the summary as JSON on standard output
  -v, --verbose       log and print the summary even on success
  --progress, --no-progress   progress bar on standard error (default: when it is a terminal)
Exit: 0 sent (delivered, bounced or handed to the daemon), 75 some deferred, 65 bad input (the rest
was sent), 66 no message in the input, 69 unavailable, 64 usage, 78 config; others as for every command.
`;

/** `mta send` / `sendmail` from a raw argument vector; returns the exit code. */
export async function runSend(argv: readonly string[], partial: Partial<SendIo> = {}): Promise<number> {
  const io: SendIo = {
    stdin: partial.stdin ?? (process.stdin as unknown as AsyncIterable<Uint8Array>),
    stdout: partial.stdout ?? process.stdout,
    stderr: partial.stderr ?? process.stderr,
    env: partial.env ?? process.env,
  };
  const args = parseSendArgs(argv);
  if (args.help) {
    io.stdout.write(SEND_USAGE);
    return EXIT.ok;
  }
  const { config } = loadConfig(findConfigPath(args.config, io.env));
  const summary = await send(args, config, io);
  if (args.json) io.stdout.write(`${JSON.stringify(summary)}\n`);
  else if (args.verbose || summary.exitCode !== EXIT.ok) io.stderr.write(`${formatSummary(summary)}\n`);
  return summary.exitCode;
}
