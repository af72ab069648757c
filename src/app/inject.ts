/**
 * `POST /api/v1/inject`: many messages per request, as JSON, answered after the group commit.
 *
 * Owns: request validation (every item checked before any is appended: nothing half-accepted on bad
 * input), composing messages given as parts, the JSON answer with the ids of each message.
 * Body: `{ "messages": [ { "sender", "recipients": [..], "message": "<RFC 5322 text>" } | { "sender",
 * "recipients", "subject", "text", "html", "headers", "from" } ] }` or one such object alone.
 */
import { jsonError, jsonResponse } from "../observe/index.ts";
import { type AcceptPipeline, contentRefusal } from "./accept.ts";
import { addMissingHeaders, composeMessage } from "./compose.ts";

export interface InjectItem {
  sender: string;
  recipients: string[];
  message?: string;
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
  const hasRaw = m.message !== undefined;
  const hasParts = m.text !== undefined || m.html !== undefined || m.subject !== undefined;
  if (hasRaw && hasParts) return 'give either "message" or parts (subject, text, html), not both';
  if (!hasRaw && !hasParts) return 'missing "message" or parts (subject, text, html)';
  for (const k of ["message", "subject", "text", "html", "from"]) {
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
  const size =
    Buffer.byteLength(String(m.message ?? "")) +
    Buffer.byteLength(String(m.text ?? "")) +
    Buffer.byteLength(String(m.html ?? ""));
  if (size > maxBytes) return `message is ${size} bytes, over the limit of ${maxBytes}`;
  return undefined;
}

/** Normalizes line ends of a raw message to CRLF, as SMTP would carry it. */
function toCrlf(text: string): Uint8Array {
  return Buffer.from(text.replace(/\r\n|\r|\n/g, "\r\n"), "utf8");
}

export function itemToMessage(item: InjectItem, hostname: string): Uint8Array {
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

export function injectHandler(
  pipeline: AcceptPipeline,
  opts: { hostname: string; maxMessageBytes: number; maxItems?: number },
) {
  const maxItems = opts.maxItems ?? 10_000;
  return async (req: Request): Promise<Response> => {
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
    const results = await Promise.all(
      (items as InjectItem[]).map((item, i) =>
        pipeline.submit({
          sender: item.sender,
          recipients: item.recipients.map((address) => ({ address })),
          attributes: { listener: "api", ...(item.attributes ?? {}) },
          message: composed[i]!,
        }),
      ),
    );
    const failed = results.findIndex((r) => !r.ok);
    const messages = results.map((r, index) =>
      r.ok ? { index, ids: r.ids } : { index, error: r.reply.lines.join(" ") },
    );
    if (failed >= 0)
      return jsonResponse({ error: "the spool refused some messages; see each item", messages }, 503);
    return jsonResponse({ accepted: messages.length, messages });
  };
}
