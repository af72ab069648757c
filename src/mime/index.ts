/**
 * Message content as MIME sees it (RFC 2045, 2046, 5322, 6152, 3030): what kind of octets a message
 * holds, and lossless conversions so that it fits what a transport may carry.
 *
 * Owns: `scanContent` (8-bit, NUL, bare CR/LF, long lines), `prepareForStorage` (what the
 * accept pipeline does before signing and storing) and `prepareForTransport` (what the deliverer does
 * for a next hop), the quoted-printable and base64 codecs.
 * Does not own: SMTP framing (smtp/), when a conversion is allowed (the callers), DKIM (dkim/).
 *
 * Policy, in one place:
 * - Line-structured mail (7bit, 8BITMIME) is stored with CRLF line ends only, no NUL, and no line over
 *   998 octets: bare CR/LF become CRLF, a long header line is folded, a body part with long lines is
 *   re-encoded (quoted-printable for text, base64 otherwise). This happens before DKIM signing, so the
 *   signature covers what travels and verifies downstream.
 * - BINARYMIME mail is stored and sent exactly as received (it travels only by BDAT).
 * - A message that already carries a DKIM or ARC signature is never re-encoded: that would break the
 *   signature. It is refused at reception, or failed for a next hop that cannot take it as it is.
 */
import { ConversionError, type ConversionProblem, convertMessage, normalizeNewlines } from "./_convert.ts";
import { type ContentScan, isSigned, MAX_LINE_OCTETS, scanContent } from "./_scan.ts";

export { decodeQuotedPrintable, encodeBase64, encodeQuotedPrintable } from "./_codec.ts";
export { type ContentScan, MAX_LINE_OCTETS, scanContent };

export type PrepareProblem = ConversionProblem | "nul" | "signed";

export type Prepared =
  | { ok: true; message: Uint8Array; changed: boolean; scan: ContentScan }
  | { ok: false; problem: PrepareProblem; reason: string; scan: ContentScan };

function octets(m: Uint8Array): string {
  return Buffer.from(m.buffer, m.byteOffset, m.byteLength).toString("latin1");
}

function bytes(text: string): Uint8Array {
  const b = Buffer.from(text, "latin1");
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function convert(
  message: Uint8Array,
  scan: ContentScan,
  opts: { sevenBit: boolean; convert: boolean },
): Prepared {
  let text = octets(message);
  let changed = false;
  if (scan.bareNewline) {
    text = normalizeNewlines(text);
    changed = true;
  }
  if (opts.convert) {
    if (isSigned(message))
      return {
        ok: false,
        problem: "signed",
        reason: opts.sevenBit
          ? "converting it to 7-bit would break its DKIM signature"
          : `it has a line over ${MAX_LINE_OCTETS} octets and re-encoding it would break its DKIM signature`,
        scan,
      };
    try {
      const r = convertMessage(text, { sevenBit: opts.sevenBit });
      text = r.text;
      changed ||= r.changed;
    } catch (err) {
      if (err instanceof ConversionError)
        return { ok: false, problem: err.problem, reason: err.message, scan };
      throw err;
    }
  }
  return { ok: true, message: changed ? bytes(text) : message, changed, scan };
}

/**
 * Before signing and storing: line-structured mail gets CRLF line ends and lines of at most 998
 * octets; NUL is refused (RFC 2045 §2.7/§2.8); BINARYMIME content is left exactly as it is.
 */
export function prepareForStorage(message: Uint8Array, opts: { binary: boolean }): Prepared {
  const scan = scanContent(message);
  if (opts.binary) return { ok: true, message, changed: false, scan };
  if (scan.nul)
    return {
      ok: false,
      problem: "nul",
      reason: "NUL octets are not allowed in 7bit or 8bit content (send it with BDAT and BODY=BINARYMIME)",
      scan,
    };
  if (!scan.bareNewline && !scan.longLine) return { ok: true, message, changed: false, scan };
  return convert(message, scan, { sevenBit: false, convert: scan.longLine });
}

/**
 * For a next hop over DATA: lines of at most 998 octets and, with `sevenBit` (no 8BITMIME there), only
 * 7-bit octets. Stored mail already fits unless it reached the spool before these rules; content that
 * needs binary transport (NUL) is the caller's to check in `scan` first.
 */
export function prepareForTransport(
  message: Uint8Array,
  opts: { sevenBit: boolean; scan?: ContentScan },
): Prepared {
  const scan = opts.scan ?? scanContent(message);
  const reencode = scan.longLine || (opts.sevenBit && scan.eightBit);
  if (!reencode && !scan.bareNewline) return { ok: true, message, changed: false, scan };
  return convert(message, scan, { sevenBit: opts.sevenBit, convert: reencode });
}
