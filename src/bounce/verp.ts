/**
 * VERP return paths: an envelope sender per message and recipient on the bounce domain, so that a
 * bounce or complaint that comes back later names the message and recipient it is about.
 *
 * Owns: encoding and decoding the local part, its tag, and finding our addresses in message text.
 * Does not own: which mail gets one (app/), parsing bounces (parse.ts).
 *
 * Local part (RFC 5321 §4.5.3.1.1: at most 64 octets), all lower case because some relays fold case:
 *
 *   b-<id>-<tag>-<recipient local part>=<recipient domain>     when it fits in 64 octets
 *   b-<id>-<tag>                                               otherwise
 *
 * <id> is the message's queue id (14 characters of Crockford base32, case-insensitive by design);
 * <tag> is 8 base32 characters, the first 40 bits of HMAC-SHA256(secret, id LF recipient) with the
 * recipient lower-cased. The tag binds id and recipient together: without the secret nobody can make a
 * return path that names a recipient, so a forged "bounce" cannot put arbitrary addresses on the
 * suppression list. The short form carries no recipient: the bounce must name it (Final-Recipient,
 * To:, the text), and only a candidate whose tag matches is taken.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const MAX_LOCAL_PART = 64;
const ID_RE = /^[0-9a-hjkmnp-tv-z]{14}$/;

function base32(bytes: Uint8Array, chars: number): string {
  let bits = 0;
  let value = 0;
  let out = "";
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5 && out.length < chars) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out;
}

export function verpTag(secret: string, id: string, recipient: string): string {
  const mac = createHmac("sha256", secret).update(`${id.toUpperCase()}\n${recipient.toLowerCase()}`).digest();
  return base32(mac.subarray(0, 5), 8);
}

/** The return path for (id, recipient) on `domain`. */
export function verpAddress(secret: string, domain: string, id: string, recipient: string): string {
  const lower = recipient.toLowerCase();
  const at = lower.lastIndexOf("@");
  const head = `b-${id.toLowerCase()}-${verpTag(secret, id, lower)}`;
  const full = `${head}-${lower.slice(0, at)}=${lower.slice(at + 1)}`;
  // Only printable ASCII without specials keeps the local part a dot-atom that every relay accepts.
  const atomSafe =
    /^[a-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(full) && !full.includes("..") && !full.endsWith(".");
  return `${atomSafe && Buffer.byteLength(full) <= MAX_LOCAL_PART ? full : head}@${domain}`;
}

export interface VerpToken {
  /** Queue id, upper case as the spool writes it. */
  id: string;
  tag: string;
  /** The recipient, when the long form carried it (already checked against the tag). */
  recipient?: string;
}

/**
 * Reads a return path of ours: the local part of an address at `domain` (any case). Returns undefined
 * for anything else, and for a long form whose recipient does not match its tag (tampered).
 */
export function parseVerp(secret: string, domain: string, address: string): VerpToken | undefined {
  const a = address.trim().replace(/^<|>$/g, "").toLowerCase();
  const at = a.lastIndexOf("@");
  if (at < 0 || a.slice(at + 1).replace(/\.$/, "") !== domain.toLowerCase()) return undefined;
  const m = /^b-([0-9a-z]{14})-([0-9a-z]{8})(?:-(.+)=([^=]+))?$/.exec(a.slice(0, at));
  if (!m || !ID_RE.test(m[1]!)) return undefined;
  const id = m[1]!.toUpperCase();
  const tag = m[2]!;
  if (m[3] === undefined) return { id, tag };
  const recipient = `${m[3]}@${m[4]}`;
  return tagMatches(secret, id, tag, recipient) ? { id, tag, recipient } : undefined;
}

export function tagMatches(secret: string, id: string, tag: string, recipient: string): boolean {
  const want = Buffer.from(verpTag(secret, id, recipient));
  const got = Buffer.from(tag.toLowerCase());
  return want.length === got.length && timingSafeEqual(want, got);
}

/** Every address of ours at `domain` that occurs in `text` (headers of a returned message, say). */
export function findVerpAddresses(domain: string, text: string): string[] {
  const d = domain.toLowerCase().replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const re = new RegExp(`b-[0-9a-z]{14}-[0-9a-z]{8}(?:-[a-z0-9!#$%&'*+/=?^_\`{|}~.-]+)?@${d}\\b`, "gi");
  return [...new Set([...text.matchAll(re)].map((x) => x[0].toLowerCase()))];
}
