/**
 * Batch inputs of `mta send`: `.eml` files, directories of them, mbox files and JSON Lines, read as a
 * stream of items, one at a time.
 *
 * Owns: file type detection, the streaming line reader (fixed-size chunks through `fs.readSync`), mbox
 * splitting (From_ lines, mboxrd `>From` unquoting), JSON Lines framing, read errors with their place,
 * the progress count of bytes read.
 * Does not own: what one message or JSON item becomes (_items.ts: sender, recipients, journal key,
 * mail merge, validation).
 * Invariant: memory holds one item (and one read chunk) at a time, never a whole input file; a bad item
 * or an input that cannot be read (missing, a directory where a file was named, no permission) is
 * reported as a value with its place and never stops the items after it.
 */
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { errnoText } from "../lib/index.ts";
import { jsonItems, messageItem, type ReadContext, type ReadResult } from "./_items.ts";

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
