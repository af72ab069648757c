/**
 * What one input of `mta send` becomes: a `SendItem` (sender, recipients, the prepared message, its
 * attributes and journal key), or a problem with its place.
 *
 * Owns: qualifying bare local parts with the origin, the sender's choice (-f, the mbox From_ line,
 * the From header for batch files, login@origin), recipients (command line, `-t` extraction), the
 * journal key (`mid:<Message-ID>` else `pos:<file>:<place>`, `/recipient` for mail merge), JSON items
 * (a full message or parts; mail-merge substitutions, one message per recipient), the size check.
 * Does not own: reading files (_readers.ts), RFC 5322 work (message/), the inject item's checks
 * (accept/'s `checkItem`).
 * Invariant: an item that is returned `ok` has a valid sender ("" for the null sender), at least one
 * valid recipient without duplicates, and a message within `maxMessageBytes`.
 */
import { checkItem, decodeBase64Message, type InjectItem } from "../accept/index.ts";
import {
  ADDRESS_FIELDS,
  composeMessage,
  prepareMessage,
  qualifyAddressList,
  substitute,
} from "../message/index.ts";
import { parseMailbox } from "../smtp/index.ts";

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
