/**
 * `mta send` / `sendmail` command line: sendmail's getopt-style flags (glued or separate values,
 * grouped letters such as `-ti`) plus our long options.
 *
 * Owns: argv → `SendArgs`. Every operand is a recipient, as in sendmail(1), whatever files exist in
 * the working directory; only `--batch` makes the operands input files (so `cd / && sendmail root`
 * mails root and never reads /root).
 * Does not own: reading input, sending (send.ts).
 * Invariants: a flag that would change what is sent and that we do not implement (`-bs`, `-q`, ...) is
 * a usage error, never silently ignored; flags that only tune sendmail's own queue (`-oem`, `-odb`,
 * ...) are accepted and ignored; -F never carries CR or LF into a header.
 */
import { durationArg, UsageError } from "../lib/index.ts";
import { cleanDisplayName } from "../message/index.ts";

export interface SendArgs {
  /** -t: recipients from To/Cc/Bcc (added to those on the command line); Bcc removed. */
  extractRecipients: boolean;
  /** -f / -r: envelope sender. */
  sender?: string;
  /** -F: display name for a From header we add. */
  fullName?: string;
  /** -i / -oi: a line with a single dot does not end standard input. */
  ignoreDots: boolean;
  /** -B: body type attribute. */
  bodyType?: "7BIT" | "8BITMIME";
  recipients: string[];
  /** --batch: the operands are files or directories to send. */
  batch: boolean;
  /** With --batch: the files or directories. */
  inputs: string[];
  config?: string;
  batchId?: string;
  dryRun: boolean;
  maxTimeMs: number;
  lockWaitMs: number;
  json: boolean;
  verbose: boolean;
  /** undefined: a progress bar when stderr is a terminal. */
  progress?: boolean;
  help: boolean;
}

export const DEFAULT_MAX_TIME_MS = 5 * 60_000;
export const DEFAULT_LOCK_WAIT_MS = 2 * 60_000;

/** Letters that take a value (glued `-fuser@x` or in the next argument). */
const WITH_VALUE = new Set(["f", "r", "F", "B", "o", "O", "N", "R", "V", "X", "L", "h", "C", "b", "p", "q"]);
/** Letters accepted and ignored without a value. */
const IGNORED_FLAGS = new Set(["m", "n", "U", "G", "e", "s"]);

export function parseSendArgs(argv: readonly string[]): SendArgs {
  const a: SendArgs = {
    extractRecipients: false,
    ignoreDots: false,
    recipients: [],
    batch: false,
    inputs: [],
    dryRun: false,
    maxTimeMs: DEFAULT_MAX_TIME_MS,
    lockWaitMs: DEFAULT_LOCK_WAIT_MS,
    json: false,
    verbose: false,
    help: false,
  };
  const positional: string[] = [];
  let i = 0;
  const next = (flag: string): string => {
    const v = argv[++i];
    if (v === undefined) throw new UsageError(`${flag} needs a value`);
    return v;
  };
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
      const value = () => (eq > 0 ? arg.slice(eq + 1) : next(`--${name}`));
      switch (name) {
        case "config":
          a.config = value();
          break;
        case "batch-id": {
          const id = value();
          if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(id))
            throw new UsageError(
              `--batch-id may hold letters, digits, ".", "_" and "-" (at most 128), not "${id}"`,
            );
          a.batchId = id;
          break;
        }
        case "batch":
          if (eq > 0) throw new UsageError("--batch takes no value: the files follow it as operands");
          a.batch = true;
          break;
        case "dry-run":
          a.dryRun = true;
          break;
        case "max-time":
          a.maxTimeMs = durationArg("--max-time", value());
          break;
        case "lock-wait":
          a.lockWaitMs = durationArg("--lock-wait", value());
          break;
        case "json":
          a.json = true;
          break;
        case "verbose":
          a.verbose = true;
          break;
        case "progress":
          a.progress = true;
          break;
        case "no-progress":
          a.progress = false;
          break;
        case "help":
          a.help = true;
          break;
        default:
          throw new UsageError(`unknown option --${name}`);
      }
      continue;
    }
    if (!arg.startsWith("-") || arg === "-") {
      positional.push(arg);
      continue;
    }
    // getopt: letters may be grouped; a letter with a value takes the rest of the word or the next one.
    for (let j = 1; j < arg.length; j++) {
      const letter = arg[j]!;
      if (WITH_VALUE.has(letter)) {
        const glued = arg.slice(j + 1);
        const value = glued !== "" ? glued : next(`-${letter}`);
        applyValue(a, letter, value);
        break;
      }
      if (letter === "t") a.extractRecipients = true;
      else if (letter === "i") a.ignoreDots = true;
      else if (letter === "v") a.verbose = true;
      else if (letter === "c") {
        const glued = arg.slice(j + 1);
        a.config = glued !== "" ? glued : next("-c");
        break;
      } else if (IGNORED_FLAGS.has(letter)) continue;
      else throw new UsageError(`unknown option -${letter}`);
    }
  }
  if (a.batch) {
    if (positional.length === 0) throw new UsageError("--batch needs files or directories to send");
    if (positional.includes("-"))
      throw new UsageError(
        '"-" is not an input of --batch: without --batch the message is read from standard input',
      );
    if (a.extractRecipients)
      throw new UsageError("-t is for a message on standard input; batch files always name their recipients");
    a.inputs = positional;
  } else a.recipients = positional;
  return a;
}

function applyValue(a: SendArgs, letter: string, value: string): void {
  switch (letter) {
    case "f":
    case "r":
      a.sender = value === "<>" ? "" : value.replace(/^<(.*)>$/, "$1");
      return;
    case "F":
      // A newline in a name would start a new header field (a Bcc:, say): never let one through.
      a.fullName = cleanDisplayName(value);
      return;
    case "B": {
      const v = value.toUpperCase();
      if (v !== "7BIT" && v !== "8BITMIME")
        throw new UsageError(`-B must be 7BIT or 8BITMIME, not "${value}"`);
      a.bodyType = v;
      return;
    }
    case "o":
    case "O":
      // -oi is sendmail's long form of -i; every other -oXvalue tunes sendmail's own queue.
      if (value === "i" || value.toLowerCase() === "ignoredots" || value.toLowerCase() === "ignoredots=true")
        a.ignoreDots = true;
      return;
    case "b":
      if (value !== "m")
        throw new UsageError(`-b${value} is not supported: mta send only submits mail (-bm)`);
      return;
    case "C":
      a.config = value;
      return;
    case "q":
    case "p":
      throw new UsageError(`-${letter}${value} is not supported: use \`mta queue\``);
    default:
      // -N dsn, -R ret, -V envid, -X log, -L tag, -h hops: accepted for compatibility, not used.
      return;
  }
}
