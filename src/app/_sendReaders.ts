/**
 * Batch inputs of `mta send`: `.eml` files, directories of them, mbox files and JSON Lines, read as a
 * stream of items, one at a time.
 *
 * Owns: file type detection, the streaming line reader (fixed-size chunks through `fs.readSync`), mbox
 * splitting (From_ lines, mboxrd `>From` unquoting), JSON Lines items (full message or parts, mail-merge
 * substitutions), the journal key of each item, item validation with file and line.
 * Invariant: memory holds one item (and one read chunk) at a time, never a whole input file; a bad item
 * is reported as a value with its place and never stops the items after it.
 */
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { parseMailbox } from "../smtp/index.ts";
import { composeMessage } from "./compose.ts";
import { checkItem, type InjectItem } from "./inject.ts";
import { prepareMessage, substitute } from "./_sendMessage.ts";

export interface SendItem {
  /** Where the item came from, for messages: `file:line`, `file#n`, `stdin`. */
  source: string;
  /** Journal key: `mid:<Message-ID>` when the input had one, else `pos:<absolute file>:<place>`; `/recipient` for mail-merge. */
  key: string;
  sender: string;
  recipients: string[];
  message: Uint8Array;
  attributes: Record<string, string>;
}

export type ReadResult = { ok: true; item: SendItem } | { ok: false; source: string; problem: string };

export interface ReadContext {
  hostname: string;
  /** -f: overrides any sender found in the input. */
  sender?: string;
  /** Used when neither -f nor the input names a sender: user@hostname. */
  defaultSender: string;
  fullName?: string;
  bodyType?: "7BIT" | "8BITMIME";
  maxMessageBytes: number;
}

export interface ReadProgress {
  bytesRead: number;
  totalBytes: number;
}

const CHUNK_BYTES = 1 << 20;

/** The lines of a file without their LF, numbered from 1, read in fixed-size chunks. */
export function* fileLines(
  path: string,
  progress?: ReadProgress,
): Generator<{ line: Uint8Array; no: number }> {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.allocUnsafe(CHUNK_BYTES);
    let carry: Uint8Array | undefined;
    let no = 0;
    for (;;) {
      const n = readSync(fd, buf, 0, CHUNK_BYTES, null);
      if (progress) progress.bytesRead += n;
      if (n === 0) break;
      const chunk = buf.subarray(0, n);
      let start = 0;
      for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
        let line: Uint8Array = chunk.subarray(start, nl);
        if (carry) {
          line = Buffer.concat([carry, line]);
          carry = undefined;
        }
        yield { line, no: ++no };
        start = nl + 1;
      }
      const tail = chunk.subarray(start);
      if (tail.length > 0) carry = carry ? Buffer.concat([carry, tail]) : Uint8Array.from(tail);
    }
    if (carry && carry.length > 0) yield { line: carry, no: ++no };
  } finally {
    closeSync(fd);
  }
}

export type InputKind = "eml" | "mbox" | "jsonl" | "dir";

/** The kind of an input: by extension, else by its first bytes (`{` JSON, `From ` mbox, else a message). */
export function inputKind(path: string): InputKind {
  if (statSync(path).isDirectory()) return "dir";
  const ext = extname(path).toLowerCase();
  if (ext === ".jsonl" || ext === ".ndjson" || ext === ".json") return "jsonl";
  if (ext === ".mbox" || ext === ".mbx") return "mbox";
  if (ext === ".eml") return "eml";
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(5);
    const n = readSync(fd, head, 0, 5, 0);
    const t = head.subarray(0, n).toString("latin1");
    if (t.trimStart().startsWith("{")) return "jsonl";
    if (t === "From ") return "mbox";
    return "eml";
  } finally {
    closeSync(fd);
  }
}

/** Total bytes of the inputs (directories: their .eml files), for progress. */
export function inputBytes(paths: readonly string[]): number {
  let total = 0;
  for (const p of paths) {
    const st = statSync(p);
    if (st.isDirectory()) {
      for (const f of emlFiles(p)) total += statSync(f).size;
    } else total += st.size;
  }
  return total;
}

function emlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && e.name.toLowerCase().endsWith(".eml"))
    .map((e) => join(dir, e.name))
    .sort();
}

/** Qualifies a bare local name (`root`) with the hostname, as sendmail does; validates the address. */
export function qualify(address: string, hostname: string): string | undefined {
  const a = address.trim();
  const full = a.includes("@") ? a : `${a}@${hostname}`;
  return parseMailbox(full) ? full : undefined;
}

function checkSize(item: SendItem, ctx: ReadContext): ReadResult {
  if (item.message.byteLength > ctx.maxMessageBytes)
    return {
      ok: false,
      source: item.source,
      problem: `message is ${item.message.byteLength} bytes, over the limit of ${ctx.maxMessageBytes}`,
    };
  return { ok: true, item };
}

/**
 * One RFC 5322 message: recipients from `recipients` (command line) plus, with `extract`, To/Cc/Bcc.
 * Sender: -f, else `envelopeSender` (mbox From_ line), else the From header's address, else the default.
 */
export function messageItem(
  raw: Uint8Array,
  o: { source: string; keyPlace: string; recipients: string[]; extract: boolean; envelopeSender?: string },
  ctx: ReadContext,
): ReadResult {
  const sender0 = ctx.sender ?? o.envelopeSender;
  const prepared = prepareMessage(raw, {
    hostname: ctx.hostname,
    sender: sender0 ?? ctx.defaultSender,
    ...(ctx.fullName !== undefined ? { fullName: ctx.fullName } : {}),
    extractRecipients: o.extract,
    removeBcc: true,
  });
  const sender = sender0 ?? prepared.fromAddress ?? ctx.defaultSender;
  if (sender !== "" && !parseMailbox(sender))
    return {
      ok: false,
      source: o.source,
      problem: `the sender is not an address: ${JSON.stringify(sender)}`,
    };
  const recipients: string[] = [];
  for (const r of [...o.recipients, ...prepared.headerRecipients]) {
    const q = qualify(r, ctx.hostname);
    if (!q)
      return { ok: false, source: o.source, problem: `a recipient is not an address: ${JSON.stringify(r)}` };
    if (!recipients.includes(q)) recipients.push(q);
  }
  if (recipients.length === 0)
    return {
      ok: false,
      source: o.source,
      problem: o.extract ? "no recipient in To, Cc or Bcc" : "no recipients (name them, or use -t)",
    };
  const attributes: Record<string, string> = { listener: "send" };
  const body = ctx.bodyType ?? (prepared.eightBit ? "8BITMIME" : undefined);
  if (body) attributes.body = body;
  const key = prepared.originalMessageId ? `mid:${prepared.originalMessageId}` : `pos:${o.keyPlace}`;
  return checkSize({ source: o.source, key, sender, recipients, message: prepared.message, attributes }, ctx);
}

function* emlItems(path: string, ctx: ReadContext, progress?: ReadProgress): Generator<ReadResult> {
  let raw: Uint8Array;
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    if (size > ctx.maxMessageBytes * 2 + 65536) {
      if (progress) progress.bytesRead += size;
      yield {
        ok: false,
        source: path,
        problem: `file is ${size} bytes, over the message size limit of ${ctx.maxMessageBytes}`,
      };
      return;
    }
    const buf = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) {
      const n = readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
    raw = buf.subarray(0, off);
    if (progress) progress.bytesRead += off;
  } finally {
    closeSync(fd);
  }
  yield messageItem(raw, { source: path, keyPlace: resolve(path), recipients: [], extract: true }, ctx);
}

const FROM_LINE = /^From (\S+)/;

function* mboxItems(path: string, ctx: ReadContext, progress?: ReadProgress): Generator<ReadResult> {
  const abs = resolve(path);
  let parts: Uint8Array[] = [];
  let size = 0;
  let startLine = 0;
  let envelopeSender: string | undefined;
  let index = 0;
  let prevBlank = true;
  const flush = function* (): Generator<ReadResult> {
    if (startLine === 0) return;
    // The empty line before the next From_ line separates messages; it is not part of the message.
    if (parts.length > 0 && parts[parts.length - 1]!.length <= 1) parts.pop();
    const raw = Buffer.concat(parts.flatMap((p) => [p, NL]));
    const source = `${path}:${startLine}`;
    if (size > ctx.maxMessageBytes * 2 + 65536)
      yield { ok: false, source, problem: `message is over the size limit of ${ctx.maxMessageBytes}` };
    else
      yield messageItem(
        raw,
        {
          source,
          keyPlace: `${abs}#${index}`,
          recipients: [],
          extract: true,
          ...(envelopeSender !== undefined ? { envelopeSender } : {}),
        },
        ctx,
      );
    parts = [];
    size = 0;
  };
  for (const { line, no } of fileLines(path, progress)) {
    const isFrom =
      prevBlank && line[0] === 0x46 && FROM_LINE.test(Buffer.from(line.subarray(0, 300)).toString("latin1"));
    if (isFrom) {
      yield* flush();
      index++;
      startLine = no;
      const who = FROM_LINE.exec(Buffer.from(line.subarray(0, 300)).toString("latin1"))![1]!;
      envelopeSender = who === "MAILER-DAEMON" || who === "<>" ? "" : who.includes("@") ? who : undefined;
      prevBlank = false;
      continue;
    }
    if (startLine === 0) {
      if (line.length > 0 && !(line.length === 1 && line[0] === 13)) {
        yield {
          ok: false,
          source: `${path}:${no}`,
          problem: 'not an mbox file: expected a "From " line first',
        };
        return;
      }
      continue;
    }
    let l = line;
    // mboxrd: ">From ", ">>From ", ... lose one ">".
    if (l[0] === 0x3e) {
      let j = 0;
      while (l[j] === 0x3e) j++;
      if (Buffer.from(l.subarray(j, j + 5)).toString("latin1") === "From ") l = l.subarray(1);
    }
    prevBlank = l.length === 0 || (l.length === 1 && l[0] === 13);
    if (size <= ctx.maxMessageBytes * 2 + 65536) parts.push(Uint8Array.from(l));
    size += l.length + 1;
  }
  yield* flush();
}

const NL = new Uint8Array([10]);

interface JsonItem extends InjectItem {
  substitutions?: Record<string, Record<string, string>>;
}

function checkSubstitutions(v: unknown, recipients: string[]): string | undefined {
  if (v === undefined) return undefined;
  if (!v || typeof v !== "object" || Array.isArray(v))
    return '"substitutions" must be an object: recipient → { name: value }';
  for (const [rcpt, values] of Object.entries(v)) {
    if (!recipients.includes(rcpt))
      return `"substitutions" names ${JSON.stringify(rcpt)}, which is not a recipient`;
    if (!values || typeof values !== "object" || Array.isArray(values))
      return `"substitutions.${rcpt}" must be an object of strings`;
    for (const [k, s] of Object.entries(values))
      if (typeof s !== "string") return `"substitutions.${rcpt}.${k}" must be a string`;
  }
  return undefined;
}

function headerValue(headers: Record<string, string> | undefined, name: string): string | undefined {
  for (const [k, v] of Object.entries(headers ?? {})) if (k.toLowerCase() === name) return v;
  return undefined;
}

/** One JSON Lines item: one message, or with `substitutions` one message per recipient. */
export function jsonItems(value: unknown, source: string, keyPlace: string, ctx: ReadContext): ReadResult[] {
  const problem = checkItem(value, ctx.maxMessageBytes);
  if (problem) return [{ ok: false, source, problem }];
  const item = value as JsonItem;
  const subProblem = checkSubstitutions(item.substitutions, item.recipients);
  if (subProblem) return [{ ok: false, source, problem: subProblem }];
  const sender = ctx.sender ?? item.sender;
  const build = (it: JsonItem, recipients: string[], key: string): ReadResult => {
    const attributes: Record<string, string> = { listener: "send", ...(it.attributes ?? {}) };
    let message: Uint8Array;
    let mid: string | undefined;
    if (it.message !== undefined) {
      const p = prepareMessage(Buffer.from(it.message, "utf8"), {
        hostname: ctx.hostname,
        sender,
        extractRecipients: false,
        removeBcc: true,
      });
      message = p.message;
      mid = p.originalMessageId;
      if (p.eightBit && !attributes.body) attributes.body = "8BITMIME";
    } else {
      message = composeMessage(
        {
          from: it.from ?? sender,
          to: recipients,
          ...(it.subject !== undefined ? { subject: it.subject } : {}),
          ...(it.text !== undefined ? { text: it.text } : {}),
          ...(it.html !== undefined ? { html: it.html } : {}),
          ...(it.headers !== undefined ? { headers: it.headers } : {}),
        },
        ctx.hostname,
      );
      mid = headerValue(it.headers, "message-id");
    }
    if (ctx.bodyType) attributes.body = ctx.bodyType;
    const k = mid ? `mid:${mid}${key}` : `pos:${keyPlace}${key}`;
    return checkSize({ source, key: k, sender, recipients, message, attributes }, ctx);
  };
  if (!item.substitutions) return [build(item, item.recipients, "")];
  const out: ReadResult[] = [];
  for (const rcpt of item.recipients) {
    const values: Record<string, string> = {
      email: rcpt,
      recipient: rcpt,
      ...(item.substitutions[rcpt] ?? {}),
    };
    const merged: JsonItem = { ...item };
    const missing = new Set<string>();
    const sub = (s: string | undefined): string | undefined => {
      if (s === undefined) return undefined;
      const r = substitute(s, values);
      if ("missing" in r) {
        for (const m of r.missing) missing.add(m);
        return s;
      }
      return r.text;
    };
    for (const k of ["message", "subject", "text", "html", "from"] as const) {
      const v = sub(item[k]);
      if (v !== undefined) merged[k] = v;
    }
    if (item.headers)
      merged.headers = Object.fromEntries(Object.entries(item.headers).map(([k, v]) => [k, sub(v)!]));
    if (missing.size > 0)
      return [
        {
          ok: false,
          source,
          problem: `recipient ${rcpt}: no value for ${[...missing].map((m) => `{{${m}}}`).join(", ")}`,
        },
      ];
    out.push(build(merged, [rcpt], `/${rcpt}`));
  }
  return out;
}

function* jsonlItems(path: string, ctx: ReadContext, progress?: ReadProgress): Generator<ReadResult> {
  const abs = resolve(path);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (const { line, no } of fileLines(path, progress)) {
    const source = `${path}:${no}`;
    let text: string;
    try {
      text = decoder.decode(line).trim();
    } catch {
      yield { ok: false, source, problem: "not UTF-8" };
      continue;
    }
    if (text === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      yield { ok: false, source, problem: `malformed JSON: ${(err as Error).message}` };
      continue;
    }
    yield* jsonItems(value, source, `${abs}:${no}`, ctx);
  }
}

/** Every item of every input, in order. */
export function* readInputs(
  paths: readonly string[],
  ctx: ReadContext,
  progress?: ReadProgress,
): Generator<ReadResult> {
  for (const path of paths) {
    let kind: InputKind;
    try {
      kind = inputKind(path);
    } catch (err) {
      yield { ok: false, source: path, problem: `cannot read: ${(err as Error).message}` };
      continue;
    }
    if (kind === "dir") for (const f of emlFiles(path)) yield* emlItems(f, ctx, progress);
    else if (kind === "eml") yield* emlItems(path, ctx, progress);
    else if (kind === "mbox") yield* mboxItems(path, ctx, progress);
    else yield* jsonlItems(path, ctx, progress);
  }
}
