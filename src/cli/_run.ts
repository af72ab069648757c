/**
 * Running the citty command tree: strict arguments and one error path for every command.
 *
 * Owns: argv → (command, parsed arguments) with nothing ignored (citty's own parser drops unknown
 * flags and never checks values or operands: an unknown flag, a flag without its value, a missing or
 * an extra operand is a usage error naming it, exit 64), `--help`/`--version`, and turning anything
 * thrown into one line `mta: <what>: <why>` with its sysexits code (lib's `exitCodeOf`). An error
 * nobody expected (a bug) prints one line that says where the detail is (MTA_DEBUG=1) and exits 70:
 * a minified stack trace never reaches the terminal.
 * Does not own: what the commands do; citty still declares them and renders their usage.
 */
import { type ArgsDef, type CommandDef, renderUsage } from "citty";
import { ConfigError } from "../config/index.ts";
import {
  closestWord,
  errnoExit,
  errnoOf,
  errnoText,
  EXIT,
  exitCodeOf,
  MtaError,
  UsageError,
} from "../lib/index.ts";

/** Commands that parse their own arguments (sendmail's getopt flags): the raw argv is handed over. */
const OWN_ARGS = new WeakSet<CommandDef>();

/** Marks a command whose `run` reads `rawArgs` itself (it must refuse what it does not know). */
export function ownArguments<T extends CommandDef>(cmd: T): T {
  OWN_ARGS.add(cmd);
  return cmd;
}

/** citty colours its usage text; keep escape codes out of pipes and files. */
function plain(text: string, stream: NodeJS.WriteStream): string {
  return stream.isTTY ? text : text.replace(/\x1b\[[0-9;]*m/g, "");
}

async function resolve<T>(v: T | Promise<T> | (() => T | Promise<T>) | undefined): Promise<T | undefined> {
  return typeof v === "function" ? await (v as () => T | Promise<T>)() : await v;
}

export type ParsedArgs = Record<string, string | boolean | string[] | undefined> & { _: string[] };

/**
 * Parses `argv` against a command's declared arguments, refusing anything else: `--name value`,
 * `--name=value`, `-a value` (an alias), `--flag`/`--no-flag` for booleans, operands in declared order,
 * `--` ending the flags. A value may not start with "-" unless glued (`--reason=-x`).
 */
export function parseStrict(def: ArgsDef, argv: readonly string[]): ParsedArgs {
  const byName = new Map<string, [string, ArgsDef[string]]>();
  const positionals: [string, ArgsDef[string]][] = [];
  for (const [name, d] of Object.entries(def)) {
    if (d.type === "positional") {
      positionals.push([name, d]);
      continue;
    }
    byName.set(`--${name}`, [name, d]);
    const aliases = "alias" in d && d.alias !== undefined ? [d.alias].flat() : [];
    for (const a of aliases) byName.set(a.length === 1 ? `-${a}` : `--${a}`, [name, d]);
  }
  const out: ParsedArgs = { _: [] };
  const given = new Set<string>();
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      operands.push(arg);
      continue;
    }
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    let entry = byName.get(flag);
    let negated = false;
    if (!entry && flag.startsWith("--no-")) {
      const positive = byName.get(`--${flag.slice(5)}`);
      if (positive && positive[1].type === "boolean") {
        entry = positive;
        negated = true;
      }
    }
    if (!entry) {
      const known = [...byName.keys()].filter((k) => k.startsWith("--"));
      const hint = closestWord(flag, known);
      throw new UsageError(`unknown option ${flag}${hint ? ` (did you mean ${hint}?)` : ""}`);
    }
    const [name, d] = entry;
    if (given.has(name)) throw new UsageError(`${flag} is given twice`);
    given.add(name);
    if (d.type === "boolean") {
      if (eq > 0) throw new UsageError(`${flag} takes no value`);
      out[name] = !negated;
      continue;
    }
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next !== undefined && !(next.startsWith("-") && next !== "-")) {
        value = next;
        i++;
      }
    }
    if (value === undefined || value === "")
      throw new UsageError(`${flag} needs a value${d.valueHint ? ` (${d.valueHint})` : ""}`);
    if (d.type === "enum" && d.options && !d.options.includes(value))
      throw new UsageError(`${flag} must be one of ${d.options.join(", ")}, not "${value}"`);
    out[name] = value;
  }
  for (const [name, d] of positionals) {
    const v = operands.shift();
    if (v === undefined) {
      if (d.required) throw new UsageError(`missing operand ${name.toUpperCase()}`);
      if (d.default !== undefined) out[name] = String(d.default);
      continue;
    }
    out[name] = v;
  }
  if (operands.length > 0)
    throw new UsageError(
      `unexpected operand${operands.length > 1 ? "s" : ""} ${operands.map((o) => JSON.stringify(o)).join(" ")}`,
    );
  for (const [name, d] of Object.entries(def)) {
    if (d.type === "positional" || out[name] !== undefined) continue;
    if (d.required) throw new UsageError(`missing option --${name}`);
    if (d.default !== undefined) out[name] = d.default as string | boolean;
  }
  out._ = Object.values(def).some((d) => d.type === "positional")
    ? positionals.map(([n]) => out[n]).filter((v): v is string => typeof v === "string")
    : [];
  return out;
}

interface Resolved {
  cmd: CommandDef;
  parent: CommandDef | undefined;
  /** The command's words, e.g. "queue show". */
  path: string[];
  rest: string[];
  /** How many words at the end of `rest` are a `-c FILE` given before the subcommand's name. */
  carried?: number;
}

async function subCommandsOf(cmd: CommandDef): Promise<Record<string, CommandDef> | undefined> {
  const subs = await resolve(cmd.subCommands);
  if (!subs) return undefined;
  const out: Record<string, CommandDef> = {};
  for (const [name, s] of Object.entries(subs)) out[name] = (await resolve(s)) as CommandDef;
  return out;
}

/**
 * Walks down the subcommands named at the start of argv. `-c FILE` / `--config FILE` may come before
 * a subcommand's name (`mta queue -c mta.yaml summary`, as `postqueue -c DIR -p`): it is handed on to
 * the command that is finally run, which rejects it if it takes no configuration.
 */
async function resolveCommand(main: CommandDef, argv: string[], path: string[]): Promise<Resolved> {
  let r: Resolved = { cmd: main, parent: undefined, path, rest: argv };
  const carried: string[] = [];
  for (;;) {
    const subs = await resolve(r.cmd.subCommands);
    let name = r.rest[0];
    while (
      subs &&
      path.length > 0 &&
      name !== undefined &&
      isConfigFlag(name) &&
      (name.includes("=") || r.rest.length > 1)
    ) {
      const n = name.includes("=") ? 1 : 2;
      carried.push(...r.rest.slice(0, n));
      r = { ...r, rest: r.rest.slice(n) };
      name = r.rest[0];
    }
    if (!subs || name === undefined || name.startsWith("-")) {
      if (carried.length > 0) r = { ...r, rest: [...r.rest, ...carried], carried: carried.length };
      return r;
    }
    if (!(name in subs)) {
      const hint = closestWord(name, Object.keys(subs));
      throw new UsageError(
        `unknown command "${name}"${hint ? ` (did you mean "${hint}"?)` : ""}; the commands are ${Object.keys(subs).join(", ")}`,
      );
    }
    const next = (await resolve((subs as Record<string, unknown>)[name])) as CommandDef;
    path.push(name);
    r = { cmd: next, parent: r.cmd, path, rest: r.rest.slice(1) };
  }
}

function isConfigFlag(arg: string): boolean {
  return arg === "-c" || arg === "--config" || arg.startsWith("--config=");
}

async function usage(r: Resolved): Promise<string> {
  return `${await renderUsage(r.cmd, r.parent)}\n`;
}

/** Runs `argv` against the command tree; returns the exit code. Never throws. */
export async function run(main: CommandDef, argv: string[]): Promise<number> {
  const path: string[] = [];
  try {
    if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
      const meta = await resolve(main.meta);
      process.stdout.write(`${meta?.version}\n`);
      return EXIT.ok;
    }
    const r = await resolveCommand(main, argv, path);
    if (OWN_ARGS.has(r.cmd))
      return toExit(await r.cmd.run?.({ rawArgs: r.rest, args: { _: [] } as never, cmd: r.cmd }));
    // `--help` anywhere before `--`, as citty does.
    const end = r.rest.indexOf("--");
    const head = end >= 0 ? r.rest.slice(0, end) : r.rest;
    if (head.includes("--help") || head.includes("-h")) {
      process.stdout.write(plain(await usage(r), process.stdout));
      return EXIT.ok;
    }
    const subs = await subCommandsOf(r.cmd);
    if (subs && !r.cmd.run) {
      if (r.rest.length > (r.carried ?? 0)) throw new UsageError(`unknown option ${r.rest[0]}`);
      process.stderr.write(plain(await usage(r), process.stderr));
      if (r.path.length === 0) return EXIT.usage;
      throw new UsageError(`missing command: one of ${Object.keys(subs).join(", ")}`);
    }
    const args = parseStrict((await resolve(r.cmd.args)) ?? {}, r.rest);
    return toExit(await r.cmd.run?.({ rawArgs: r.rest, args: args as never, cmd: r.cmd }));
  } catch (err) {
    return reportError(err, path);
  }
}

function toExit(result: unknown): number {
  return typeof result === "number" ? result : EXIT.ok;
}

/** One line (a config error: its list of problems) on stderr; returns the exit code. */
export function reportError(err: unknown, path: readonly string[] = []): number {
  const where = path.length ? `mta ${path.join(" ")}` : "mta";
  if (err instanceof ConfigError) {
    process.stderr.write(`mta: configuration error in ${err.message}\n`);
    return EXIT.config;
  }
  if (err instanceof UsageError) {
    process.stderr.write(
      `mta: ${path.length ? `${path.join(" ")}: ` : ""}${err.message} (see ${where} --help)\n`,
    );
    return EXIT.usage;
  }
  if (err instanceof MtaError) {
    process.stderr.write(`mta: ${oneLine(err.message)}\n`);
    if (err.code === "spool-locked")
      process.stderr.write(
        "mta: another mta process owns this spool; stop it first, or use `mta queue` to talk to it\n",
      );
    return exitCodeOf(err);
  }
  const errno = errnoOf(err);
  const file = (err as { path?: unknown } | null)?.path;
  if (errno && typeof file === "string") {
    // A system call on a path that no caller put into words: still one line, with errno's meaning.
    const syscall = String((err as { syscall?: unknown }).syscall ?? "");
    const op = /^(open|read|stat|lstat|scandir|access)$/.test(syscall) ? "read" : "write";
    process.stderr.write(`mta: ${file}: ${errnoText(err)}\n`);
    return errnoExit(errno, op);
  }
  if (errno) {
    // A failed system call with no path (a descriptor: standard input, a socket): still not a bug.
    const syscall = String((err as { syscall?: unknown }).syscall ?? "");
    process.stderr.write(`mta: ${syscall ? `${syscall}: ` : ""}${errnoText(err)}\n`);
    return errnoExit(errno, "read");
  }
  return reportInternal(err);
}

/** An error nobody expected: one line, the stack only with MTA_DEBUG=1. Exit 70. */
export function reportInternal(err: unknown): number {
  const message = oneLine(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  if (process.env.MTA_DEBUG === "1" && err instanceof Error && err.stack)
    process.stderr.write(`mta: internal error: ${err.stack}\n`);
  else
    process.stderr.write(
      `mta: internal error: ${message} (a bug; run again with MTA_DEBUG=1 for the detail, and report it)\n`,
    );
  return EXIT.software;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, "; ");
}
