/**
 * Content-transfer-encodings (RFC 2045 §6.7, §6.8) over "octet strings": JS strings in which each
 * character is one octet (latin1), so that offsets are byte offsets and any byte survives.
 *
 * Owns: quoted-printable encoding and decoding, base64 line wrapping.
 * Invariant: every line these encoders produce is at most 76 characters, CRLF excluded, and 7-bit.
 */

const HEX = "0123456789ABCDEF";

function hexOctet(c: number): string {
  return `=${HEX[c >> 4]}${HEX[c & 15]}`;
}

/**
 * Quoted-printable of octets whose line breaks are CRLF (they stay hard line breaks); soft breaks
 * (`=` CRLF) keep each line within 76 characters. Space and tab are kept except at the end of a
 * line, where transport could strip them (rule 3).
 */
export function encodeQuotedPrintable(octets: string): string {
  const lines = octets.split("\r\n");
  const out: string[] = [];
  for (const line of lines) {
    let enc = "";
    let col = 0;
    for (let i = 0; i < line.length; i++) {
      const c = line.charCodeAt(i);
      const last = i === line.length - 1;
      const piece =
        (c >= 33 && c <= 126 && c !== 61) || ((c === 32 || c === 9) && !last) ? line[i]! : hexOctet(c & 0xff);
      if (col + piece.length > 75) {
        enc += "=\r\n";
        col = 0;
      }
      enc += piece;
      col += piece.length;
    }
    out.push(enc);
  }
  return out.join("\r\n");
}

/**
 * Decodes quoted-printable into octets: soft line breaks are removed, `=XX` becomes its octet, and
 * whitespace at the end of an encoded line is dropped (rule 3: it may have been added in transport).
 * A malformed `=` sequence is kept as it is (RFC 2045 §6.7 note 1: be robust).
 */
export function decodeQuotedPrintable(text: string): string {
  const lines = text.split("\r\n");
  let out = "";
  for (let li = 0; li < lines.length; li++) {
    const line = lines[li]!.replace(/[ \t]+$/, "");
    let soft = false;
    for (let i = 0; i < line.length; i++) {
      const ch = line[i]!;
      if (ch !== "=") {
        out += ch;
        continue;
      }
      if (i === line.length - 1) {
        soft = true;
        break;
      }
      const hex = line.slice(i + 1, i + 3);
      if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
        out += String.fromCharCode(Number.parseInt(hex, 16));
        i += 2;
      } else out += ch;
    }
    if (!soft && li < lines.length - 1) out += "\r\n";
  }
  return out;
}

/** Base64 of octets, in lines of 76 characters joined by CRLF. */
export function encodeBase64(octets: string): string {
  return wrapBase64(Buffer.from(octets, "latin1").toString("base64"));
}

/** Re-wraps base64 text (whatever its line lengths) into lines of 76: decoders ignore line breaks. */
export function wrapBase64(text: string): string {
  const flat = text.replace(/[^A-Za-z0-9+/=]/g, "");
  const out: string[] = [];
  for (let i = 0; i < flat.length; i += 76) out.push(flat.slice(i, i + 76));
  return out.join("\r\n");
}
