/**
 * Loggers: consola, pretty on a terminal, one JSON object per line for journald and log shippers.
 *
 * Owns: `createLogger`, the JSON reporter, `silentLogger` for tests.
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

export function createLogger(opts: LoggerOptions = {}): Logger {
  const stream = opts.stream ?? process.stderr;
  const level = LEVELS[opts.level ?? "info"];
  if (opts.format === "json") {
    return createConsola({ level, reporters: [jsonReporter(stream)] });
  }
  return createConsola({
    level,
    stdout: stream as NodeJS.WriteStream,
    stderr: stream as NodeJS.WriteStream,
    formatOptions: { colors: Boolean((stream as { isTTY?: boolean }).isTTY) },
  });
}

export function setLogLevel(log: Logger, level: LogLevelName): void {
  log.level = LEVELS[level];
}

/** A logger that prints nothing: for tests and benchmarks. */
export function silentLogger(): Logger {
  return createConsola({ level: LEVELS.silent, reporters: [] });
}
