/**
 * RFC 3464 delivery status notifications.
 *
 * Owns: `buildDsn`: a complete RFC 5322 message, multipart/report; report-type=delivery-status, with
 * a human-readable part, the machine-readable message/delivery-status part, and the original message
 * (message/rfc822) or its header (text/rfc822-headers).
 * Does not own: deciding to send one (scheduler/ with `wantsDsn`), queueing it (scheduler/, spool/).
 * Invariants: every line ends in CRLF and header-like lines are folded to stay short (never over 998
 * bytes, RFC 5322 §2.1.1); text from peers is stripped of CR/LF and non-ASCII so it cannot inject
 * fields; the boundary never occurs in the returned original; never addressed to the null sender.
 * An original with 8-bit bytes is returned as-is, and the DSN then says `Content-Transfer-Encoding:
 * 8bit`, so it must be relayed with BODY=8BITMIME (RFC 6152).
 * When the sender or a recipient address is not ASCII, the DSN is an internationalized one (RFC 6533):
 * addresses are kept in UTF-8 (the To field, the text, `Final-Recipient: utf-8; ...`), the report is
 * message/global-delivery-status and the original message/global; it then needs SMTPUTF8 to travel,
 * which the deliverer asks for because its recipient is not ASCII.
 */
import { randomBytes } from "node:crypto";
import { assert, indexOfBytes } from "../lib/index.ts";
import { headerEnd } from "../message/index.ts";
import { isNullSender } from "./status.ts";

export interface DsnRecipient {
  address: string;
  /** ORCPT as given (`rfc822;user@example.com`); a bare address is taken as rfc822. */
  orcpt?: string;
  action: "failed" | "delayed" | "delivered" | "relayed" | "expanded";
  /** Enhanced status code, e.g. "5.1.1". */
  status: string;
  /** e.g. "smtp; 550 5.1.1 No such user". */
  diagnostic?: string;
  /** e.g. "dns; mx.example.com". */
  remoteMta?: string;
  lastAttemptMs?: number;
  willRetryUntilMs?: number;
}

export interface DsnInput {
  /** Our hostname. */
  reportingMta: string;
  /** Our queue id of the original message. */
  originalMessageId: string;
  envId?: string;
  ret?: "FULL" | "HDRS";
  arrivalMs: number;
  nowMs: number;
  /** The original envelope sender, to whom the DSN goes. */
  sender: string;
  recipients: DsnRecipient[];
  original: Uint8Array;
  /** Beyond this the DSN returns only the original's header (default 256 KB). */
  maxOriginalBytes?: number;
}

export const DEFAULT_MAX_ORIGINAL_BYTES = 256 * 1024;

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** RFC 5322 §3.3 date-time in UTC: `Tue, 14 Nov 2023 22:13:20 +0000`. */
export function formatRfc5322Date(ms: number): string {
  const d = new Date(ms);
  const p2 = (n: number) => String(n).padStart(2, "0");
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p2(d.getUTCHours())}:${p2(d.getUTCMinutes())}:${p2(d.getUTCSeconds())} +0000`;
}

/**
 * One line of printable text: CR/LF and controls become spaces; other non-ASCII becomes '?', unless
 * `utf8` (an internationalized DSN, RFC 6533), where printable UTF-8 is kept.
 */
function clean(text: string, utf8 = false): string {
  return text
    .replace(/[\r\n\t\x00-\x1f\x7f\x80-\x9f]+/g, " ")
    .replace(utf8 ? /[^\x20-\x7e\u00a0-\u{10ffff}]/gu : /[^\x20-\x7e]/g, "?")
    .trim();
}

const NON_ASCII = /[^\x00-\x7f]/;

/** RFC 6533 §3: a non-ASCII address is of type "utf-8"; an ASCII one stays "rfc822". */
function addressField(name: string, address: string, utf8: boolean): string {
  return foldField(name, `${NON_ASCII.test(address) ? "utf-8" : "rfc822"}; ${address}`, utf8);
}

const FOLD_AT = 78;
const HARD_LIMIT = 990;

/**
 * `Name: value` folded at spaces near 78 columns (RFC 5322 §2.2.3); a run with no space longer than
 * the hard limit is broken anyway, since a line over 998 bytes is worse than an inserted space.
 */
export function foldField(name: string, value: string, utf8 = false): string {
  const words = clean(value, utf8)
    .split(" ")
    .filter((w) => w !== "");
  const lines: string[] = [];
  let line = `${name}:`;
  for (let word of words) {
    while (word.length > HARD_LIMIT) {
      if (line.trim() !== "") lines.push(line);
      lines.push(` ${word.slice(0, HARD_LIMIT)}`);
      word = word.slice(HARD_LIMIT);
      line = "";
    }
    if (line.length + 1 + word.length > FOLD_AT && line.trim() !== "" && line !== `${name}:`) {
      lines.push(line);
      line = "";
    }
    line += ` ${word}`;
  }
  lines.push(line);
  return lines.filter((l) => l !== "").join("\r\n");
}

/** Wraps prose at spaces to about 72 columns. */
function wrapText(text: string): string {
  const out: string[] = [];
  for (const para of text.split("\n")) {
    let line = "";
    for (let word of para.split(" ")) {
      // A word longer than a line (a token from a peer) is cut, so that no line exceeds the limits.
      while (word.length > 72) {
        if (line !== "") out.push(line);
        out.push(word.slice(0, 72));
        word = word.slice(72);
        line = "";
      }
      if (line !== "" && line.length + 1 + word.length > 72) {
        out.push(line);
        line = word;
      } else line = line === "" ? word : `${line} ${word}`;
    }
    out.push(line);
  }
  return out.join("\r\n");
}

/** The header section of `message`, ending with its last line end (the empty line excluded). */
function headerOf(message: Uint8Array): Uint8Array {
  return message.subarray(0, headerEnd(message));
}

/**
 * NUL or a bare CR/LF: content that came as BINARYMIME. message/rfc822 may not carry it (RFC 2046
 * §5.2.1 allows no binary encoding a 7bit/8bit DSN could use), so only its header is returned.
 */
function hasBinary(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === 0 || (b === 13 && bytes[i + 1] !== 10) || (b === 10 && bytes[i - 1] !== 13)) return true;
  }
  return false;
}

function hasEightBit(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! > 0x7f) return true;
  return false;
}

function subjectFor(recipients: DsnRecipient[]): string {
  if (recipients.some((r) => r.action === "failed")) return "Undelivered Mail Returned to Sender";
  if (recipients.some((r) => r.action === "delayed")) return "Delayed Mail (still being retried)";
  return "Successful Mail Delivery Report";
}

function humanPart(input: DsnInput, utf8: boolean): string {
  const groups: Array<[DsnRecipient["action"], string]> = [
    ["failed", "Your message could not be delivered to the following recipients. This is a permanent error."],
    [
      "delayed",
      "Your message has not yet been delivered to the following recipients. The mail system will keep trying; you do not need to resend it.",
    ],
    ["delivered", "Your message was delivered to the following recipients."],
    [
      "relayed",
      "Your message was relayed to the following recipients, whose systems may not send further notices.",
    ],
    ["expanded", "Your message was delivered to the following recipients, which are lists or aliases."],
  ];
  const parts = [
    `This is the mail system at host ${clean(input.reportingMta)}.`,
    "",
    `This is a report about the message you sent at ${formatRfc5322Date(input.arrivalMs)}, queue id ${clean(input.originalMessageId)}.`,
  ];
  for (const [action, intro] of groups) {
    const list = input.recipients.filter((r) => r.action === action);
    if (list.length === 0) continue;
    parts.push("", intro, "");
    for (const r of list) {
      const detail = r.diagnostic
        ? clean(r.diagnostic).replace(/^[a-z0-9-]+;\s*/i, "")
        : `status ${clean(r.status)}`;
      const until =
        r.willRetryUntilMs !== undefined
          ? ` (will retry until ${formatRfc5322Date(r.willRetryUntilMs)})`
          : "";
      parts.push(`  <${clean(r.address, utf8)}>: ${detail}${until}`);
    }
  }
  return `${wrapText(parts.join("\n"))}\r\n`;
}

function deliveryStatusPart(input: DsnInput, utf8: boolean): string {
  const fields: string[] = [foldField("Reporting-MTA", `dns; ${input.reportingMta}`)];
  if (input.envId !== undefined) fields.push(foldField("Original-Envelope-Id", input.envId));
  fields.push(foldField("X-Mta-Queue-ID", input.originalMessageId));
  fields.push(foldField("Arrival-Date", formatRfc5322Date(input.arrivalMs)));
  const blocks = [fields.join("\r\n")];
  for (const r of input.recipients) {
    assert(
      /^[245]\.\d{1,3}\.\d{1,3}$/.test(r.status),
      () => `DSN status "${r.status}" is not an enhanced code`,
    );
    const f: string[] = [];
    if (r.orcpt !== undefined)
      f.push(
        r.orcpt.includes(";")
          ? foldField("Original-Recipient", r.orcpt, utf8)
          : addressField("Original-Recipient", r.orcpt, utf8),
      );
    f.push(addressField("Final-Recipient", r.address, utf8));
    f.push(foldField("Action", r.action));
    f.push(foldField("Status", r.status));
    if (r.remoteMta !== undefined)
      f.push(foldField("Remote-MTA", r.remoteMta.includes(";") ? r.remoteMta : `dns; ${r.remoteMta}`));
    if (r.diagnostic !== undefined)
      f.push(
        foldField("Diagnostic-Code", r.diagnostic.includes(";") ? r.diagnostic : `smtp; ${r.diagnostic}`),
      );
    if (r.lastAttemptMs !== undefined)
      f.push(foldField("Last-Attempt-Date", formatRfc5322Date(r.lastAttemptMs)));
    if (r.willRetryUntilMs !== undefined)
      f.push(foldField("Will-Retry-Until", formatRfc5322Date(r.willRetryUntilMs)));
    blocks.push(f.join("\r\n"));
  }
  // RFC 3464 §2.1: per-message fields, then per-recipient groups, each group separated by an empty line.
  return `${blocks.join("\r\n\r\n")}\r\n`;
}

export function buildDsn(input: DsnInput): Uint8Array {
  assert(!isNullSender(input.sender), "a DSN is never sent to the null sender (RFC 3464 §2.2)");
  assert(input.recipients.length > 0, "a DSN reports at least one recipient");
  const maxOriginalBytes = input.maxOriginalBytes ?? DEFAULT_MAX_ORIGINAL_BYTES;
  const full =
    input.ret !== "HDRS" && input.original.length <= maxOriginalBytes && !hasBinary(input.original);
  const returned = full ? input.original : headerOf(input.original);
  const utf8 =
    NON_ASCII.test(input.sender) ||
    input.recipients.some((r) => NON_ASCII.test(r.address) || NON_ASCII.test(r.orcpt ?? ""));
  const eightBit = utf8 || hasEightBit(returned);

  let boundary: string;
  do boundary = `=_mta_dsn_${randomBytes(12).toString("hex")}`;
  while (indexOfBytes(returned, new TextEncoder().encode(boundary)) >= 0);

  const sender = clean(input.sender, utf8).replace(/^<|>$/g, "");
  const host = clean(input.reportingMta);
  const head = [
    foldField("From", `Mail Delivery System <MAILER-DAEMON@${host}>`),
    foldField("To", `<${sender}>`, utf8),
    foldField("Subject", subjectFor(input.recipients)),
    foldField("Date", formatRfc5322Date(input.nowMs)),
    foldField("Message-ID", `<${clean(input.originalMessageId)}.${input.nowMs}.dsn@${host}>`),
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    // RFC 6522 §3: report-type names the subtype of the second part.
    `Content-Type: multipart/report; report-type=${utf8 ? "global-" : ""}delivery-status;\r\n boundary="${boundary}"`,
    `Content-Transfer-Encoding: ${eightBit ? "8bit" : "7bit"}`,
    "",
    "This is a MIME-encapsulated message.",
    "",
    `--${boundary}`,
    `Content-Type: text/plain; charset=${utf8 ? "utf-8" : "us-ascii"}`,
    "Content-Description: Notification",
    "",
    humanPart(input, utf8),
    `--${boundary}`,
    `Content-Type: message/${utf8 ? "global-" : ""}delivery-status`,
    "Content-Description: Delivery report",
    "",
    deliveryStatusPart(input, utf8),
    `--${boundary}`,
    full
      ? `Content-Type: message/${utf8 ? "global" : "rfc822"}\r\nContent-Description: Undelivered Message`
      : `Content-Type: ${utf8 ? "message/global-headers" : "text/rfc822-headers"}\r\nContent-Description: Undelivered Message Headers`,
    `Content-Transfer-Encoding: ${eightBit ? "8bit" : "7bit"}`,
    "",
    "",
  ].join("\r\n");
  const endsWithEol = returned.length === 0 || returned[returned.length - 1] === 10;
  const tail = `${endsWithEol ? "" : "\r\n"}\r\n--${boundary}--\r\n`;
  const enc = new TextEncoder();
  const headBytes = enc.encode(head);
  const tailBytes = enc.encode(tail);
  const out = new Uint8Array(headBytes.length + returned.length + tailBytes.length);
  out.set(headBytes, 0);
  out.set(returned, headBytes.length);
  out.set(tailBytes, headBytes.length + returned.length);
  return out;
}
