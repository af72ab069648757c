/**
 * SMTP replies as values, both sides of the wire.
 *
 * Owns: `SmtpReply`, building (`reply`), formatting (`formatReply`), parsing (`parseReplyLines`),
 * the one classification of replies (`classifyReply`), and `SmtpError`.
 * Invariant: an enhanced status code (RFC 3463) always has the same class digit as the reply code;
 * a reply never carries CR or LF inside a text line; a formatted reply line is at most
 * `MAX_REPLY_LINE_OCTETS` (RFC 5321 §4.5.3.1.5), whatever the texts it was given.
 */

export interface SmtpReply {
  code: number;
  /** RFC 3463 enhanced status code such as "5.1.1", without the reply code. */
  enhanced?: string;
  /** Text lines, without the code and without the enhanced code. */
  lines: string[];
}

export type ReplyClass = "success" | "transient" | "permanent";

export function reply(code: number, enhanced: string | undefined, ...lines: string[]): SmtpReply {
  const texts = lines.length === 0 ? [""] : lines;
  return enhanced ? { code, enhanced, lines: texts } : { code, lines: texts };
}

/** RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, the code and the CRLF included. */
export const MAX_REPLY_LINE_OCTETS = 512;
/** What is left for the text after `NNN-` and the CRLF. */
const MAX_TEXT_OCTETS = MAX_REPLY_LINE_OCTETS - 6;
const utf8 = new TextEncoder();

/**
 * Cuts `text` to at most `MAX_TEXT_OCTETS` octets of UTF-8, at a character boundary. Replies are built
 * from bounded pieces, so this is a backstop (a long configured hostname, a reason from a peer), not
 * the way a reply is meant to fit: a cut text ends with "...".
 */
function fitLine(text: string): string {
  if (text.length <= MAX_TEXT_OCTETS / 3) return text;
  if (utf8.encode(text).length <= MAX_TEXT_OCTETS) return text;
  let out = "";
  let octets = 0;
  for (const ch of text) {
    const n =
      ch.codePointAt(0)! < 0x80 ? 1 : ch.codePointAt(0)! < 0x800 ? 2 : ch.codePointAt(0)! < 0x10000 ? 3 : 4;
    if (octets + n > MAX_TEXT_OCTETS - 3) break;
    out += ch;
    octets += n;
  }
  return `${out}...`;
}

/**
 * Multi-line replies per RFC 5321 §4.2.1: `250-first\r\n250 last\r\n`; the enhanced code (when present)
 * is repeated on every line (RFC 2034 §4). CR and LF inside a text are replaced by spaces so that a
 * reason can never inject a line, and each line is cut to 512 octets.
 */
export function formatReply(r: SmtpReply): string {
  const lines = r.lines.length === 0 ? [""] : r.lines;
  const prefix = r.enhanced ? `${r.enhanced} ` : "";
  let out = "";
  for (let i = 0; i < lines.length; i++) {
    const sep = i === lines.length - 1 ? " " : "-";
    const text = fitLine(`${prefix}${lines[i]!.replace(/[\r\n]+/g, " ")}`);
    out += text.length > 0 ? `${r.code}${sep}${text}\r\n` : `${r.code}${sep === "-" ? "-" : ""}\r\n`;
  }
  return out;
}

/** One line of text for logs: `550 5.1.1 No such user / second line`. */
export function replyText(r: SmtpReply): string {
  return `${r.code}${r.enhanced ? ` ${r.enhanced}` : ""} ${r.lines.join(" / ")}`;
}

/**
 * One line as stored in the spool and the delivery log: `450 4.2.0 text` (lines joined by spaces).
 * `parseStoredReply` reads it back.
 */
export function replyLine(r: SmtpReply): string {
  return `${r.code}${r.enhanced ? ` ${r.enhanced}` : ""} ${r.lines.join(" ")}`.trim();
}

/** A stored `replyLine` back into a reply; undefined for empty or malformed text. */
export function parseStoredReply(text: string | undefined): SmtpReply | undefined {
  if (!text) return undefined;
  const m = /^(\d{3})(?:\s+([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)$/s.exec(text);
  if (!m) return undefined;
  return m[2]
    ? { code: Number(m[1]), enhanced: m[2], lines: [m[3] ?? ""] }
    : { code: Number(m[1]), lines: [m[3] ?? ""] };
}

const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)/;

/**
 * Client side: the raw lines of one reply (`"250-a"`, `"250 b"`, without CRLF) into a reply. The enhanced
 * code is taken from the first line when its class matches the reply code (RFC 3463 §2) and removed from
 * every line that repeats it. A malformed code gives `code: 0`, which classifies as transient.
 */
export function parseReplyLines(lines: string[]): SmtpReply {
  const first = lines[0] ?? "";
  const code = /^\d{3}/.test(first) ? Number(first.slice(0, 3)) : 0;
  const texts = lines.map((l) => l.slice(4));
  const m = ENHANCED.exec(texts[0] ?? "");
  if (m && m[1]![0] === first[0]) {
    const enhanced = m[1]!;
    return {
      code,
      enhanced,
      lines: texts.map((t) => (t.startsWith(enhanced) ? t.slice(enhanced.length).replace(/^\s+/, "") : t)),
    };
  }
  return { code, lines: texts };
}

/** The one place that decides: 2xx/3xx success, 4xx transient, 5xx permanent, anything else transient. */
export function classifyReply(r: SmtpReply): ReplyClass {
  if (r.code >= 200 && r.code < 400) return "success";
  if (r.code >= 500 && r.code < 600) return "permanent";
  return "transient";
}

/**
 * An error that carries the reply the peer sees (bland) apart from the real reason (for the log only).
 */
export class SmtpError extends Error {
  override name = "SmtpError";
  readonly reply: SmtpReply;
  readonly reason: string;
  constructor(r: SmtpReply, reason?: string, options?: { cause?: unknown }) {
    super(reason ?? replyText(r), options);
    this.reply = r;
    this.reason = reason ?? replyText(r);
  }
}
