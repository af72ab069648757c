/**
 * Typed errors shared by modules, and the one mapping from an error to a sysexits(3) code.
 *
 * Owns: `MtaError` (base class with a stable `code`), `UsageError`, `UnavailableError`, the sysexits
 * codes, `exitCodeOf`, and `fileError`, which turns a failed system call on a path into one line that
 * names what the path was for (`spool.dir /var/spool/mta: permission denied`).
 * Does not own: `ConfigError` (config/), `SmtpError` (smtp/), spool errors (spool/).
 */

/** sysexits(3) codes used by the CLI. */
export const EXIT = {
  ok: 0,
  /** EX_USAGE: the command line is wrong. */
  usage: 64,
  /** EX_DATAERR: the input data is wrong (a malformed message, a damaged spool record). */
  dataErr: 65,
  /** EX_NOINPUT: an input file does not exist or cannot be read. */
  noInput: 66,
  /** EX_UNAVAILABLE: a service is unavailable (the spool is locked, no daemon, a port in use). */
  unavailable: 69,
  /** EX_SOFTWARE: an internal error (a bug): the detail is behind MTA_DEBUG=1. */
  software: 70,
  /** EX_CANTCREAT: an output file or directory cannot be created. */
  cantCreate: 73,
  /** EX_IOERR: an error while reading or writing (disk full, I/O error). */
  ioErr: 74,
  /** EX_TEMPFAIL: try again later (`mta send` left mail deferred). */
  tempFail: 75,
  /** EX_NOPERM: not permitted (a file or directory the user may not read or write). */
  noPerm: 77,
  /** EX_CONFIG: the configuration is wrong. */
  config: 78,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The stable codes of `MtaError` and the exit code each one means. */
const EXIT_OF_CODE: Record<string, ExitCode> = {
  usage: EXIT.usage,
  data: EXIT.dataErr,
  noinput: EXIT.noInput,
  unavailable: EXIT.unavailable,
  "spool-locked": EXIT.unavailable,
  software: EXIT.software,
  runtime: EXIT.software,
  cantcreate: EXIT.cantCreate,
  io: EXIT.ioErr,
  tempfail: EXIT.tempFail,
  noperm: EXIT.noPerm,
  config: EXIT.config,
};

export class MtaError extends Error {
  override name = "MtaError";
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Invalid command-line usage (exit 64). */
export class UsageError extends MtaError {
  override name = "UsageError";
  constructor(message: string) {
    super("usage", message);
  }
}

/** Unavailable service (exit 69), e.g. the spool is locked by another process. */
export class UnavailableError extends MtaError {
  override name = "UnavailableError";
  constructor(message: string, options?: { cause?: unknown }) {
    super("unavailable", message, options);
  }
}

/** Not allowed for this user (exit 77, EX_NOPERM), e.g. a spool or secret only root and mta may read. */
export class PermissionError extends MtaError {
  override name = "PermissionError";
  constructor(message: string, options?: { cause?: unknown }) {
    super("noperm", message, options);
  }
}

/** The sysexits code for an error: its `MtaError` code, an errno's meaning, else 70 (a bug). */
export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof MtaError) return EXIT_OF_CODE[err.code] ?? EXIT.software;
  const errno = errnoOf(err);
  if (errno) return errnoExit(errno, "read");
  return EXIT.software;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The errno code (`ENOENT`, `EACCES`, ...) of a failed system call, if `err` is one. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : undefined;
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EISDIR: "is a directory (a file was expected)",
  ENOTDIR: "not a directory",
  EEXIST: "already exists",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
  EIO: "input/output error",
  ELOOP: "too many levels of symbolic links",
  EMFILE: "too many open files",
  ENFILE: "too many open files in the system",
  ENAMETOOLONG: "file name too long",
  ENOTEMPTY: "directory not empty",
  EBUSY: "device or resource busy",
  EINVAL: "invalid argument",
  EADDRINUSE: "address already in use",
  EADDRNOTAVAIL: "address not available on this machine",
  ECONNREFUSED: "connection refused",
};

/** A failed system call as a few words: `permission denied`, `is a directory`, ... */
export function errnoText(err: unknown): string {
  const errno = errnoOf(err);
  if (errno && ERRNO_TEXT[errno]) return ERRNO_TEXT[errno];
  // Node's messages read "EACCES: permission denied, open '/x'": keep the middle part.
  const m = /^E[A-Z0-9]+: ([^,]+)/.exec(errorMessage(err));
  return m ? m[1]! : errorMessage(err);
}

/** The sysexits code for a failed system call: reading what is not there is 66, creating it 73. */
export function errnoExit(errno: string, op: "read" | "write"): ExitCode {
  switch (errno) {
    case "EACCES":
    case "EPERM":
      return EXIT.noPerm;
    case "ENOSPC":
    case "EDQUOT":
    case "EIO":
      return EXIT.ioErr;
    case "EROFS":
    case "EEXIST":
      return EXIT.cantCreate;
    case "ENOENT":
    case "ENOTDIR":
    case "EISDIR":
    case "ELOOP":
    case "ENAMETOOLONG":
      return op === "read" ? EXIT.noInput : EXIT.cantCreate;
    case "EMFILE":
    case "ENFILE":
    case "EBUSY":
      return EXIT.tempFail;
    default:
      return EXIT.ioErr;
  }
}

const CODE_OF_EXIT: Partial<Record<ExitCode, string>> = {
  [EXIT.noPerm]: "noperm",
  [EXIT.ioErr]: "io",
  [EXIT.cantCreate]: "cantcreate",
  [EXIT.noInput]: "noinput",
  [EXIT.tempFail]: "tempfail",
};

/**
 * A failed system call on a path as an `MtaError` whose message names what the path is for:
 * `fileError(err, "spool.dir /var/spool/mta", "write")` → "spool.dir /var/spool/mta: permission denied";
 * when the call failed on another path inside it, that path is named too. An `MtaError` is returned as is.
 */
export function fileError(err: unknown, what: string, op: "read" | "write"): MtaError {
  if (err instanceof MtaError) return err;
  const errno = errnoOf(err);
  const code = errno ? (CODE_OF_EXIT[errnoExit(errno, op)] ?? "io") : "io";
  const path = (err as { path?: unknown } | null)?.path;
  const inner = typeof path === "string" && !what.endsWith(path) ? `${path}: ` : "";
  return new MtaError(code, `${what}: ${inner}${errnoText(err)}`, { cause: err });
}
