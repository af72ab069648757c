/**
 * Typed spool errors: each says what the caller should tell its peer.
 *
 * Owns: `SpoolLockedError` (another live process holds LOCK), `SpoolWriteError` (a batch could not be
 * made durable: the listener answers `452 4.3.1`), `SpoolCorruptError` (a read found bytes that fail
 * their checksum), `SpoolClosedError`.
 */
import { MtaError } from "../lib/index.ts";

export class SpoolLockedError extends MtaError {
  override name = "SpoolLockedError";
  constructor(
    readonly dir: string,
    readonly holderPid: number | undefined,
  ) {
    super(
      "spool-locked",
      `spool ${dir} is locked by ${holderPid !== undefined ? `process ${holderPid}` : "another process"}`,
    );
  }
}

export class SpoolWriteError extends MtaError {
  override name = "SpoolWriteError";
  /** The errno code of the cause when there is one, e.g. `ENOSPC` or `EIO`. */
  readonly errno: string | undefined;
  constructor(message: string, cause: unknown) {
    super("spool-write", message, { cause });
    this.errno = (cause as { code?: string } | undefined)?.code;
  }
}

export class SpoolCorruptError extends MtaError {
  override name = "SpoolCorruptError";
  constructor(
    message: string,
    readonly segment: string,
    readonly offset: number,
  ) {
    super("spool-corrupt", message);
  }
}

export class SpoolClosedError extends MtaError {
  override name = "SpoolClosedError";
  constructor() {
    super("spool-closed", "the spool is closed");
  }
}
