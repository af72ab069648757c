/**
 * Loggers: consola, pretty on a terminal, one JSON object per line for journald and log shippers.
 *
 * Owns: `createLogger`, the JSON reporter, `silentLogger` for tests, and `setLogLevel`, which
 * reaches every logger derived from the root with `withTag` (consola copies the level into each
 * child, so without this a reload would not reach the deliverer's or the listener's lines).
 * Modules receive a `Logger` handle (never a global) and log with `log.info("text", { fields })`.
 */
import { type ConsolaInstance, type ConsolaReporter, createConsola, type LogObject } from "consola";

export type Logger = ConsolaInstance;
export type LogLevelName = "silent" | "error" | "warn" | "info" | "debug" | "trace";
export type LogFormat = "pretty" | "json";

const LEVELS: Record<LogLevelName, number> = { silent: -999, error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

function jsonReporter(stream: NodeJS.WritableStream): ConsolaReporter {
  return {
    log(obj: LogObject) {
      const record: Record<string, unknown> = {
        time: obj.date.toISOString(),
        level: obj.type,
      };
      if (obj.tag) record.module = obj.tag;
      const texts: string[] = [];
      for (const arg of obj.args) {
        if (arg instanceof Error) {
          record.error = arg.message;
          if (arg.stack) record.stack = arg.stack;
        } else if (arg !== null && typeof arg === "object") Object.assign(record, arg);
        else texts.push(String(arg));
      }
      record.msg = texts.join(" ");
      stream.write(`${JSON.stringify(record)}\n`);
    },
  };
}

export interface LoggerOptions {
  level?: LogLevelName;
  format?: LogFormat;
  stream?: NodeJS.WritableStream;
}

/** The loggers derived from one root: weakly held, so a child nobody uses any more can go. */
const FAMILY = Symbol("mta.logger.family");
type Family = { members: Set<WeakRef<Logger>> };

function adopt(family: Family, log: Logger): Logger {
  const withTag = log.withTag.bind(log);
  Object.assign(log, {
    [FAMILY]: family,
    withTag: (tag: string) => adopt(family, withTag(tag)),
  });
  family.members.add(new WeakRef(log));
  return log;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const stream = opts.stream ?? process.stderr;
  const level = LEVELS[opts.level ?? "info"];
  const root =
    opts.format === "json"
      ? createConsola({ level, reporters: [jsonReporter(stream)] })
      : createConsola({
          level,
          stdout: stream as NodeJS.WriteStream,
          stderr: stream as NodeJS.WriteStream,
          formatOptions: { colors: Boolean((stream as { isTTY?: boolean }).isTTY) },
        });
  return adopt({ members: new Set() }, root);
}

/** Sets the level of `log` and of every logger derived from the same root (a reload). */
export function setLogLevel(log: Logger, level: LogLevelName): void {
  const family = (log as Logger & { [FAMILY]?: Family })[FAMILY];
  if (!family) {
    log.level = LEVELS[level];
    return;
  }
  for (const ref of family.members) {
    const member = ref.deref();
    if (member) member.level = LEVELS[level];
    else family.members.delete(ref);
  }
}

/** A logger that prints nothing: for tests and benchmarks. */
export function silentLogger(): Logger {
  return createConsola({ level: LEVELS.silent, reporters: [] });
}
