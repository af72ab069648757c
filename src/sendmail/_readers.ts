/**
 * Batch inputs of `mta send`: `.eml` files, directories of them, mbox files and JSON Lines, read as a
 * stream of items, one at a time.
 *
 * Owns: file type detection, the streaming line reader (fixed-size chunks through `fs.readSync`), mbox
 * splitting (From_ lines, mboxrd `>From` unquoting), JSON Lines items (full message or parts, mail-merge
 * substitutions), the journal key of each item, item validation with file and line.
 * Invariant: memory holds one item (and one read chunk) at a time, never a whole input file; a bad item
 * or an input that cannot be read (missing, a directory where a file was named, no permission) is
 * reported as a value with its place and never stops the items after it.
 */
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { errnoText } from "../lib/index.ts";
import { parseMailbox } from "../smtp/index.ts";
import { composeMessage } from "../message/index.ts";
import { checkItem, decodeBase64Message, type InjectItem } from "../accept/index.ts";
import { ADDRESS_FIELDS, prepareMessage, qualifyAddressList, substitute } from "../message/index.ts";

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
  /** For generated Message-IDs. */
  hostname: string;
  /** Appended to bare local parts of addresses (Postfix's myorigin with append_at_myorigin). */
  origin: string;
  /** -f: overrides any sender found in the input (already qualified). */
  sender?: string;
  /** Used when neither -f nor the input names a sender: login@origin; absent without a passwd entry. */
  defaultSender?: string;
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

/** Total bytes of the inputs (directories: their .eml files), for progress; what cannot be read counts 0. */
export function inputBytes(paths: readonly string[]): number {
  let total = 0;
  for (const p of paths) {
    try {
      const st = statSync(p);
      if (st.isDirectory()) {
        for (const f of emlFiles(p)) {
          try {
            total += statSync(f).size;
          } catch {}
        }
      } else total += st.size;
    } catch {}
  }
  return total;
}

/** The `.eml` entries of a directory in name order (one that is not a file is reported when read). */
function emlFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((name) => name.toLowerCase().endsWith(".eml"))
    .map((name) => join(dir, name))
    .sort();
}

/**
 * Qualifies a bare local part (`root`) with the origin domain, as Postfix's append_at_myorigin does,
 * and validates the address; "" (the null sender) stays "". Undefined when it is not an address.
 */
export function qualify(address: string, origin: string): string | undefined {
  const a = address.trim();
  if (a === "") return "";
  const full = a.includes("@") ? a : `${a}@${origin}`;
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

/** Why there is no sender, when neither -f nor the input names one and the user has no login name. */
const NO_LOGIN = `no sender: user id ${process.getuid?.() ?? "?"} has no login name in the user database; give one with -f`;

/**
 * One RFC 5322 message: recipients from `recipients` (command line) plus, with `extract`, To/Cc/Bcc.
 * Sender: -f, else `envelopeSender` (mbox From_ line), else (batch files only, `senderFromHeader`) the
 * From header's address, else login@origin, as Postfix's sendmail does for standard input.
 */
export function messageItem(
  raw: Uint8Array,
  o: {
    source: string;
    keyPlace: string;
    recipients: string[];
    extract: boolean;
    envelopeSender?: string;
    senderFromHeader?: boolean;
  },
  ctx: ReadContext,
): ReadResult {
  const sender0 = ctx.sender ?? o.envelopeSender;
  const prepared = prepareMessage(raw, {
    hostname: ctx.hostname,
    origin: ctx.origin,
    sender: sender0 ?? ctx.defaultSender ?? "",
    ...(ctx.fullName !== undefined ? { fullName: ctx.fullName } : {}),
    extractRecipients: o.extract,
    removeBcc: true,
  });
  const fromHeader = o.senderFromHeader ? prepared.fromAddress : undefined;
  const found = sender0 ?? fromHeader ?? ctx.defaultSender;
  if (found === undefined) return { ok: false, source: o.source, problem: NO_LOGIN };
  const sender = qualify(found, ctx.origin);
  if (sender === undefined)
    return {
      ok: false,
      source: o.source,
      problem: `the sender is not an address: ${JSON.stringify(found)}`,
    };
  const recipients: string[] = [];
  for (const r of [...o.recipients, ...prepared.headerRecipients]) {
    const q = qualify(r, ctx.origin);
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
  let fd: number;
  try {
    fd = openSync(path, "r");
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      yield { ok: false, source: path, problem: "cannot read: not a regular file" };
      return;
    }
  } catch (err) {
    yield { ok: false, source: path, problem: `cannot read: ${errnoText(err)}` };
    return;
  }
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
  } catch (err) {
    yield { ok: false, source: path, problem: `cannot read: ${errnoText(err)}` };
    return;
  } finally {
    closeSync(fd);
  }
  yield messageItem(
    raw,
    { source: path, keyPlace: resolve(path), recipients: [], extract: true, senderFromHeader: true },
    ctx,
  );
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
          senderFromHeader: true,
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

/** Bare local parts in "sender" and "recipients" qualified with the origin (others left to checkItem). */
function qualifyItem(value: unknown, origin: string): unknown {
  if (!value || typeof value !== "object" || Array.isArray(value)) return value;
  const v = { ...(value as Record<string, unknown>) };
  const q = (a: unknown) => (typeof a === "string" ? (qualify(a, origin) ?? a) : a);
  if (typeof v.sender === "string") v.sender = q(v.sender);
  if (Array.isArray(v.recipients)) {
    const qualified = v.recipients.map(q);
    // mail-merge substitutions are keyed by recipient: follow the qualification.
    if (v.substitutions && typeof v.substitutions === "object" && !Array.isArray(v.substitutions)) {
      const subs: Record<string, unknown> = {};
      for (const [k, s] of Object.entries(v.substitutions as Record<string, unknown>)) subs[String(q(k))] = s;
      v.substitutions = subs;
    }
    v.recipients = qualified;
  }
  return v;
}

/** Parts' address headers (`from`, `headers` such as Reply-To) with bare local parts qualified. */
function qualifyParts(it: JsonItem, origin: string): { from?: string; headers?: Record<string, string> } {
  const out: { from?: string; headers?: Record<string, string> } = {};
  if (it.from !== undefined) out.from = qualifyAddressList(it.from, origin);
  if (it.headers !== undefined)
    out.headers = Object.fromEntries(
      Object.entries(it.headers).map(([k, v]) => [
        k,
        ADDRESS_FIELDS.has(k.toLowerCase()) ? qualifyAddressList(v, origin) : v,
      ]),
    );
  return out;
}

/** One JSON Lines item: one message, or with `substitutions` one message per recipient. */
export function jsonItems(value: unknown, source: string, keyPlace: string, ctx: ReadContext): ReadResult[] {
  const qualified = qualifyItem(value, ctx.origin);
  const problem = checkItem(qualified, ctx.maxMessageBytes);
  if (problem) return [{ ok: false, source, problem }];
  const item = qualified as JsonItem;
  const subProblem = checkSubstitutions(item.substitutions, item.recipients);
  if (subProblem) return [{ ok: false, source, problem: subProblem }];
  const sender = ctx.sender ?? item.sender;
  const build = (it: JsonItem, recipients: string[], key: string): ReadResult => {
    const attributes: Record<string, string> = { listener: "send", ...(it.attributes ?? {}) };
    let message: Uint8Array;
    let mid: string | undefined;
    if (it.message !== undefined || it.messageBase64 !== undefined) {
      const raw =
        it.messageBase64 !== undefined
          ? decodeBase64Message(it.messageBase64)
          : Buffer.from(it.message!, "utf8");
      const p = prepareMessage(raw, {
        hostname: ctx.hostname,
        origin: ctx.origin,
        sender,
        extractRecipients: false,
        removeBcc: true,
      });
      message = p.message;
      mid = p.originalMessageId;
      if (p.eightBit && !attributes.body) attributes.body = "8BITMIME";
    } else {
      const q = qualifyParts(it, ctx.origin);
      message = composeMessage(
        {
          from: q.from ?? sender,
          to: recipients,
          ...(it.subject !== undefined ? { subject: it.subject } : {}),
          ...(it.text !== undefined ? { text: it.text } : {}),
          ...(it.html !== undefined ? { html: it.html } : {}),
          ...(q.headers !== undefined ? { headers: q.headers } : {}),
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

/** mbox and JSON Lines items; a read error part-way (EIO, EACCES) ends that input with one bad item. */
function* readLines(
  path: string,
  items: (path: string, ctx: ReadContext, progress?: ReadProgress) => Generator<ReadResult>,
  ctx: ReadContext,
  progress?: ReadProgress,
): Generator<ReadResult> {
  const it = items(path, ctx, progress);
  for (;;) {
    let r: IteratorResult<ReadResult>;
    try {
      r = it.next();
    } catch (err) {
      yield { ok: false, source: path, problem: `cannot read: ${errnoText(err)}` };
      return;
    }
    if (r.done) return;
    yield r.value;
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
    let files: string[] = [];
    try {
      kind = inputKind(path);
      if (kind === "dir") files = emlFiles(path);
    } catch (err) {
      yield { ok: false, source: path, problem: `cannot read: ${errnoText(err)}` };
      continue;
    }
    if (kind === "dir") for (const f of files) yield* emlItems(f, ctx, progress);
    else if (kind === "eml") yield* emlItems(path, ctx, progress);
    else yield* readLines(path, kind === "mbox" ? mboxItems : jsonlItems, ctx, progress);
  }
}
