/**
 * `POST /api/v1/inject`: many messages per request, as JSON, answered after the group commit.
 *
 * Owns: request validation (every item checked before any is appended: nothing half-accepted on bad
 * input), composing messages given as parts, the JSON answer with the ids of each message.
 * Body: `{ "messages": [ item, ... ] }` or one item alone, where an item is `{ "sender", "recipients":
 * [..] }` plus one of: `"message": "<RFC 5322 text>"` (JSON text, so UTF-8), `"messageBase64": "<the
 * message's bytes in base64>"` (any bytes: 8-bit ISO-8859-1, binary MIME parts), or parts (`subject`,
 * `text`, `html`, `headers`, `from`).
 */
import type { Config } from "../config/index.ts";
import { concatBytes, hasEightBit, textEncoder } from "../lib/index.ts";
import { jsonError, jsonResponse, type Peer } from "../observe/index.ts";
import { replyText } from "../smtp/index.ts";
import { type AcceptPipeline, contentRefusal } from "./_pipeline.ts";
import { addMissingHeaders, composeMessage, rfc5322Date, toCrlf as bytesToCrlf } from "../message/index.ts";

export interface InjectItem {
  sender: string;
  recipients: string[];
  message?: string;
  /** The message's bytes, base64 (RFC 4648 §4), for content that is not UTF-8. */
  messageBase64?: string;
  from?: string;
  subject?: string;
  text?: string;
  html?: string;
  headers?: Record<string, string>;
  attributes?: Record<string, string>;
}

const ADDRESS = /^[^\s<>@]+@[^\s<>@]+$/;

/** Checks one item; returns the problem or undefined. */
export function checkItem(item: unknown, maxBytes: number): string | undefined {
  if (!item || typeof item !== "object" || Array.isArray(item)) return "expected an object";
  const m = item as Record<string, unknown>;
  if (typeof m.sender !== "string") return 'missing "sender" (use "" for the null sender)';
  if (m.sender !== "" && !ADDRESS.test(m.sender))
    return `"sender" is not an address: ${JSON.stringify(m.sender)}`;
  if (!Array.isArray(m.recipients) || m.recipients.length === 0)
    return 'missing "recipients" (a non-empty list)';
  for (const r of m.recipients) {
    if (typeof r !== "string" || !ADDRESS.test(r))
      return `a recipient is not an address: ${JSON.stringify(r)}`;
  }
  const raws = (m.message !== undefined ? 1 : 0) + (m.messageBase64 !== undefined ? 1 : 0);
  const hasParts = m.text !== undefined || m.html !== undefined || m.subject !== undefined;
  if (raws > 1) return 'give "message" or "messageBase64", not both';
  if (raws > 0 && hasParts) return 'give either "message" or parts (subject, text, html), not both';
  if (raws === 0 && !hasParts) return 'missing "message", "messageBase64" or parts (subject, text, html)';
  for (const k of ["message", "messageBase64", "subject", "text", "html", "from"]) {
    if (m[k] !== undefined && typeof m[k] !== "string") return `"${k}" must be a string`;
  }
  for (const k of ["headers", "attributes"]) {
    const h = m[k];
    if (h === undefined) continue;
    if (!h || typeof h !== "object" || Array.isArray(h)) return `"${k}" must be an object of strings`;
    for (const [name, v] of Object.entries(h)) {
      if (typeof v !== "string") return `"${k}.${name}" must be a string`;
      if (k === "headers" && (!/^[!-9;-~]+$/.test(name) || /[\r\n]/.test(v)))
        return `"headers.${name}" is not a valid header`;
    }
  }
  if (typeof m.messageBase64 === "string" && !BASE64.test(m.messageBase64))
    return '"messageBase64" is not base64 (RFC 4648: A-Z a-z 0-9 + / and = padding)';
  const size =
    (typeof m.messageBase64 === "string" ? base64Bytes(m.messageBase64) : 0) +
    Buffer.byteLength(String(m.message ?? "")) +
    Buffer.byteLength(String(m.text ?? "")) +
    Buffer.byteLength(String(m.html ?? ""));
  if (size > maxBytes) return `message is ${size} bytes, over the limit of ${maxBytes}`;
  return undefined;
}

/** listen[].max_message_size's default, for a daemon without SMTP listeners. */
const DEFAULT_MAX_MESSAGE_BYTES = 25_000_000;

/**
 * The largest message the inject API (and `mta send`, in either mode) accepts: the largest listener's
 * max_message_size, or that key's default when there is no listener (an API-only daemon).
 */
export function injectLimitBytes(config: Config): number {
  return config.listen.length > 0
    ? Math.max(...config.listen.map((l) => l.maxMessageBytes))
    : DEFAULT_MAX_MESSAGE_BYTES;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decoded size of a base64 text, without decoding it. */
function base64Bytes(text: string): number {
  const pad = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  return Math.floor((text.length * 3) / 4) - pad;
}

/** The bytes of a checked `messageBase64`. */
export function decodeBase64Message(text: string): Uint8Array {
  return Buffer.from(text, "base64");
}

/** Normalizes line ends of a raw message to CRLF, as SMTP would carry it. */
function toCrlf(text: string): Uint8Array {
  return Buffer.from(text.replace(/\r\n|\r|\n/g, "\r\n"), "utf8");
}

export function itemToMessage(item: InjectItem, hostname: string): Uint8Array {
  if (item.messageBase64 !== undefined)
    return addMissingHeaders(bytesToCrlf(decodeBase64Message(item.messageBase64)), {
      hostname,
      from: item.sender || undefined,
    });
  if (item.message !== undefined)
    return addMissingHeaders(toCrlf(item.message), { hostname, from: item.sender || undefined });
  return composeMessage(
    {
      from: item.from ?? item.sender,
      to: item.recipients,
      subject: item.subject,
      text: item.text,
      html: item.html,
      headers: item.headers,
    },
    hostname,
  );
}

/** `Received: from [ip] by host (mta) with HTTP; date`, or `by host (mta, control socket)`. */
export function injectReceived(peer: Peer, hostname: string, nowMs: number): string {
  const date = rfc5322Date(nowMs);
  if (peer.socket)
    return `Received: by ${hostname} (mta, inject API on the control socket);\r\n\t${date}\r\n`;
  const a = peer.address.replace(/^::ffff:/, "");
  const literal = a.includes(":") ? `IPv6:${a}` : a;
  return `Received: from [${literal}]\r\n\tby ${hostname} (mta, inject API) with HTTP;\r\n\t${date}\r\n`;
}

export function injectHandler(
  pipeline: AcceptPipeline,
  opts: { hostname: string; maxMessageBytes: number; maxItems?: number },
) {
  const maxItems = opts.maxItems ?? 10_000;
  return async (req: Request, _url: URL, peer: Peer): Promise<Response> => {
    let body: unknown;
    try {
      body = await req.json();
    } catch (err) {
      return jsonError(400, `malformed JSON: ${(err as Error).message}`);
    }
    const items: unknown[] =
      body && typeof body === "object" && Array.isArray((body as { messages?: unknown }).messages)
        ? (body as { messages: unknown[] }).messages
        : [body];
    if (items.length === 0) return jsonError(400, '"messages" is empty');
    if (items.length > maxItems)
      return jsonError(413, `too many messages in one request (${items.length} > ${maxItems})`);
    for (let i = 0; i < items.length; i++) {
      const problem = checkItem(items[i], opts.maxMessageBytes);
      if (problem) return jsonError(problem.includes("over the limit") ? 413 : 400, problem, { index: i });
    }
    // Content that the spool would refuse (NUL, an unfoldable header line) is a bad item like any other:
    // found before anything is appended.
    const composed = (items as InjectItem[]).map((item) => itemToMessage(item, opts.hostname));
    for (let i = 0; i < composed.length; i++) {
      const refusal = contentRefusal(composed[i]!, (items[i] as InjectItem).attributes?.body);
      if (refusal) return jsonError(400, refusal.lines.join(" "), { index: i });
    }
    // RFC 5321 §4.4: a trace line for this hop, naming the client as the listener's Received does.
    const trace = textEncoder.encode(injectReceived(peer, opts.hostname, Date.now()));
    const client = peer.socket ? "control socket" : peer.address;
    const results = await Promise.all(
      (items as InjectItem[]).map((item, i) => {
        const message = composed[i]!;
        const attributes: Record<string, string> = { listener: "api", ...(item.attributes ?? {}) };
        // RFC 6152: 8-bit content travels as BODY=8BITMIME unless the caller said otherwise.
        if (!attributes.body && hasEightBit(message)) attributes.body = "8BITMIME";
        return pipeline.submit(
          {
            sender: item.sender,
            recipients: item.recipients.map((address) => ({ address })),
            attributes: { ...attributes, client },
            message: concatBytes([trace, message]),
          },
          { refuse: true },
        );
      }),
    );
    // Suppressed recipients (suppression.answer: refuse) are named per item, with the reply SMTP gives.
    const refusedOf = (r: (typeof results)[number]) =>
      r.refused
        ? { refused: r.refused.map((x) => ({ recipient: x.address, error: replyText(x.reply) })) }
        : {};
    const spoolFailed = results.some((r) => !r.ok && !r.refused);
    const messages = results.map((r, index) =>
      r.ok
        ? { index, ids: r.ids, ...refusedOf(r) }
        : {
            index,
            error: r.refused ? "every recipient is on the suppression list" : r.reply.lines.join(" "),
            ...refusedOf(r),
          },
    );
    if (spoolFailed)
      return jsonResponse({ error: "the spool refused some messages; see each item", messages }, 503);
    const accepted = results.filter((r) => r.ok).length;
    if (accepted === 0)
      return jsonResponse(
        { error: "every recipient is on the suppression list; see each item", accepted, messages },
        422,
      );
    return jsonResponse({ accepted, messages });
  };
}
