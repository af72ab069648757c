/**
 * One pass over a message's octets: what kind of content it is, for choosing how it may travel.
 *
 * Owns: `scanContent` and the line limit (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6: 998 octets, CRLF
 * excluded).
 */

import { hasField, headerText } from "../message/index.ts";

/** RFC 5322 §2.1.1: a line is at most 998 characters, the CRLF excluded. */
export const MAX_LINE_OCTETS = 998;

export interface ContentScan {
  /** An octet above 127 anywhere (RFC 6152: needs BODY=8BITMIME). */
  eightBit: boolean;
  /** NUL, which 7bit and 8bit data exclude (RFC 2045 §2.7, §2.8): only BINARYMIME may carry it. */
  nul: boolean;
  /** A CR not followed by LF, or an LF not preceded by CR (RFC 5322 §2.3: only CRLF). */
  bareNewline: boolean;
  /** A line longer than `MAX_LINE_OCTETS`. */
  longLine: boolean;
}

export function scanContent(m: Uint8Array): ContentScan {
  let eightBit = false;
  let nul = false;
  let bareNewline = false;
  let longLine = false;
  let lineStart = 0;
  const n = m.length;
  for (let i = 0; i < n; i++) {
    const b = m[i]!;
    if (b >= 0x80) eightBit = true;
    else if (b === 10) {
      if (i === 0 || m[i - 1] !== 13) bareNewline = true;
      const len = i - lineStart - (i > 0 && m[i - 1] === 13 ? 1 : 0);
      if (len > MAX_LINE_OCTETS) longLine = true;
      lineStart = i + 1;
    } else if (b === 13) {
      if (m[i + 1] !== 10) bareNewline = true;
    } else if (b === 0) nul = true;
  }
  if (n - lineStart > MAX_LINE_OCTETS) longLine = true;
  return { eightBit, nul, bareNewline, longLine };
}

/**
 * Whether the header section (up to the first empty line) has a DKIM or ARC message signature: a
 * re-encoding would break it. Asked only when a conversion is about to happen.
 */
export function isSigned(m: Uint8Array): boolean {
  const header = headerText(m);
  return hasField(header, "dkim-signature") || hasField(header, "arc-message-signature");
}
