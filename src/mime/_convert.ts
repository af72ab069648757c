/**
 * Making a message's content fit what a line-structured transport may carry, without losing a byte
 * of what it says.
 *
 * Owns: the MIME walk (RFC 2045/2046: header fields, multipart bodies and their boundaries, nested
 * message/rfc822), folding long header lines (RFC 5322 §2.2.3), re-encoding a leaf part whose lines
 * are too long or, for a 7-bit next hop, whose octets are 8-bit (quoted-printable for text, base64
 * for the rest), and the header fields that say so (Content-Transfer-Encoding, MIME-Version).
 * Does not own: when to convert (app/ before signing, deliverer/ per next hop), the scan (_scan.ts).
 * Invariants: a converted message decodes to the same content (folding is undone by unfolding, QP and
 * base64 by decoding); every line of the result is at most 998 octets; with `sevenBit`, no octet above
 * 127 is left; a part that is already fine is copied unchanged, byte for byte.
 *
 * Messages are handled as "octet strings" (latin1: one character per byte), so offsets are byte
 * offsets and no byte sequence can be damaged by decoding.
 */
import { decodeQuotedPrintable, encodeBase64, encodeQuotedPrintable, wrapBase64 } from "./_codec.ts";
import { MAX_LINE_OCTETS } from "./_scan.ts";

export type ConversionProblem =
  /** A header line longer than 998 octets with no whitespace to fold at. */
  | "unfoldable-header"
  /** 8-bit octets in a header field: they cannot be re-encoded for a 7-bit next hop. */
  | "eight-bit-header"
  /** A multipart body whose boundary never occurs: its parts cannot be found to re-encode them. */
  | "malformed-multipart";

export class ConversionError extends Error {
  constructor(
    readonly problem: ConversionProblem,
    message: string,
  ) {
    super(message);
  }
}

interface Ctx {
  sevenBit: boolean;
  changed: boolean;
}

interface Field {
  /** The field as written, folded lines and their CRLFs included, without the final CRLF. */
  raw: string;
  /** Lower-case name. */
  name: string;
  /** Unfolded value. */
  value: string;
}

const LONG_LINE = new RegExp(`[^\\r\\n]{${MAX_LINE_OCTETS + 1}}`);
const EIGHT_BIT = /[\x80-\xff]/;

function hasLongLine(text: string): boolean {
  return LONG_LINE.test(text);
}

/** Replaces every CR or LF that is not part of a CRLF with CRLF (RFC 5322 §2.3). */
export function normalizeNewlines(octets: string): string {
  return octets.replace(/\r\n|\r|\n/g, "\r\n");
}

/**
 * Converts a whole message: `sevenBit` also re-encodes 8-bit content (for a next hop without
 * 8BITMIME). Throws ConversionError when the content cannot be made to fit.
 */
export function convertMessage(
  octets: string,
  opts: { sevenBit: boolean },
): { text: string; changed: boolean } {
  const ctx: Ctx = { sevenBit: opts.sevenBit, changed: false };
  const text = entity(octets, ctx, "text/plain", true);
  return { text, changed: ctx.changed };
}

/** Splits an entity into its header section (with its final CRLF), the separator and the body. */
function splitEntity(text: string): { header: string; sep: string; body: string } {
  if (text.startsWith("\r\n")) return { header: "", sep: "\r\n", body: text.slice(2) };
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) {
    // No empty line: all header (a message without a body), unless it does not look like one.
    return /^[!-9;-~]+[ \t]*:/.test(text)
      ? { header: text, sep: "", body: "" }
      : { header: "", sep: "", body: text };
  }
  return { header: text.slice(0, end + 2), sep: "\r\n", body: text.slice(end + 4) };
}

function parseFields(header: string): Field[] {
  const fields: Field[] = [];
  if (!header) return fields;
  const lines = header.slice(0, header.endsWith("\r\n") ? -2 : undefined).split("\r\n");
  for (const line of lines) {
    const last = fields[fields.length - 1];
    if (last && (line.startsWith(" ") || line.startsWith("\t") || !line.includes(":"))) {
      last.raw += `\r\n${line}`;
      last.value += line;
      continue;
    }
    const colon = line.indexOf(":");
    fields.push({
      raw: line,
      name: line.slice(0, colon).trim().toLowerCase(),
      value: line.slice(colon + 1),
    });
  }
  return fields;
}

function joinFields(fields: Field[]): string {
  return fields.length === 0 ? "" : `${fields.map((f) => f.raw).join("\r\n")}\r\n`;
}

/**
 * Where a structured field may take whitespace that it does not have (RFC 5322 §3.2.2: CFWS is allowed
 * around the items of these lists), so that a long line without any can still be folded: after the
 * comma between addresses, between two msg-ids, after the semicolon before a MIME parameter. What
 * the field means is unchanged; its bytes are not, which is why this runs before DKIM signing only.
 */
const STRUCTURED: Record<string, RegExp> = {
  from: /,/g,
  sender: /,/g,
  "reply-to": /,/g,
  to: /,/g,
  cc: /,/g,
  bcc: /,/g,
  "resent-from": /,/g,
  "resent-sender": /,/g,
  "resent-to": /,/g,
  "resent-cc": /,/g,
  "resent-bcc": /,/g,
  references: />(?=<)/g,
  "in-reply-to": />(?=<)/g,
  "content-type": /;/g,
  "content-disposition": /;/g,
};

/**
 * Folds one physical line longer than 998 octets at its last space or tab within the limit (RFC 5322
 * §2.2.3: folding inserts CRLF before whitespace; unfolding removes it, so the value is unchanged).
 * A structured field with no whitespace to fold at gets a space inserted where its syntax allows one.
 */
function foldLine(line: string, name: string): string {
  const out: string[] = [];
  let rest = line;
  while (rest.length > MAX_LINE_OCTETS) {
    let at = -1;
    for (let i = MAX_LINE_OCTETS; i > 0; i--) {
      const c = rest[i];
      if ((c === " " || c === "\t") && /[^ \t]/.test(rest.slice(0, i))) {
        at = i;
        break;
      }
    }
    if (at < 0) {
      const sep = STRUCTURED[name];
      let after = -1;
      if (sep) {
        const head = rest.slice(0, MAX_LINE_OCTETS - 1);
        for (const m of head.matchAll(sep)) if (m.index! > 0) after = m.index! + 1;
      }
      if (after < 0)
        throw new ConversionError(
          "unfoldable-header",
          `a header line of ${line.length} octets has no whitespace to fold it at within ${MAX_LINE_OCTETS}`,
        );
      out.push(rest.slice(0, after));
      rest = ` ${rest.slice(after)}`;
      continue;
    }
    out.push(rest.slice(0, at));
    rest = rest.slice(at);
  }
  out.push(rest);
  return out.join("\r\n");
}

function fixFields(fields: Field[], ctx: Ctx): void {
  for (const f of fields) {
    if (ctx.sevenBit && EIGHT_BIT.test(f.raw))
      throw new ConversionError(
        "eight-bit-header",
        `the ${f.name || "header"} field holds 8-bit octets, which cannot be converted to 7-bit`,
      );
    if (hasLongLine(f.raw)) {
      f.raw = f.raw
        .split("\r\n")
        .map((l) => foldLine(l, f.name))
        .join("\r\n");
      ctx.changed = true;
    }
  }
}

function contentType(fields: Field[], fallback: string): { type: string; boundary?: string } {
  const f = fields.find((x) => x.name === "content-type");
  if (!f) return { type: fallback };
  const type = /^\s*([^\s;/]+\/[^\s;]+)/.exec(f.value)?.[1]?.toLowerCase() ?? fallback;
  const b = /;\s*boundary\s*=\s*(?:"([^"]*)"|([^\s;]+))/i.exec(f.value);
  const boundary = b ? (b[1] ?? b[2]) : undefined;
  return boundary ? { type, boundary } : { type };
}

function transferEncoding(fields: Field[]): string {
  const f = fields.find((x) => x.name === "content-transfer-encoding");
  return f ? f.value.trim().toLowerCase() : "7bit";
}

function setField(fields: Field[], name: string, value: string): void {
  const lower = name.toLowerCase();
  const raw = `${name}: ${value}`;
  const i = fields.findIndex((f) => f.name === lower);
  if (i >= 0) fields[i] = { raw, name: lower, value: ` ${value}` };
  else fields.push({ raw, name: lower, value: ` ${value}` });
}

function isUtf8(octets: string): boolean {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(octets, "latin1"));
    return true;
  } catch {
    return false;
  }
}

function entity(text: string, ctx: Ctx, defaultType: string, top: boolean): string {
  // `changed` is tracked per entity: an unchanged one is returned as the very same text.
  const outer = ctx.changed;
  ctx.changed = false;
  const { header, sep, body } = splitEntity(text);
  const fields = parseFields(header);
  fixFields(fields, ctx);
  const ct = contentType(fields, defaultType);
  let newBody = body;
  if (ct.type.startsWith("multipart/") && ct.boundary !== undefined) {
    newBody = multipart(
      body,
      ct.boundary,
      ct.type === "multipart/digest" ? "message/rfc822" : "text/plain",
      ctx,
    );
  } else if (ct.type === "message/rfc822" || ct.type === "message/global") {
    const headerChanged = ctx.changed;
    ctx.changed = false;
    newBody = entity(body, ctx, "text/plain", false);
    // RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary; once its content is 7-bit, say so.
    if (ctx.sevenBit && ctx.changed && transferEncoding(fields) !== "7bit")
      setField(fields, "Content-Transfer-Encoding", "7bit");
    ctx.changed ||= headerChanged;
  } else {
    const leaf = reencodeLeaf(body, fields, ct.type, ctx);
    if (leaf !== undefined) {
      newBody = leaf.body;
      if (top && !fields.some((f) => f.name === "mime-version")) setField(fields, "MIME-Version", "1.0");
      setField(fields, "Content-Transfer-Encoding", leaf.encoding);
      if (top && !fields.some((f) => f.name === "content-type") && EIGHT_BIT.test(body))
        // Without MIME headers the charset was never said; quoted-printable needs one to be decoded.
        setField(fields, "Content-Type", `text/plain; charset=${isUtf8(body) ? "utf-8" : "unknown-8bit"}`);
    }
  }
  const mine = ctx.changed;
  ctx.changed = outer || mine;
  if (!mine) return text;
  return `${joinFields(fields)}${sep}${newBody}`;
}

/** A leaf's new body and encoding, or undefined when it can travel as it is. */
function reencodeLeaf(
  body: string,
  fields: Field[],
  type: string,
  ctx: Ctx,
): { body: string; encoding: string } | undefined {
  const long = hasLongLine(body);
  const eight = ctx.sevenBit && EIGHT_BIT.test(body);
  if (!long && !eight) return undefined;
  ctx.changed = true;
  // A trailing CRLF is the line end of the last line, not content of its own; keep it outside.
  const trail = body.endsWith("\r\n") ? "\r\n" : "";
  const content = trail ? body.slice(0, -2) : body;
  const cte = transferEncoding(fields);
  if (cte === "base64") return { body: wrapBase64(content) + trail, encoding: "base64" };
  if (cte === "quoted-printable")
    return {
      body: encodeQuotedPrintable(decodeQuotedPrintable(content)) + trail,
      encoding: "quoted-printable",
    };
  if (type.startsWith("text/"))
    return { body: encodeQuotedPrintable(content) + trail, encoding: "quoted-printable" };
  return { body: encodeBase64(content) + trail, encoding: "base64" };
}

/**
 * The parts of a multipart body, each converted; delimiter lines, preamble and epilogue are kept.
 * RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, so a part is the lines between
 * two delimiter lines, joined by CRLF.
 */
function multipart(body: string, boundary: string, partType: string, ctx: Ctx): string {
  const dash = `--${boundary}`;
  const lines = body.split("\r\n");
  const out: string[] = [];
  let part: string[] | undefined;
  let inEpilogue = false;
  let delimiters = 0;
  const flush = () => {
    if (part && part.length > 0) out.push(entity(part.join("\r\n"), ctx, partType, false));
    part = undefined;
  };
  for (const line of lines) {
    if (!inEpilogue && line.startsWith(dash)) {
      const rest = line.slice(dash.length);
      if (/^--[ \t]*$/.test(rest)) {
        flush();
        out.push(line);
        inEpilogue = true;
        delimiters++;
        continue;
      }
      if (/^[ \t]*$/.test(rest)) {
        flush();
        out.push(line);
        part = [];
        delimiters++;
        continue;
      }
    }
    if (part) part.push(line);
    else out.push(ignorable(line, ctx));
  }
  flush();
  if (delimiters === 0 && (hasLongLine(body) || (ctx.sevenBit && EIGHT_BIT.test(body))))
    throw new ConversionError("malformed-multipart", `the multipart boundary "${boundary}" never occurs`);
  return out.join("\r\n");
}

/**
 * A preamble or epilogue line: RFC 2046 §5.1.1 says readers ignore them, so a long one is cut into
 * lines and an 8-bit octet becomes "?" for a 7-bit next hop.
 */
function ignorable(line: string, ctx: Ctx): string {
  let l = line;
  if (ctx.sevenBit && EIGHT_BIT.test(l)) {
    l = l.replace(/[\x80-\xff]/g, "?");
    ctx.changed = true;
  }
  if (l.length <= MAX_LINE_OCTETS) return l;
  ctx.changed = true;
  const pieces: string[] = [];
  for (let i = 0; i < l.length; i += MAX_LINE_OCTETS) pieces.push(l.slice(i, i + MAX_LINE_OCTETS));
  return pieces.join("\r\n");
}
