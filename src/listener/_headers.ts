/**
 * Trace and submission headers the listener adds in front of a received message.
 *
 * Owns: the `Received:` header (RFC 5321 §4.4, protocol names per RFC 3848 / RFC 6531), the RFC 6409
 * §8 fix-ups (Message-ID, Date) on submission listeners.
 * Invariant: the message bytes after our headers are exactly the bytes the client sent.
 */
import { newMessageId } from "../lib/index.ts";
import { hasField, headerText, rfc5322Date } from "../message/index.ts";

export { rfc5322Date };

/** Keeps a peer-chosen token printable and free of characters that would break a header comment. */
function clean(text: string): string {
  const t = text.replace(/[\x00-\x20\x7f()\\]+/g, "?").slice(0, 255);
  return t.length > 0 ? t : "?";
}

export interface ReceivedInfo {
  helo: string;
  clientAddress: string;
  hostname: string;
  esmtp: boolean;
  smtputf8: boolean;
  authenticated: boolean;
  tls?: { protocol: string; cipher: string };
  /** Named only when there is exactly one recipient, so a Received line never lists Bcc's. */
  recipients: string[];
  nowMs: number;
}

export function receivedHeader(r: ReceivedInfo): string {
  // RFC 3848 / RFC 6531 §3.7.3: ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP(S)(A), or SMTP after HELO.
  const base = r.smtputf8 ? "UTF8SMTP" : r.esmtp ? "ESMTP" : "SMTP";
  const proto = r.esmtp || r.smtputf8 ? `${base}${r.tls ? "S" : ""}${r.authenticated ? "A" : ""}` : base;
  const ip = r.clientAddress.includes(":") ? `IPv6:${r.clientAddress}` : r.clientAddress;
  let h = `Received: from ${clean(r.helo)} ([${ip}])\r\n\tby ${r.hostname} (mta) with ${proto}`;
  if (r.tls) h += `\r\n\t(${clean(r.tls.protocol)} ${clean(r.tls.cipher)})`;
  if (r.recipients.length === 1) h += `\r\n\tfor <${r.recipients[0]}>`;
  return `${h};\r\n\t${rfc5322Date(r.nowMs)}\r\n`;
}

/**
 * RFC 6409 §8.3 and §8.1: the header lines to add when the message has no Message-ID or no Date.
 * Only the header section (up to the first empty line) is looked at.
 */
export function submissionHeaders(message: Uint8Array, hostname: string, nowMs: number): string {
  const head = headerText(message);
  let add = "";
  if (!hasField(head, "message-id")) add += `Message-ID: <${newMessageId(nowMs)}@${hostname}>\r\n`;
  if (!hasField(head, "date")) add += `Date: ${rfc5322Date(nowMs)}\r\n`;
  return add;
}
