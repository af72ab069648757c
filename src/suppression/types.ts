/**
 * The suppression list's public value types and its one error type.
 *
 * Owns: the shapes other modules pass in and get back, `SuppressionError` (its `kind` for callers that
 * decide on it, its `code` for the exit status); nothing here does I/O.
 */
import { errnoOf, MtaError } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import type { SuppressionReason } from "./_log.ts";

/** What went wrong: `kind` for callers that decide on it, `code` for the exit status (lib's codes). */
export type SuppressionErrorKind = "locked" | "input" | "io" | "corrupt" | "closed";

export class SuppressionError extends MtaError {
  override name = "SuppressionError";
  constructor(
    readonly kind: SuppressionErrorKind,
    message: string,
    cause?: unknown,
  ) {
    super(codeOf(kind, cause), message, cause === undefined ? undefined : { cause });
  }
}

function codeOf(kind: SuppressionErrorKind, cause: unknown): string {
  if (kind === "locked") return "unavailable";
  if (kind === "input" || kind === "corrupt") return "data";
  if (kind === "closed") return "software";
  const errno = errnoOf(cause);
  return errno === "EACCES" || errno === "EPERM" ? "noperm" : "io";
}

export interface SuppressionEntry {
  address: string;
  /** "" for a global entry, else the sender domain it applies to. */
  scope: string;
  reason: SuppressionReason;
  addedMs: number;
  /** undefined: never expires. */
  expiresMs?: number;
}

export interface NewSuppression {
  address: string;
  scope?: string;
  reason?: SuppressionReason;
  /** Absolute expiry; undefined: never. */
  expiresMs?: number;
}

export interface SuppressionHit {
  scope: string;
  reason: SuppressionReason;
  expiresMs?: number;
}

export interface AddResult {
  added: number;
  updated: number;
  unchanged: number;
}

export interface RecoveryReport {
  entries: number;
  records: number;
  truncatedBytes: number;
  damage?: string;
  ms: number;
}

export interface SuppressionOptions {
  /** The directory, normally `<spool.dir>/suppression`. */
  dir: string;
  /** fdatasync each batch (default true; false only for tests and benchmarks). */
  sync?: boolean;
  /**
   * Cluster mode: keep this node's own changes in the outbox until the cluster's stream carries them,
   * and the position in that stream (`shared.pos`). Off: neither file is touched.
   */
  shared?: boolean;
  log?: Logger;
  now?: () => number;
}

/**
 * Where a list is in the cluster's stream: the stream's epoch, the last entry id read, how many
 * entries of the stream that makes (from its start), and the last own change seen in it.
 */
export interface SharedPosition {
  epoch: string;
  id: string;
  read: number;
  confirmed: number;
}
