/**
 * Turning a message as scripts write it (bare LF, maybe no Date/Message-ID/From, Bcc in the header) into
 * one ready for the spool, and finding its recipients in the header for `-t`.
 *
 * Owns: CRLF normalization, header field splitting and unfolding, RFC 5322 address-list parsing
 * (quoted strings, comments, groups, angle addresses), qualifying bare local parts in address headers
 * (Postfix's append_at_myorigin), Bcc removal, the headers a message must carry, mail-merge
 * placeholders (`{{name}}`).
 * Invariants: the header is handled as Latin-1 so every byte of the body and of 8-bit header text
 * survives; a header value built from an argument (`-F`) never carries CR or LF.
 */
import { hasEightBit, latin1Decoder } from "../lib/index.ts";
import { encodeHeaderValue, messageIdFor, rfc5322Date } from "./_compose.ts";
import { headerEnd } from "./_header.ts";

const CR = 13;
const LF = 10;

/**
 * Normalizes CR, LF and CRLF line ends to CRLF. Returns the input when it is already clean. Lines are
 * found with indexOf (native), so a large message costs a few operations per line, not per byte.
 */
export function toCrlf(bytes: Uint8Array): Uint8Array {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // Positions where a CRLF must be written instead of a lone LF, a lone CR, or nothing.
  const cuts: { at: number; skip: number }[] = [];
  for (let i = buf.indexOf(LF); i >= 0; i = buf.indexOf(LF, i + 1))
    if (i === 0 || buf[i - 1] !== CR) cuts.push({ at: i, skip: 1 });
  for (let i = buf.indexOf(CR); i >= 0; i = buf.indexOf(CR, i + 1))
    if (buf[i + 1] !== LF) cuts.push({ at: i, skip: 1 });
  if (cuts.length === 0) return bytes;
  cuts.sort((a, b) => a.at - b.at);
  // Plain Uint8Array views: Buffer#subarray builds a Buffer each time, twice as slow here.
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Uint8Array(bytes.length + cuts.length);
  let from = 0;
  let o = 0;
  for (const c of cuts) {
    out.set(view.subarray(from, c.at), o);
    o += c.at - from;
    out[o++] = CR;
    out[o++] = LF;
    from = c.at + c.skip;
  }
  out.set(view.subarray(from), o);
  return out;
}

export interface HeaderField {
  name: string;
  /** Unfolded value, without the leading space. */
  value: string;
  /** The raw field text including continuation lines and the final CRLF. */
  raw: string;
}

export interface SplitMessage {
  fields: HeaderField[];
  /** Everything after the header: the empty line and the body (may be empty). */
  rest: Uint8Array;
}

/** Splits a CRLF message into header fields and the rest. A header line without a colon ends the header. */
export function splitMessage(msg: Uint8Array): SplitMessage {
  const text = latin1Decoder.decode(msg.subarray(0, headerEnd(msg)));
  const fields: HeaderField[] = [];
  let pos = 0;
  while (pos < text.length) {
    let end = text.indexOf("\r\n", pos);
    if (end < 0) end = text.length;
    else end += 2;
    while (end < text.length && (text[end] === " " || text[end] === "\t")) {
      const n = text.indexOf("\r\n", end);
      end = n < 0 ? text.length : n + 2;
    }
    const raw = text.slice(pos, end);
    const colon = raw.indexOf(":");
    if (colon <= 0 || /[\s]/.test(raw.slice(0, colon))) break;
    fields.push({
      name: raw.slice(0, colon),
      value: raw
        .slice(colon + 1)
        .replace(/\r\n(?=[ \t])/g, "")
        .replace(/\r\n$/, "")
        .trim(),
      raw,
    });
    pos = end;
  }
  let headerBytes = 0;
  for (const f of fields) headerBytes += f.raw.length;
  return { fields, rest: msg.subarray(headerBytes) };
}

export function joinMessage(
  fields: readonly HeaderField[],
  rest: Uint8Array,
  prepend: readonly string[] = [],
): Uint8Array {
  const head = prepend.map((l) => `${l}\r\n`).join("") + fields.map((f) => f.raw).join("");
  const h = Buffer.from(head, "latin1");
  const out = new Uint8Array(h.length + rest.length);
  out.set(h, 0);
  out.set(rest, h.length);
  return out;
}

function fromLatin1(text: string): string {
  return Buffer.from(text, "latin1").toString("utf8");
}

/** The addresses in an RFC 5322 address list: `A <a@x>, "B, C" <b@x>, c@x (C), team: d@x, e@x;`. */
export function parseAddressList(value: string): string[] {
  // Drop comments (nested) outside quoted strings.
  let s = "";
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (quoted) {
      s += c;
      if (c === "\\" && i + 1 < value.length) s += value[++i]!;
      else if (c === '"') quoted = false;
    } else if (depth > 0) {
      if (c === "\\") i++;
      else if (c === "(") depth++;
      else if (c === ")") depth--;
    } else if (c === "(") depth++;
    else {
      if (c === '"') quoted = true;
      s += c;
    }
  }
  // Split on commas, colons (group start) and semicolons (group end) outside quotes and angle brackets.
  const out: string[] = [];
  let cur = "";
  let angle = false;
  quoted = false;
  const push = () => {
    const m = /<([^>]*)>/.exec(cur);
    let addr = (m ? m[1]! : cur).trim();
    if (addr.startsWith("@") && addr.includes(":")) addr = addr.slice(addr.indexOf(":") + 1); // source route
    if (addr) out.push(addr);
    cur = "";
  };
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quoted) {
      cur += c;
      if (c === "\\" && i + 1 < s.length) cur += s[++i]!;
      else if (c === '"') quoted = false;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === "<") angle = true;
    else if (c === ">") angle = false;
    else if (!angle && c === ":") {
      cur = ""; // display name of a group
      continue;
    } else if (!angle && (c === "," || c === ";")) {
      push();
      continue;
    }
    cur += c;
  }
  push();
  return out.filter((a) => !/^"[^"]*"$/.test(a)); // a display name alone is no address
}

/** Header fields whose addresses are qualified like the envelope (Postfix rewrites the same ones). */
export const ADDRESS_FIELDS = new Set([
  "from",
  "sender",
  "reply-to",
  "to",
  "cc",
  "bcc",
  "resent-from",
  "resent-sender",
  "resent-reply-to",
  "resent-to",
  "resent-cc",
  "resent-bcc",
]);

const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/;

/**
 * Appends `@origin` to every bare local part in an address list (`root` → `root@origin`,
 * `root (Cron Daemon)` → `root@origin (Cron Daemon)`, `Ops <ops>` → `Ops <ops@origin>`), keeping
 * everything else (display names, comments, groups, folding) byte for byte. Returns the same string
 * when nothing needed it.
 */
export function qualifyAddressList(value: string, origin: string): string {
  const inserts: number[] = [];
  let depth = 0;
  let quoted = false;
  let angle = -1;
  /** Positions of the element's characters outside comments, quotes included; reset per element. */
  let first = -1;
  let last = -1;
  let words = 0;
  let inWord = false;
  let sawAngle = false;
  const endElement = () => {
    if (!sawAngle && first >= 0 && words === 1) {
      const addr = value.slice(first, last + 1);
      if (!addr.includes("@") && (DOT_ATOM.test(addr) || /^"([^"\\]|\\.)*"$/.test(addr)))
        inserts.push(last + 1);
    }
    first = last = -1;
    words = 0;
    inWord = false;
    sawAngle = false;
  };
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (depth > 0) {
      if (c === "\\") i++;
      else if (c === "(") depth++;
      else if (c === ")") depth--;
      inWord = false;
      continue;
    }
    if (quoted) {
      if (c === "\\") i++;
      else if (c === '"') quoted = false;
      last = i;
      continue;
    }
    if (angle >= 0) {
      if (c === ">") {
        const inner = value.slice(angle + 1, i);
        const spec = inner.includes(":") ? inner.slice(inner.lastIndexOf(":") + 1) : inner; // source route
        if (spec.trim() !== "" && !spec.includes("@")) inserts.push(i);
        angle = -1;
      } else if (c === '"') {
        // a quoted local part inside <...>: skip to its end
        for (i++; i < value.length && value[i] !== '"'; i++) if (value[i] === "\\") i++;
      }
      continue;
    }
    if (c === "(") {
      depth = 1;
      inWord = false;
    } else if (c === "<") {
      angle = i;
      sawAngle = true;
    } else if (c === "," || c === ";") endElement();
    else if (c === ":") {
      // a group's display name: what came before is no address
      first = last = -1;
      words = 0;
      inWord = false;
    } else if (c === " " || c === "\t" || c === "\r" || c === "\n") inWord = false;
    else {
      if (!inWord) words++;
      inWord = true;
      if (first < 0) first = i;
      last = i;
      if (c === '"') quoted = true;
    }
  }
  endElement();
  if (inserts.length === 0) return value;
  let out = "";
  let at = 0;
  for (const p of inserts.sort((a, b) => a - b)) {
    out += `${value.slice(at, p)}@${origin}`;
    at = p;
  }
  return out + value.slice(at);
}

/** A header field with its bare local parts qualified (raw text rewritten, folding kept). */
function qualifyField(f: HeaderField, origin: string): HeaderField {
  const colon = f.raw.indexOf(":");
  const rewritten = qualifyAddressList(f.raw.slice(colon + 1), origin);
  if (rewritten === f.raw.slice(colon + 1)) return f;
  const raw = f.raw.slice(0, colon + 1) + rewritten;
  return { name: f.name, raw, value: qualifyAddressList(f.value, origin) };
}

/** A display name from an argument (`-F`): CR, LF and other control characters become spaces. */
export function cleanDisplayName(name: string): string {
  return name
    .replace(/[\x00-\x1f\x7f]+/g, " ")
    .replace(/\s+/g, " ")
    .trim();
}

export interface PrepareOptions {
  hostname: string;
  /** Domain appended to bare local parts in the address headers (Postfix's myorigin); none when absent. */
  origin?: string;
  /** Envelope sender; also the address of a From header we add. */
  sender: string;
  /** -F: display name of a From header we add. */
  fullName?: string;
  /** -t: collect To/Cc/Bcc recipients. */
  extractRecipients: boolean;
  /** Remove Bcc (always with -t; sendmail also removes it otherwise). */
  removeBcc: boolean;
  nowMs?: number;
}

export interface PreparedMessage {
  message: Uint8Array;
  /** Recipients found in To/Cc/Bcc (only with extractRecipients). */
  headerRecipients: string[];
  /** The Message-ID the input already had, if any (generated ones are not reported). */
  originalMessageId?: string;
  /** The address in From, if any. */
  fromAddress?: string;
  /** Whether the message has bytes over 127 (needs 8BITMIME). */
  eightBit: boolean;
}

function quoteDisplayName(name: string): string {
  const clean = cleanDisplayName(name);
  if (/[^\x20-\x7e]/.test(clean)) return encodeHeaderValue(clean); // RFC 2047 for non-ASCII
  if (/^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*$/.test(clean)) return clean;
  return `"${clean.replace(/["\\]/g, "\\$&")}"`;
}

/** CRLF line ends, Bcc removed, Date/Message-ID/From added when missing (RFC 6409 §8.1-8.3). */
export function prepareMessage(input: Uint8Array, o: PrepareOptions): PreparedMessage {
  let bytes = toCrlf(input);
  // A leading mbox "From " line is not part of the message (Postfix's sendmail drops it too).
  if (bytes[0] === 0x46 && latin1Decoder.decode(bytes.subarray(0, 5)) === "From ") {
    const nl = bytes.indexOf(LF);
    bytes = nl < 0 ? new Uint8Array(0) : bytes.subarray(nl + 1);
  }
  const split = splitMessage(bytes);
  const { rest } = split;
  const lower = (f: HeaderField) => f.name.toLowerCase();
  let qualified = false;
  const fields =
    o.origin === undefined
      ? split.fields
      : split.fields.map((f) => {
          if (!ADDRESS_FIELDS.has(lower(f))) return f;
          const q = qualifyField(f, o.origin!);
          if (q !== f) qualified = true;
          return q;
        });
  const headerRecipients: string[] = [];
  if (o.extractRecipients) {
    for (const f of fields) {
      const n = lower(f);
      if (n === "to" || n === "cc" || n === "bcc")
        headerRecipients.push(...parseAddressList(fromLatin1(f.value)));
    }
  }
  const kept = o.removeBcc ? fields.filter((f) => lower(f) !== "bcc") : fields;
  const add: string[] = [];
  const has = (name: string) => kept.some((f) => lower(f) === name);
  const mid = kept.find((f) => lower(f) === "message-id");
  const from = kept.find((f) => lower(f) === "from");
  if (!has("date")) add.push(`Date: ${rfc5322Date(o.nowMs ?? Date.now())}`);
  if (!mid) add.push(`Message-ID: ${messageIdFor(o.hostname)}`);
  if (!from && o.sender)
    add.push(`From: ${o.fullName ? `${quoteDisplayName(o.fullName)} <${o.sender}>` : o.sender}`);
  const message =
    add.length === 0 && kept.length === fields.length && !qualified ? bytes : joinMessage(kept, rest, add);
  const out: PreparedMessage = { message, headerRecipients, eightBit: hasEightBit(message) };
  if (mid?.value) out.originalMessageId = mid.value;
  const fromAddr = from ? parseAddressList(fromLatin1(from.value))[0] : undefined;
  if (fromAddr) out.fromAddress = fromAddr;
  return out;
}

const PLACEHOLDER = /\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}/g;

/** Replaces `{{key}}` placeholders; returns the missing keys instead when some have no value. */
export function substitute(
  text: string,
  values: Readonly<Record<string, string>>,
): { text: string } | { missing: string[] } {
  const missing = new Set<string>();
  const out = text.replace(PLACEHOLDER, (whole, key: string) => {
    const v = values[key];
    if (v === undefined) {
      missing.add(key);
      return whole;
    }
    return v;
  });
  return missing.size > 0 ? { missing: [...missing] } : { text: out };
}
