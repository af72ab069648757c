/**
 * Command lines (RFC 5321 §4.1.1): verb and argument.
 *
 * Owns: `parseCommand`, the list of verbs we know, `parseMailArg`/`parseRcptArg` (the `FROM:`/`TO:` prefix).
 * Invariant: the verb is upper-cased and at most 16 characters; the argument keeps its case.
 */

export const VERBS = [
  "EHLO",
  "HELO",
  "MAIL",
  "RCPT",
  "DATA",
  "BDAT",
  "RSET",
  "NOOP",
  "QUIT",
  "VRFY",
  "EXPN",
  "HELP",
  "STARTTLS",
  "AUTH",
] as const;
export type Verb = (typeof VERBS)[number];

export interface Command {
  /** The verb upper-cased (may be one we do not know). */
  verb: string;
  /** Everything after the first space, leading spaces removed, trailing spaces kept off. */
  arg: string;
}

/** Splits a command line (without its CRLF). */
export function parseCommand(line: string): Command {
  const m = /^([A-Za-z0-9]{1,16})(?:[ \t]+(.*?))?[ \t]*$/s.exec(line);
  if (!m) return { verb: "", arg: line };
  return { verb: m[1]!.toUpperCase(), arg: m[2] ?? "" };
}

export function isVerb(verb: string): verb is Verb {
  return (VERBS as readonly string[]).includes(verb);
}

/**
 * The argument of MAIL must start with `FROM:` and RCPT with `TO:` (case-insensitive); returns the text
 * after the colon, or undefined.
 */
export function afterPrefix(arg: string, prefix: "FROM:" | "TO:"): string | undefined {
  if (arg.length < prefix.length || arg.slice(0, prefix.length).toUpperCase() !== prefix) return undefined;
  return arg.slice(prefix.length);
}
