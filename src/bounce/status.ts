/**
 * Reply -> DSN status, and whether a sender asked for a DSN.
 *
 * Owns: `statusFromReply`, `diagnosticFromReply`, `wantsDsn`.
 * Invariants: a status's class always agrees with the outcome (5 = permanent, 4 = transient), even
 * when the peer's enhanced code says otherwise, because the DSN's Action field follows the outcome;
 * a null sender never gets a DSN (RFC 5321 §4.5.5, RFC 3464 §2.2).
 */
import type { SmtpReply } from "./_reply.ts";

const ENHANCED_RE = /^[245]\.(\d{1,3})\.(\d{1,3})$/;
const ENHANCED_IN_TEXT_RE = /^[245]\.(\d{1,3})\.(\d{1,3})(?=\s|$)/;

/**
 * The enhanced status code (RFC 3463) for a DSN: the reply's own (taken from `enhanced` or from the
 * start of its text) with its class set by `kind`; else X.0.0 from the basic code; else, when there
 * was no reply at all (connection refused, timeout), X.4.0 "network or routing".
 */
export function statusFromReply(reply: SmtpReply | undefined, kind: "permanent" | "transient"): string {
  const cls = kind === "permanent" ? "5" : "4";
  if (!reply) return `${cls}.4.0`;
  const m =
    (reply.enhanced !== undefined ? ENHANCED_RE.exec(reply.enhanced.trim()) : null) ??
    ENHANCED_IN_TEXT_RE.exec((reply.lines[0] ?? "").trim());
  if (m) return `${cls}.${Number(m[1])}.${Number(m[2])}`;
  return `${cls}.0.0`;
}

/** `smtp; 550 5.1.1 No such user`: the Diagnostic-Code value for a reply (RFC 3464 §2.3.6). */
export function diagnosticFromReply(reply: SmtpReply): string {
  const text = reply.lines.join(" ").replace(/\s+/g, " ").trim();
  const enhanced = reply.enhanced && !text.startsWith(reply.enhanced) ? `${reply.enhanced} ` : "";
  return `smtp; ${reply.code} ${enhanced}${text}`.trim();
}

/** Whether `sender` is the null reverse-path, which never receives a DSN. */
export function isNullSender(sender: string | undefined): boolean {
  const s = (sender ?? "").trim();
  return s === "" || s === "<>";
}

/**
 * RFC 3461 §4.1: NOTIFY=NEVER suppresses every DSN; without NOTIFY we send FAILURE and DELAY
 * notices (the RFC leaves DELAY to us), never SUCCESS. Pass `sender` to also refuse the null sender.
 */
export function wantsDsn(
  notify: string[] | undefined,
  action: "failed" | "delayed" | "delivered",
  sender?: string,
): boolean {
  if (sender !== undefined && isNullSender(sender)) return false;
  const wanted = (notify ?? ["FAILURE", "DELAY"]).map((n) => n.trim().toUpperCase());
  if (wanted.includes("NEVER")) return false;
  const keyword = action === "failed" ? "FAILURE" : action === "delayed" ? "DELAY" : "SUCCESS";
  return wanted.includes(keyword);
}
