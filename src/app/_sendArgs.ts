/**
 * `mta send` / `sendmail` command line: sendmail's getopt-style flags (glued or separate values,
 * grouped letters such as `-ti`) plus our long options.
 *
 * Owns: argv → `SendArgs`; which positional arguments are recipients and which are batch inputs.
 * Does not own: reading input, sending (send.ts).
 * Invariant: a flag that would change what is sent and that we do not implement (`-bs`, `-q`, ...) is a
 * usage error, never silently ignored; flags that only tune sendmail's own queue (`-oem`, `-odb`, ...)
 * are accepted and ignored.
 */
import { existsSync, statSync } from "node:fs";
import ms from "ms";
import { UsageError } from "../lib/index.ts";

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
  /** Files or directories: batch mode. */
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

const INPUT_EXT = /\.(eml|mbox|mbx|jsonl|ndjson|json)$/i;

function duration(name: string, text: string): number {
  const v = /^\d+$/.test(text) ? Number(text) * 1000 : ms(text as ms.StringValue);
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0)
    throw new UsageError(`${name} must be a duration such as 30s or 5m, not "${text}"`);
  return v;
}

/** Whether a positional argument names a batch input rather than a recipient. */
export function isInputPath(arg: string): boolean {
  if (arg.includes("@")) return false;
  if (arg.includes("/") || INPUT_EXT.test(arg)) return true;
  try {
    return existsSync(arg) && statSync(arg).isDirectory();
  } catch {
    return false;
  }
}

export function parseSendArgs(argv: readonly string[]): SendArgs {
  const a: SendArgs = {
    extractRecipients: false,
    ignoreDots: false,
    recipients: [],
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
        case "dry-run":
          a.dryRun = true;
          break;
        case "max-time":
          a.maxTimeMs = duration("--max-time", value());
          break;
        case "lock-wait":
          a.lockWaitMs = duration("--lock-wait", value());
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
  for (const p of positional) {
    if (p === "-")
      throw new UsageError('"-" is not needed: without files the message is read from standard input');
    if (isInputPath(p)) a.inputs.push(p);
    else a.recipients.push(p);
  }
  if (a.inputs.length > 0 && a.recipients.length > 0)
    throw new UsageError(
      `give either recipients (message on standard input) or files, not both: recipients ${a.recipients.join(", ")}; files ${a.inputs.join(", ")}`,
    );
  return a;
}

function applyValue(a: SendArgs, letter: string, value: string): void {
  switch (letter) {
    case "f":
    case "r":
      a.sender = value === "<>" ? "" : value.replace(/^<(.*)>$/, "$1");
      return;
    case "F":
      a.fullName = value;
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
