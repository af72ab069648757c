/**
 * Typed errors shared by modules.
 *
 * Owns: `MtaError` (base class with a stable `code`), `ConfigError`, `UsageError`, and the sysexits codes.
 * Does not own: `SmtpError` (smtp/), spool errors (spool/).
 */

/** sysexits(3) codes used by the CLI. */
export const EXIT = {
  ok: 0,
  runtime: 1,
  usage: 64,
  dataErr: 65,
  unavailable: 69,
  software: 70,
  tempFail: 75,
  noPerm: 77,
  config: 78,
} as const;

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

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
