/**
 * Reading mail that comes back: RFC 3464 delivery status notifications, RFC 5965 (ARF) feedback
 * reports, and the common bounces that follow neither (qmail's, older Exim's, many appliances').
 *
 * Owns: `parseReport`: raw message → what kind of report, per-recipient results, feedback fields, the
 * returned original's header, and every address in it.
 * Does not own: MIME decoding (postal-mime, a maintained, dependency-free parser: multipart nesting,
 * transfer encodings and charsets are where hand-written parsers go wrong), matching a report to our
 * message (app/ with verp.ts), classification (classify.ts).
 * The RFC 3464 and RFC 5965 field blocks themselves are simple header syntax (RFC 3464 §2.1, RFC 5965
 * §3.1) and are parsed here, with folding and comments handled, because no maintained npm package
 * parses them (the few that exist are unmaintained and cover DSNs only).
 */
import PostalMime from "postal-mime";
import { headerSectionOfText } from "../message/index.ts";

export interface ReportedRecipient {
  /** Final-Recipient (or Original-Recipient), lower case, without the address type. */
  address: string;
  originalRecipient?: string;
  /** failed | delayed | delivered | relayed | expanded. */
  action: string;
  /** Enhanced status code such as 5.1.1. */
  status?: string;
  /** The remote reply as the report gives it (Diagnostic-Code without its type). */
  diagnostic?: string;
  /** Reply code and text parsed out of the diagnostic, for classification. */
  code?: number;
  text: string;
  remoteMta?: string;
}

export interface FeedbackReport {
  /** abuse | fraud | virus | other | not-spam | auth-failure (RFC 5965 §7.3, RFC 6591). */
  feedbackType: string;
  userAgent?: string;
  originalMailFrom?: string;
  originalRcptTo: string[];
  reportingMta?: string;
  sourceIp?: string;
  arrivalDate?: string;
}

export interface ParsedReport {
  kind: "dsn" | "arf" | "heuristic" | "auto-reply" | "unknown";
  /** DSN: Reporting-MTA. */
  reportingMta?: string;
  recipients: ReportedRecipient[];
  feedback?: FeedbackReport;
  /** Header section of the returned original (message/rfc822 or text/rfc822-headers part), if any. */
  originalHeaders?: string;
  /** From: and To: of the report itself, and its Subject. */
  from?: string;
  subject?: string;
}

/** `Name: value` blocks separated by blank lines (RFC 3464 §2.1), field names lower-cased, folding undone. */
export function parseFieldGroups(text: string): Map<string, string>[] {
  const groups: Map<string, string>[] = [];
  let current = new Map<string, string>();
  let last: string | undefined;
  for (const raw of text.replace(/\r\n?/g, "\n").split("\n")) {
    if (raw.trim() === "") {
      if (current.size > 0) groups.push(current);
      current = new Map();
      last = undefined;
      continue;
    }
    if (/^[ \t]/.test(raw) && last !== undefined) {
      current.set(last, `${current.get(last)} ${raw.trim()}`);
      continue;
    }
    const m = /^([!-9;-~]+)[ \t]*:[ \t]*(.*)$/.exec(raw);
    if (!m) continue;
    last = m[1]!.toLowerCase();
    // The first occurrence of a field wins (RFC 3464 allows each once per group).
    if (!current.has(last)) current.set(last, m[2]!.trim());
  }
  if (current.size > 0) groups.push(current);
  return groups;
}

/** `rfc822; Bob@Example.NET` → `bob@example.net` (a type other than rfc822 gives the value as written). */
function typedAddress(v: string | undefined): string | undefined {
  if (!v) return undefined;
  const m = /^\s*([A-Za-z0-9-]+)\s*;\s*(.*)$/.exec(v);
  const value = (m ? m[2]! : v).trim().replace(/^<|>$/g, "").trim();
  return value === "" ? undefined : value.toLowerCase();
}

/** Drops RFC 5322 comments, `(like this)`, that some MTAs put in fields. */
function uncomment(v: string): string {
  return v
    .replace(/\([^()]*\)/g, "")
    .replace(/\s+/g, " ")
    .trim();
}

const REPLY_RE = /\b([245]\d\d)(?:[ -]+|\s*)(?:#?([245]\.\d{1,3}\.\d{1,3})\b)?\s*(.*)$/s;

/** `smtp; 550-5.1.1 The email account ... 550 5.1.1 ...` → code, enhanced, one-line text. */
export function parseDiagnostic(diagnostic: string): { code?: number; enhanced?: string; text: string } {
  const value = diagnostic
    .replace(/^\s*[A-Za-z0-9-]+\s*;\s*/, "")
    .replace(/\s+/g, " ")
    .trim();
  const m = REPLY_RE.exec(value);
  if (!m) return { text: value };
  // A multi-line reply flattened: "550-5.1.1 a 550-5.1.1 b 550 5.1.1 c" → "a b c".
  const text = m[3]!
    .replace(new RegExp(`\\b${m[1]}[ -]${m[2] ? `${m[2].replace(/\./g, "\\.")} ?` : ""}`, "g"), "")
    .trim();
  return { code: Number(m[1]), ...(m[2] ? { enhanced: m[2] } : {}), text };
}

function header(headers: { key: string; value: string }[], name: string): string | undefined {
  return headers.find((h) => h.key === name)?.value;
}

function parseDsn(content: string): { reportingMta?: string; recipients: ReportedRecipient[] } {
  const groups = parseFieldGroups(content);
  const perMessage = groups.find((g) => g.has("reporting-mta") && !g.has("final-recipient"));
  const recipients: ReportedRecipient[] = [];
  for (const g of groups) {
    const address = typedAddress(g.get("final-recipient")) ?? typedAddress(g.get("original-recipient"));
    if (!address) continue;
    const diagnostic = g.get("diagnostic-code");
    const status = g.get("status") ? uncomment(g.get("status")!).split(" ")[0] : undefined;
    const d = diagnostic ? parseDiagnostic(diagnostic) : undefined;
    const r: ReportedRecipient = {
      address,
      action: uncomment(g.get("action") ?? "failed").toLowerCase(),
      text: d?.text ?? "",
    };
    const orig = typedAddress(g.get("original-recipient"));
    if (orig && orig !== address) r.originalRecipient = orig;
    if (status && /^[245]\.\d{1,3}\.\d{1,3}$/.test(status)) r.status = status;
    if (diagnostic)
      r.diagnostic = diagnostic
        .replace(/^\s*[A-Za-z0-9-]+\s*;\s*/, "")
        .replace(/\s+/g, " ")
        .trim();
    if (d?.code !== undefined) r.code = d.code;
    const remote = typedAddress(g.get("remote-mta"));
    if (remote) r.remoteMta = remote;
    recipients.push(r);
  }
  const out: { reportingMta?: string; recipients: ReportedRecipient[] } = { recipients };
  const rm = typedAddress(perMessage?.get("reporting-mta"));
  if (rm) out.reportingMta = rm;
  return out;
}

function parseFeedback(content: string): FeedbackReport {
  const fields = new Map<string, string[]>();
  for (const g of parseFieldGroups(content))
    for (const [k, v] of g) fields.set(k, [...(fields.get(k) ?? []), v]);
  // Original-Rcpt-To may repeat (RFC 5965 §3.2); parseFieldGroups keeps the first per group, so
  // read the repeats from the text as well.
  const rcpts = [...content.matchAll(/^original-rcpt-to[ \t]*:[ \t]*(.+)$/gim)].map(
    (m) => typedAddress(m[1]!)!,
  );
  const one = (k: string) => fields.get(k)?.[0];
  const f: FeedbackReport = {
    feedbackType: uncomment(one("feedback-type") ?? "other").toLowerCase(),
    originalRcptTo: [...new Set(rcpts.filter(Boolean))],
  };
  if (one("user-agent")) f.userAgent = one("user-agent")!;
  const omf = typedAddress(one("original-mail-from"));
  if (omf) f.originalMailFrom = omf;
  const rm = typedAddress(one("reporting-mta"));
  if (rm) f.reportingMta = rm;
  if (one("source-ip")) f.sourceIp = uncomment(one("source-ip")!);
  if (one("arrival-date")) f.arrivalDate = one("arrival-date")!;
  return f;
}

// Bounded repeats: a long run of letters must not make the search quadratic.
const ADDRESS_RE =
  /<?([A-Za-z0-9._%+=!#$&'*/?^`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8})>?/g;
/** A bounce notice says what failed near its top; beyond this much text is the returned message. */
const HEURISTIC_TEXT_BYTES = 64 * 1024;

/**
 * A bounce without a delivery-status part: the first SMTP reply in its text, and the addresses it
 * names (the failed recipients of qmail's "<addr>:" paragraphs and Exim's indented list come first).
 */
function parseHeuristic(text: string, subject: string): ReportedRecipient[] {
  const body = text.slice(0, HEURISTIC_TEXT_BYTES).replace(/\r\n?/g, "\n");
  const candidates: string[] = [];
  for (const m of body.matchAll(/^<([^<>\s]+@[^<>\s]+)>:\s*$/gm)) candidates.push(m[1]!.toLowerCase()); // qmail
  for (const m of body.matchAll(/^ {2}([^\s<>@]+@[^\s<>@]+)\s*$/gm)) candidates.push(m[1]!.toLowerCase()); // Exim
  for (const m of body.matchAll(ADDRESS_RE)) candidates.push(m[1]!.toLowerCase());
  const unique = [...new Set(candidates)].filter((a) => !/^(mailer-daemon|postmaster)@/.test(a));
  const flat = body.replace(/\s+/g, " ");
  let code: number | undefined;
  let enhanced: string | undefined;
  let rest = "";
  const m = /\b([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3})\s+)?([^\n]{0,300})/.exec(flat);
  if (m) {
    code = Number(m[1]);
    enhanced = m[2];
    rest = m[3]!.trim();
  } else {
    // qmail's "(#5.1.1)", Exchange's "#550 5.1.1" and bare enhanced codes.
    const e = /\(?#([45]\.\d{1,3}\.\d{1,3})\)?/.exec(flat) ?? /\b([45]\.\d{1,3}\.\d{1,3})\b/.exec(flat);
    if (e) enhanced = e[1];
  }
  const delayed = /\b(delay(ed)?|warning|still trying|will retry|not yet been delivered)\b/i.test(subject);
  const transient = code !== undefined ? code < 500 : enhanced ? enhanced.startsWith("4") : delayed;
  // The paragraph that names the failure, for classification when there is no reply line.
  const reason =
    rest ||
    (/(sorry[^.]*\.|user unknown[^.]*|no such [^.]*|mailbox[^.]*(full|unavailable|not found)[^.]*|does not exist[^.]*|quota[^.]*)/i.exec(
      flat,
    )?.[0] ??
      subject);
  return unique.map((address) => {
    const r: ReportedRecipient = { address, action: transient ? "delayed" : "failed", text: reason };
    if (code !== undefined) r.code = code;
    if (enhanced) r.status = enhanced;
    return r;
  });
}

/** Parses a received message that may be a bounce or a complaint. Never throws for bad input. */
export async function parseReport(raw: Uint8Array | string): Promise<ParsedReport> {
  let email: Awaited<ReturnType<typeof PostalMime.parse>>;
  try {
    email = await PostalMime.parse(raw, { attachmentEncoding: "utf8" } as never);
  } catch {
    return { kind: "unknown", recipients: [] };
  }
  const subject = email.subject ?? "";
  const out: ParsedReport = { kind: "unknown", recipients: [], subject };
  if (email.from?.address) out.from = email.from.address.toLowerCase();
  const parts = email.attachments.map((a) => ({
    type: a.mimeType.toLowerCase(),
    content: typeof a.content === "string" ? a.content : new TextDecoder().decode(a.content as ArrayBuffer),
  }));
  const original = parts.find((p) => p.type === "message/rfc822" || p.type === "text/rfc822-headers");
  if (original) out.originalHeaders = headerSectionOfText(original.content);

  const feedback = parts.find((p) => p.type === "message/feedback-report");
  if (feedback) {
    out.kind = "arf";
    out.feedback = parseFeedback(feedback.content);
    return out;
  }
  const status = parts.find(
    (p) => p.type === "message/delivery-status" || p.type === "message/global-delivery-status",
  );
  if (status) {
    const dsn = parseDsn(status.content);
    out.kind = "dsn";
    out.recipients = dsn.recipients;
    if (dsn.reportingMta) out.reportingMta = dsn.reportingMta;
    return out;
  }
  // RFC 3834 §5: Auto-Submitted: auto-replied marks vacation notices and the like; they are not bounces.
  const auto = header(email.headers, "auto-submitted")?.toLowerCase() ?? "";
  const fromDaemon =
    /^(mailer-daemon|postmaster|mail-daemon)@/i.test(out.from ?? "") || (out.from ?? "") === "";
  // Bounces from a mailer daemon carry it too (Postfix, Exim): only a person's address is an auto-reply.
  if (
    !fromDaemon &&
    (auto.startsWith("auto-replied") ||
      header(email.headers, "x-autoreply") !== undefined ||
      /\b(out of (the )?office|auto(matic)?[ -]?reply|vacation|abwesenheit)\b/i.test(subject))
  ) {
    out.kind = "auto-reply";
    return out;
  }
  const text = `${email.text ?? ""}\n${parts
    .filter((p) => p.type.startsWith("text/") && p.type !== "text/rfc822-headers")
    .map((p) => p.content)
    .join("\n")}`;
  const recipients = parseHeuristic(text, subject);
  if (
    recipients.length > 0 &&
    (fromDaemon || /undeliver|failure|returned|delivery (status|problem)|bounce/i.test(subject))
  ) {
    out.kind = "heuristic";
    out.recipients = recipients;
  }
  return out;
}
