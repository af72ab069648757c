/**
 * The few pure protocol pieces the SMTP client needs, until `src/smtp/` exports them.
 *
 * Owns: `SmtpReply`, reply parsing, `classifyReply`, `dotStuff`, EHLO keyword parsing, xtext.
 * Does not own: any I/O. The integrator folds these into `src/smtp/` (same names and signatures).
 */
import { CR, DOT, LF } from "../lib/index.ts";

export interface SmtpReply {
  code: number;
  enhanced?: string;
  lines: string[];
}

export type ReplyClass = "success" | "transient" | "permanent";

const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)/;

/** Builds a reply from its text lines (code and separator already removed by the caller or not). */
export function parseReplyLines(lines: string[]): SmtpReply {
  const first = lines[0] ?? "";
  const code = Number(first.slice(0, 3));
  const texts = lines.map((l) => l.slice(4));
  const m = ENHANCED.exec(texts[0] ?? "");
  // RFC 3463 §2: the enhanced code's class must match the reply's first digit.
  if (m && m[1]![0] === first[0]) {
    return { code, enhanced: m[1]!, lines: texts.map((t) => t.replace(ENHANCED, "")) };
  }
  return { code, lines: texts };
}

/** One function decides: 2xx/3xx success, 5xx permanent, anything else (4xx, garbage) transient. */
export function classifyReply(r: SmtpReply): ReplyClass {
  if (r.code >= 200 && r.code < 400) return "success";
  if (r.code >= 500 && r.code < 600) return "permanent";
  return "transient";
}

export function reply(code: number, enhanced: string | undefined, text: string): SmtpReply {
  return enhanced ? { code, enhanced, lines: [text] } : { code, lines: [text] };
}

export function replyText(r: SmtpReply): string {
  return `${r.code}${r.enhanced ? ` ${r.enhanced}` : ""} ${r.lines.join(" / ")}`;
}

/**
 * RFC 5321 §4.5.2: doubles a dot at the start of every line, ends the body with CRLF if it does not,
 * and appends the terminating `.CRLF`. One allocation of the exact output size.
 */
export function dotStuff(body: Uint8Array): Uint8Array {
  let dots = body.length > 0 && body[0] === DOT ? 1 : 0;
  for (let i = body.indexOf(LF); i !== -1 && i + 1 < body.length; i = body.indexOf(LF, i + 1)) {
    if (body[i + 1] === DOT) dots++;
  }
  const endsWithCrlf = body.length >= 2 && body[body.length - 2] === CR && body[body.length - 1] === LF;
  const tail = endsWithCrlf || body.length === 0 ? 3 : 5;
  const out = new Uint8Array(body.length + dots + tail);
  let o = 0;
  let lineStart = true;
  for (let i = 0; i < body.length; ) {
    if (lineStart && body[i] === DOT) out[o++] = DOT;
    const nl = body.indexOf(LF, i);
    const end = nl === -1 ? body.length : nl + 1;
    out.set(body.subarray(i, end), o);
    o += end - i;
    i = end;
    lineStart = nl !== -1;
  }
  if (tail === 5) {
    out[o++] = CR;
    out[o++] = LF;
  }
  out[o++] = DOT;
  out[o++] = CR;
  out[o++] = LF;
  return out;
}

export interface ServerCapabilities {
  esmtp: boolean;
  pipelining: boolean;
  /** 0: SIZE not offered or no limit given. */
  sizeBytes: number;
  size: boolean;
  eightBitMime: boolean;
  smtputf8: boolean;
  dsn: boolean;
  starttls: boolean;
  chunking: boolean;
  auth: string[];
}

/** EHLO keywords (RFC 5321 §4.1.1.1): every line after the first is `KEYWORD [params]`. */
export function parseEhlo(r: SmtpReply): ServerCapabilities {
  const caps: ServerCapabilities = {
    esmtp: true,
    pipelining: false,
    sizeBytes: 0,
    size: false,
    eightBitMime: false,
    smtputf8: false,
    dsn: false,
    starttls: false,
    chunking: false,
    auth: [],
  };
  for (const line of r.lines.slice(1)) {
    const [kw = "", ...params] = line.trim().split(/\s+/);
    switch (kw.toUpperCase()) {
      case "PIPELINING":
        caps.pipelining = true;
        break;
      case "SIZE":
        caps.size = true;
        caps.sizeBytes = Number(params[0] ?? 0) || 0;
        break;
      case "8BITMIME":
        caps.eightBitMime = true;
        break;
      case "SMTPUTF8":
        caps.smtputf8 = true;
        break;
      case "DSN":
        caps.dsn = true;
        break;
      case "STARTTLS":
        caps.starttls = true;
        break;
      case "CHUNKING":
        caps.chunking = true;
        break;
      case "AUTH":
        caps.auth.push(...params.map((p) => p.toUpperCase()));
        break;
    }
  }
  return caps;
}

export const NO_CAPABILITIES: ServerCapabilities = { ...parseEhlo({ code: 250, lines: [""] }), esmtp: false };

/** RFC 3461 §4: xtext, for ORCPT and ENVID values that are not already encoded. */
export function xtext(value: string): string {
  let out = "";
  for (const ch of value) {
    const c = ch.codePointAt(0)!;
    out +=
      c < 33 || c > 126 || ch === "+" || ch === "="
        ? `+${c.toString(16).toUpperCase().padStart(2, "0")}`
        : ch;
  }
  return out;
}
