/**
 * The header section of an RFC 5322 message, found and read in one place.
 *
 * Owns: where the header ends (`headerEnd`: the first empty line, CRLF or bare LF), the header as
 * Latin-1 text (one byte per character, so offsets hold and no byte is lost), whether a field is
 * present, a field's values (unfolded, RFC 5322 §2.2.3), taking every instance of a field out of
 * the message, and whether the header holds 8-bit bytes.
 * Does not own: splitting into fields with their raw text (_fields.ts's `splitMessage`, which this
 * shares the field syntax with), DKIM canonicalization (dkim/), MIME bodies (mime/).
 * Invariant: only the header is decoded; a message of many megabytes costs one native search.
 */
import { latin1Decoder } from "../lib/index.ts";

/** How much of a message is searched for the end of its header. */
export const MAX_HEADER_BYTES = 256 * 1024;

function view(m: Uint8Array): Buffer {
  return Buffer.from(m.buffer, m.byteOffset, m.byteLength);
}

/**
 * The offset just past the header's last line end, i.e. where the empty line starts: 0 when the
 * message starts with an empty line, the whole length (up to MAX_HEADER_BYTES) when there is none.
 */
export function headerEnd(message: Uint8Array): number {
  if (message[0] === 10 || (message[0] === 13 && message[1] === 10)) return 0;
  const b = view(message.subarray(0, Math.min(message.length, MAX_HEADER_BYTES)));
  const crlf = b.indexOf("\n\r\n");
  const lf = b.indexOf("\n\n");
  const at = crlf < 0 ? lf : lf < 0 ? crlf : Math.min(crlf, lf);
  return at < 0 ? b.length : at + 1;
}

/**
 * The header section of a message already held as text (e.g. a returned message/rfc822 part), with
 * LF line ends: up to and including the last header line's LF; all of it when there is no empty line.
 */
export function headerSectionOfText(message: string): string {
  const t = message.replace(/\r\n?/g, "\n");
  const end = t.indexOf("\n\n");
  return end < 0 ? t : t.slice(0, end + 1);
}

/** The header section as Latin-1 text (without the empty line). */
export function headerText(message: Uint8Array): string {
  return latin1Decoder.decode(message.subarray(0, headerEnd(message)));
}

const FIELD = (name: string) =>
  new RegExp(
    `(^|\\n)(${name.replace(/[-[\]{}()*+?.,\\^$|#\s]/g, "\\$&")}[ \\t]*:([^\\n]*\\n?(?:[ \\t][^\\n]*\\n?)*))`,
    "gi",
  );

/** The unfolded, trimmed values of every field called `name` (case-insensitive), in order. */
export function fieldValues(header: string, name: string): string[] {
  const out: string[] = [];
  const re = FIELD(name);
  for (let m = re.exec(header); m; m = re.exec(header)) {
    out.push(m[3]!.replace(/\r?\n[ \t]*/g, " ").trim());
    re.lastIndex = m.index + m[1]!.length + m[2]!.length - 1;
  }
  return out;
}

/** Whether the header has a field called `name`. */
export function hasField(header: string, name: string): boolean {
  return FIELD(name).test(header);
}

/**
 * Removes every `name` field (with its folded lines) from the header and returns the first one's
 * value; the message is returned unchanged when there is none.
 */
export function takeField(message: Uint8Array, name: string): { message: Uint8Array; value?: string } {
  const header = headerText(message);
  if (!hasField(header, name)) return { message };
  const re = FIELD(name);
  let value: string | undefined;
  const cuts: [number, number][] = [];
  for (let m = re.exec(header); m; m = re.exec(header)) {
    const start = m.index + m[1]!.length;
    value ??= m[3]!.replace(/\r?\n[ \t]*/g, " ").trim();
    cuts.push([start, start + m[2]!.length]);
    re.lastIndex = start + m[2]!.length - 1;
  }
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const [a, b] of cuts) {
    parts.push(message.subarray(at, a));
    at = b;
  }
  parts.push(message.subarray(at));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return value ? { message: out, value } : { message: out };
}

/** Whether the header section holds a byte over 0x7f (UTF-8 header text: RFC 6532). */
export function headerHasEightBit(message: Uint8Array): boolean {
  const end = headerEnd(message);
  for (let i = 0; i < end; i++) if (message[i]! > 0x7f) return true;
  return false;
}
