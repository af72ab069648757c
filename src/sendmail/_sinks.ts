/**
 * The two sinks `mta send` hands messages to besides the maildrop: the running daemon's inject API
 * (`DaemonSink`, batches of at most INJECT_BATCH messages or INJECT_BATCH_BYTES) and its own engine on
 * the spool (`LocalSink`, with back-pressure on what is accepted and not yet delivered).
 *
 * Owns: each sink's batch sizes and concurrency, the inject request and reading its per-item answer,
 * starting a local engine (waiting a bounded time for the spool's lock).
 * Does not own: choosing the sink (_submit.ts), the pump and the journal (_send.ts).
 * Invariant: an item counts as accepted only when the daemon answered it with ids after its group
 * commit, or the local append resolved.
 */
import type { Config } from "../config/index.ts";
import { errorMessage, MtaError, UnavailableError } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import { replyText } from "../smtp/index.ts";
import type { ControlEndpoint } from "../admin/index.ts";
import { Engine } from "../app/index.ts";
import { withLocalReceived } from "../accept/index.ts";
import type { SendItem } from "./_items.ts";

export type SubmitOutcome =
  | { ok: true; ids: string[]; refused?: string[] }
  | { ok: false; bad: string }
  | { ok: false; unavailable: string };

export interface Sink {
  readonly mode: "daemon" | "local" | "maildrop";
  readonly inFlight: number;
  readonly batchSize: number;
  /** A batch is cut when its messages' bytes reach this (one bigger message goes alone). */
  readonly batchBytes: number;
  submit(items: SendItem[]): Promise<SubmitOutcome[]>;
  waitForRoom?(): Promise<void>;
}

const INJECT_BATCH = 100;
/**
 * Message bytes per inject request: base64 makes them 4/3 larger on the wire, far below the control
 * API's 256 MiB request limit, and a daemon decodes one request at a time without a memory spike.
 */
const INJECT_BATCH_BYTES = 16 * 1024 * 1024;
/** Local mode: at most this many of this run's messages queued and not yet delivered before reading on. */
const LOCAL_BACKLOG = 5_000;

type InjectAnswer = {
  messages?: unknown;
  error?: unknown;
  index?: unknown;
};

/**
 * One item's answer in a 200/503/422 reply: `{ index, ids }` or `{ index, error }`, with `refused`
 * ("address: reply" for each recipient the suppression list turned away) when there were any.
 */
function answerOf(
  v: unknown,
): { index: number; ids?: string[]; error?: string; refused?: string[] } | undefined {
  if (!v || typeof v !== "object") return undefined;
  const m = v as { index?: unknown; ids?: unknown; error?: unknown; refused?: unknown };
  if (typeof m.index !== "number") return undefined;
  const out: { index: number; ids?: string[]; error?: string; refused?: string[] } = { index: m.index };
  if (Array.isArray(m.ids) && m.ids.every((x) => typeof x === "string")) out.ids = m.ids as string[];
  if (typeof m.error === "string") out.error = m.error;
  if (Array.isArray(m.refused))
    out.refused = m.refused.map((x) => {
      const r = x as { recipient?: unknown; error?: unknown };
      return `${String(r.recipient)}: ${String(r.error)}`;
    });
  return out;
}

/**
 * `{ "messages": [...] }` for POST /api/v1/inject, each message as `messageBase64` (its exact bytes,
 * 8-bit or not; it is already prepared: CRLF, headers). Built from parts into a Blob: JSON.stringify
 * would scan megabytes of base64 for characters to escape, and there are none.
 */
function injectBody(items: readonly SendItem[]): Blob {
  const parts: string[] = ['{"messages":['];
  items.forEach((it, k) => {
    const head = JSON.stringify({ sender: it.sender, recipients: it.recipients, attributes: it.attributes });
    parts.push(k > 0 ? "," : "", head.slice(0, -1), ',"messageBase64":"');
    parts.push(
      Buffer.from(it.message.buffer, it.message.byteOffset, it.message.byteLength).toString("base64"),
    );
    parts.push('"}');
  });
  parts.push("]}");
  return new Blob(parts, { type: "application/json" });
}

export class DaemonSink implements Sink {
  readonly mode = "daemon";
  readonly inFlight = 4;
  readonly batchSize = INJECT_BATCH;
  readonly batchBytes = INJECT_BATCH_BYTES;
  constructor(
    private readonly endpoint: ControlEndpoint,
    private readonly hostname: string,
  ) {}

  async submit(items: SendItem[]): Promise<SubmitOutcome[]> {
    const out: SubmitOutcome[] = new Array(items.length);
    let pending = items.map((_, i) => i);
    // A 400/413 names one bad item: mark it and send the rest again (the API is all-or-nothing per request).
    while (pending.length > 0) {
      // The trace line for this hop names the uid that ran mta send (the daemon adds its own below).
      const uid = process.getuid?.() ?? 0;
      const body = injectBody(
        pending.map((i) => ({
          ...items[i]!,
          message: withLocalReceived(items[i]!.message, uid, this.hostname),
        })),
      );
      let res: Response;
      let text: string;
      try {
        res = await this.endpoint.request("POST", "/api/v1/inject", body);
        text = await res.text();
      } catch (err) {
        for (const i of pending)
          out[i] = { ok: false, unavailable: `daemon unreachable: ${errorMessage(err)}` };
        return out;
      }
      let answer: InjectAnswer = {};
      try {
        const parsed = JSON.parse(text) as unknown;
        if (parsed && typeof parsed === "object") answer = parsed as InjectAnswer;
      } catch {
        for (const i of pending)
          out[i] = { ok: false, unavailable: `daemon answered ${res.status} without a JSON body` };
        return out;
      }
      // 422: every recipient of every item was on the suppression list.
      if (res.status === 200 || res.status === 503 || res.status === 422) {
        for (const a of Array.isArray(answer.messages) ? answer.messages.map(answerOf) : []) {
          const i = a ? pending[a.index] : undefined;
          if (a === undefined || i === undefined) continue;
          out[i] = a.ids
            ? { ok: true, ids: a.ids, ...(a.refused ? { refused: a.refused } : {}) }
            : a.refused
              ? { ok: false, bad: a.refused.join("; ") }
              : { ok: false, unavailable: `daemon: ${a.error ?? "refused"}` };
        }
        for (const i of pending)
          out[i] ??= { ok: false, unavailable: `daemon answered ${res.status} without this item` };
        return out;
      }
      const index = typeof answer.index === "number" ? answer.index : undefined;
      const error = typeof answer.error === "string" ? answer.error : `HTTP ${res.status}`;
      if ((res.status === 400 || res.status === 413) && index !== undefined && pending[index] !== undefined) {
        out[pending[index]!] = { ok: false, bad: `daemon refused it: ${error}` };
        pending = pending.filter((_, k) => k !== index);
        continue;
      }
      for (const i of pending) out[i] = { ok: false, unavailable: `daemon answered ${res.status}: ${error}` };
      return out;
    }
    return out;
  }
}

export class LocalSink implements Sink {
  readonly mode = "local";
  readonly inFlight = 8;
  readonly batchSize = 64;
  readonly batchBytes = 64 * 1024 * 1024;
  /** Ids of this run's messages, to count what is still deferred at the end. */
  readonly ids: string[] = [];
  private readonly base: number;

  /** `runIds` learns each id as soon as its append resolved, before any delivery event can name it. */
  constructor(
    readonly engine: Engine,
    private readonly runIds: Set<string>,
  ) {
    this.base = engine.spool.messageCount;
  }

  /**
   * Back-pressure: accepting is much faster than delivering, so without a bound the whole batch would
   * pile up in the spool's RAM index and body cache. Waits while more than LOCAL_BACKLOG of this run's
   * messages are queued, unless the scheduler is idle (everything left is deferred: waiting is useless).
   */
  async waitForRoom(): Promise<void> {
    while (this.engine.spool.messageCount - this.base > LOCAL_BACKLOG) {
      const idle = await Promise.race([
        this.engine.scheduler.idle().then(() => true),
        Bun.sleep(20).then(() => false),
      ]);
      if (idle) return;
    }
  }

  async submit(items: SendItem[]): Promise<SubmitOutcome[]> {
    const results = await Promise.all(
      items.map(async (it) => {
        const r = await this.engine.pipeline.submit(
          {
            sender: it.sender,
            recipients: it.recipients.map((address) => ({ address })),
            attributes: it.attributes,
            message: withLocalReceived(it.message, process.getuid?.() ?? 0, this.engine.config.hostname),
          },
          { refuse: true },
        );
        if (r.ok) for (const id of r.ids) this.runIds.add(id);
        return r;
      }),
    );
    return results.map((r) => {
      const refused = r.refused?.map((x) => `${x.address}: ${replyText(x.reply)}`);
      if (!r.ok && refused) return { ok: false, bad: refused.join("; ") };
      // A 5xx is about this message's content (mime/'s rules); a 4xx is the spool failing.
      if (!r.ok && r.reply.code >= 500) return { ok: false, bad: r.reply.lines.join(" ") };
      if (!r.ok) return { ok: false, unavailable: `spool: ${r.reply.lines.join(" ")}` };
      this.ids.push(...r.ids);
      return { ok: true, ids: r.ids, ...(refused ? { refused } : {}) };
    });
  }
}

export async function startEngine(
  config: Config,
  opts: { log: Logger; metrics: Metrics; onEvent: (e: { type: string; id?: string }) => void },
  waitMs: number,
): Promise<Engine> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return await Engine.start(config, opts);
    } catch (err) {
      if (!(err instanceof MtaError && err.code === "spool-locked")) throw err;
      if (Date.now() >= deadline)
        throw new UnavailableError(
          `${err.message}, and no daemon answers at control.address; waited ${Math.round(waitMs / 1000)} s (--lock-wait)`,
        );
      await Bun.sleep(250);
    }
  }
}
