/**
 * Composing RFC 5322 messages from parts (subject, text, html, headers) for the HTTP inject API and
 * `mta send` JSON Lines, and adding the headers a message must carry (Date, Message-ID, From).
 *
 * Owns: MIME assembly (multipart/alternative when both text and html), RFC 2047 encoded words for
 * non-ASCII header text, quoted-printable bodies, CRLF line ends.
 */
import { randomBytes } from "node:crypto";
import { textEncoder } from "../lib/index.ts";
import { hasField, headerText } from "./_header.ts";

export interface MessageParts {
  from?: string;
  to?: string[];
  subject?: string;
  text?: string;
  html?: string;
  headers?: Record<string, string>;
}

const CRLF = "\r\n";

/** An RFC 5322 date-time in UTC, e.g. `Thu, 26 Nov 2026 05:29:06 +0000`. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace("GMT", "+0000");
}

export function messageIdFor(hostname: string): string {
  return `<${Date.now().toString(36)}.${randomBytes(8).toString("hex")}@${hostname}>`;
}

/** RFC 2047 encoded-word (base64) when `value` is not plain printable ASCII. */
export function encodeHeaderValue(value: string): string {
  if (/^[\x20-\x7e]*$/.test(value)) return value;
  const words: string[] = [];
  // Keep each encoded word under 75 characters: 45 bytes of UTF-8 → 60 base64 characters.
  let chunk = "";
  for (const ch of value) {
    if (Buffer.byteLength(chunk + ch) > 45) {
      words.push(chunk);
      chunk = "";
    }
    chunk += ch;
  }
  if (chunk) words.push(chunk);
  return words.map((w) => `=?UTF-8?B?${Buffer.from(w).toString("base64")}?=`).join(`${CRLF} `);
}

/** Quoted-printable (RFC 2045 §6.7) of UTF-8 text, with CRLF line ends and soft breaks at 76. */
export function quotedPrintable(text: string): string {
  const lines = text.replace(/\r\n|\r|\n/g, "\n").split("\n");
  return lines
    .map((line) => {
      const bytes = Buffer.from(line, "utf8");
      let out = "";
      let col = 0;
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i]!;
        const last = i === bytes.length - 1;
        let enc: string;
        if ((b === 0x20 || b === 0x09) && last) enc = `=${b.toString(16).toUpperCase().padStart(2, "0")}`;
        else if ((b >= 33 && b <= 126 && b !== 61) || b === 0x20 || b === 0x09) enc = String.fromCharCode(b);
        else enc = `=${b.toString(16).toUpperCase().padStart(2, "0")}`;
        if (col + enc.length > 75) {
          out += `=${CRLF}`;
          col = 0;
        }
        out += enc;
        col += enc.length;
      }
      return out;
    })
    .join(CRLF);
}

function part(contentType: string, text: string): string {
  const ascii = /^[\x20-\x7e\r\n\t]*$/.test(text) && !text.split(/\r?\n/).some((l) => l.length > 998);
  const body = ascii ? text.replace(/\r\n|\r|\n/g, CRLF) : quotedPrintable(text);
  return `Content-Type: ${contentType}; charset=utf-8${CRLF}Content-Transfer-Encoding: ${ascii ? "7bit" : "quoted-printable"}${CRLF}${CRLF}${body}`;
}

/** Builds a complete message. Header names in `headers` are kept as given. */
export function composeMessage(p: MessageParts, hostname: string, nowMs = Date.now()): Uint8Array {
  const h: string[] = [];
  const has = (name: string) =>
    Object.keys(p.headers ?? {}).some((k) => k.toLowerCase() === name.toLowerCase());
  if (p.from && !has("from")) h.push(`From: ${encodeHeaderValue(p.from)}`);
  if (p.to?.length && !has("to")) h.push(`To: ${p.to.join(", ")}`);
  if (p.subject !== undefined && !has("subject")) h.push(`Subject: ${encodeHeaderValue(p.subject)}`);
  if (!has("date")) h.push(`Date: ${rfc5322Date(nowMs)}`);
  if (!has("message-id")) h.push(`Message-ID: ${messageIdFor(hostname)}`);
  for (const [k, v] of Object.entries(p.headers ?? {})) h.push(`${k}: ${encodeHeaderValue(v)}`);
  h.push("MIME-Version: 1.0");
  let body: string;
  if (p.text !== undefined && p.html !== undefined) {
    const boundary = `=_mta_${randomBytes(12).toString("hex")}`;
    h.push(`Content-Type: multipart/alternative; boundary="${boundary}"`);
    body = [
      "This is a multi-part message in MIME format.",
      `--${boundary}`,
      part("text/plain", p.text),
      `--${boundary}`,
      part("text/html", p.html),
      `--${boundary}--`,
      "",
    ].join(CRLF);
    return textEncoder.encode(`${h.join(CRLF)}${CRLF}${CRLF}${body}`);
  }
  const single = part(p.html !== undefined ? "text/html" : "text/plain", p.html ?? p.text ?? "");
  return textEncoder.encode(`${h.join(CRLF)}${CRLF}${single}${CRLF}`);
}

/** Adds Date, Message-ID and From when missing (RFC 6409 §8); returns the same bytes when nothing was missing. */
export function addMissingHeaders(
  message: Uint8Array,
  opts: { hostname: string; from?: string; nowMs?: number },
): Uint8Array {
  const head = headerText(message);
  const present = (name: string) => hasField(head, name);
  const add: string[] = [];
  if (!present("date")) add.push(`Date: ${rfc5322Date(opts.nowMs ?? Date.now())}`);
  if (!present("message-id")) add.push(`Message-ID: ${messageIdFor(opts.hostname)}`);
  if (!present("from") && opts.from) add.push(`From: ${opts.from}`);
  if (add.length === 0) return message;
  return Buffer.concat([Buffer.from(`${add.join(CRLF)}${CRLF}`, "latin1"), message]);
}
