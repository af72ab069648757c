/**
 * RFC 5321 paths and mailboxes, with RFC 6531 (SMTPUTF8) internationalized local parts and domains.
 *
 * Owns: `parseMailbox` (a bare `local@domain`), `parsePath` (`<...>` with the rest of the command line),
 * `domainOf`.
 * Does not own: whether a non-ASCII address is allowed in a transaction (the listener checks SMTPUTF8).
 * Invariant: an accepted address contains no CR, LF, NUL, space outside quotes, or angle brackets, so it is
 * safe to write back into a command or a header.
 */
import { isIP } from "node:net";
import type { SmtpReply } from "./_reply.ts";
import { reply } from "./_reply.ts";

export interface Mailbox {
  /** The local part as written (a quoted string keeps its quotes). */
  local: string;
  /** The domain or address literal as written (`example.com`, `[192.0.2.1]`, `[IPv6:::1]`). */
  domain: string;
  /** `local@domain`. */
  address: string;
  /** Whether local part or domain has non-ASCII characters (needs SMTPUTF8). */
  utf8: boolean;
}

// RFC 5322 atext, plus any non-ASCII character (RFC 6531 §3.3: UTF8-non-ascii).
const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10FFFF}]+$/u;
// sub-domain = Let-dig [Ldh-str], or a U-label (any non-ASCII letters, RFC 6531 §3.3).
const SUBDOMAIN =
  /^[A-Za-z0-9\u0080-\u{10FFFF}](?:[A-Za-z0-9\-\u0080-\u{10FFFF}]*[A-Za-z0-9\u0080-\u{10FFFF}])?$/u;
const NON_ASCII = /[^\x00-\x7f]/;

const MAX_DOMAIN_OCTETS = 255; // RFC 5321 §4.5.3.1.2
const MAX_PATH_OCTETS = 1024; // §4.5.3.1.3 says 256; real senders (SRS, VERP) exceed it, Postfix does not enforce it

function utf8Length(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

function validLocal(local: string): boolean {
  if (local.length === 0) return false;
  if (local.startsWith('"')) {
    if (local.length < 2 || !local.endsWith('"')) return false;
    for (let i = 1; i < local.length - 1; i++) {
      const c = local.charCodeAt(i);
      if (c === 0x5c) {
        // quoted-pairSMTP = "\" %d32-126
        const n = local.charCodeAt(++i);
        if (i >= local.length - 1 || n < 32 || n > 126) return false;
      } else if (c === 0x22) return false;
      else if (c < 32 || c === 127) return false;
    }
    return true;
  }
  for (const atom of local.split(".")) if (!ATEXT.test(atom)) return false;
  return true;
}

function validDomain(domain: string): boolean {
  if (domain.length === 0 || utf8Length(domain) > MAX_DOMAIN_OCTETS) return false;
  if (domain.startsWith("[")) {
    if (!domain.endsWith("]")) return false;
    const lit = domain.slice(1, -1);
    if (isIP(lit) === 4) return true;
    if (/^IPv6:/i.test(lit)) return isIP(lit.slice(5)) === 6;
    // General-address-literal = Standardized-tag ":" 1*dcontent (RFC 5321 §4.1.3)
    return /^[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+$/.test(lit);
  }
  for (const label of domain.split(".")) if (!SUBDOMAIN.test(label)) return false;
  return true;
}

/** Index of the `@` that separates local part and domain (the last one outside quotes), or -1. */
function splitAt(text: string): number {
  if (text.startsWith('"')) {
    // Find the closing quote, honouring backslash pairs.
    for (let i = 1; i < text.length; i++) {
      const c = text[i];
      if (c === "\\") i++;
      else if (c === '"') return text[i + 1] === "@" ? i + 1 : -1;
    }
    return -1;
  }
  return text.lastIndexOf("@");
}

/** A bare mailbox `local@domain` (no angle brackets), or undefined when it is not valid RFC 5321 syntax. */
export function parseMailbox(text: string): Mailbox | undefined {
  const at = splitAt(text);
  if (at <= 0) return undefined;
  const local = text.slice(0, at);
  const domain = text.slice(at + 1);
  if (!validLocal(local) || !validDomain(domain)) return undefined;
  return { local, domain, address: text, utf8: NON_ASCII.test(text) };
}

export type PathResult =
  | { ok: true; address: string; mailbox: Mailbox | undefined; rest: string }
  | { ok: false; reply: SmtpReply };

/**
 * The argument of `MAIL FROM:` / `RCPT TO:` after the colon: `<path> [params]`. Spaces before `<` are
 * tolerated (common client bug, accepted by Postfix); a source route `<@a,@b:user@c>` is accepted and
 * ignored (RFC 5321 §4.1.1.3, §C). `allowNull` accepts `<>` (the null reverse-path) as address "".
 * `rest` is the text after `>` (ESMTP parameters), trimmed.
 */
export function parsePath(
  arg: string,
  opts: { allowNull: boolean; role: "sender" | "recipient" },
): PathResult {
  const bad = opts.role === "sender" ? "5.1.7" : "5.1.3";
  const t = arg.replace(/^\s+/, "");
  if (!t.startsWith("<")) return { ok: false, reply: reply(501, "5.5.4", "Syntax: angle brackets required") };
  // Find the closing bracket outside a quoted string.
  let end = -1;
  let quoted = false;
  for (let i = 1; i < t.length; i++) {
    const c = t[i];
    if (quoted) {
      if (c === "\\") i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === ">") {
      end = i;
      break;
    }
  }
  if (end === -1) return { ok: false, reply: reply(501, "5.5.4", "Syntax: missing closing angle bracket") };
  let inner = t.slice(1, end);
  const after = t.slice(end + 1);
  if (after.length > 0 && !/^\s/.test(after))
    return { ok: false, reply: reply(501, "5.5.4", "Syntax error") };
  const rest = after.trim();
  if (inner.length === 0) {
    if (opts.allowNull) return { ok: true, address: "", mailbox: undefined, rest };
    return { ok: false, reply: reply(501, bad, "Bad recipient address syntax") };
  }
  if (utf8Length(inner) > MAX_PATH_OCTETS) return { ok: false, reply: reply(501, bad, "Address too long") };
  if (inner.startsWith("@")) {
    // A-d-l ":" Mailbox: drop the source route.
    const colon = inner.indexOf(":");
    if (colon === -1) return { ok: false, reply: reply(501, bad, "Bad address syntax") };
    const route = inner.slice(0, colon).split(",");
    for (const hop of route)
      if (!hop.startsWith("@") || !validDomain(hop.slice(1)))
        return { ok: false, reply: reply(501, bad, "Bad address syntax") };
    inner = inner.slice(colon + 1);
  }
  const mailbox = parseMailbox(inner);
  if (!mailbox) {
    return {
      ok: false,
      reply: reply(
        501,
        bad,
        opts.role === "sender" ? "Bad sender address syntax" : "Bad recipient address syntax",
      ),
    };
  }
  return { ok: true, address: mailbox.address, mailbox, rest };
}

/** Alias kept for callers that think of it as parsing an address. */
export const parseAddress = parsePath;

/** The lowercased domain of an address; "" for the null sender or an address without `@`. */
export function domainOf(address: string): string {
  const at = splitAt(address);
  if (at === -1) return "";
  return address.slice(at + 1).toLowerCase();
}
