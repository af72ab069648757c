/**
 * Running the citty command tree with sysexits exit codes.
 *
 * Owns: mapping thrown errors to exit codes and messages (config 78, usage 64, unavailable 69, else 1).
 * citty's own `runMain` exits 1 for everything; scripts need to tell a usage error from a bad config.
 */
import { type CommandDef, renderUsage, runCommand } from "citty";
import { ConfigError } from "../config/index.ts";
import { EXIT, MtaError } from "../lib/index.ts";

/** citty colours its usage text; keep escape codes out of pipes and files. */
function plain(text: string, stream: NodeJS.WriteStream): string {
  return stream.isTTY ? text : text.replace(/\x1b\[[0-9;]*m/g, "");
}

async function resolveSub(
  cmd: CommandDef,
  argv: string[],
): Promise<[CommandDef, CommandDef | undefined, string[]]> {
  let current = cmd;
  let parent: CommandDef | undefined;
  let rest = argv;
  for (;;) {
    const subs =
      typeof current.subCommands === "function" ? await current.subCommands() : await current.subCommands;
    const i = rest.findIndex((a) => !a.startsWith("-"));
    const name = i >= 0 ? rest[i]! : undefined;
    if (!subs || !name || !(name in subs)) return [current, parent, rest];
    const next = (subs as Record<string, unknown>)[name];
    const resolved = (
      typeof next === "function" ? await (next as () => unknown)() : await next
    ) as CommandDef;
    parent = current;
    current = resolved;
    rest = rest.slice(i + 1);
  }
}

export async function run(main: CommandDef, argv: string[]): Promise<number> {
  try {
    // `mta send` parses sendmail-style flags itself (its -h is not help) and prints its own usage.
    if (argv[0] !== "send" && (argv.includes("--help") || argv.includes("-h"))) {
      const [cmd, parent] = await resolveSub(main, argv);
      process.stdout.write(plain(`${await renderUsage(cmd, parent)}\n`, process.stdout));
      return EXIT.ok;
    }
    if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
      const meta = typeof main.meta === "function" ? await main.meta() : await main.meta;
      process.stdout.write(`${meta?.version}\n`);
      return EXIT.ok;
    }
    if (argv.length === 0) {
      process.stdout.write(plain(`${await renderUsage(main)}\n`, process.stdout));
      return EXIT.usage;
    }
    // Run the leaf command ourselves: citty drops the return value of nested subcommands.
    const [leaf, , rest] = await resolveSub(main, argv);
    const { result } = await runCommand(leaf, { rawArgs: rest });
    return typeof result === "number" ? result : EXIT.ok;
  } catch (err) {
    return reportError(err, main, argv);
  }
}

async function reportError(err: unknown, main: CommandDef, argv: string[]): Promise<number> {
  if (err instanceof ConfigError) {
    process.stderr.write(`mta: configuration error in ${err.message}\n`);
    return EXIT.config;
  }
  const code = (err as { code?: unknown }).code;
  if (err instanceof MtaError) {
    process.stderr.write(`mta: ${err.message}\n`);
    if (err.code === "usage") return EXIT.usage;
    if (err.code === "config") return EXIT.config;
    if (err.code === "unavailable") return EXIT.unavailable;
    if (err.code === "noperm") return EXIT.noPerm;
    if (err.code === "spool-locked") {
      process.stderr.write(
        "mta: another mta process owns this spool; stop it first, or use `mta queue` to talk to it\n",
      );
      return EXIT.unavailable;
    }
    if (err.code === "data") return EXIT.dataErr;
    return EXIT.runtime;
  }
  if (typeof code === "string" && code.startsWith("E_")) {
    // citty's CLIError: unknown command, missing argument.
    const [cmd, parent] = await resolveSub(main, argv);
    process.stderr.write(
      plain(`${await renderUsage(cmd, parent)}\n\nmta: ${(err as Error).message}\n`, process.stderr),
    );
    return EXIT.usage;
  }
  process.stderr.write(`mta: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT.runtime;
}
