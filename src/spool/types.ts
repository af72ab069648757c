/**
 * The spool's public value types.
 *
 * Owns: the shapes other modules pass in and get back; nothing here does I/O.
 */
import type { Clock } from "../lib/index.ts";
import type { Logger, Metrics } from "../observe/index.ts";
import type { FileLayer } from "./_files.ts";

import type { NotifyKeyword } from "../smtp/index.ts";

export type { NotifyKeyword };

/** The TLS of a recipient's last attempt, as `mta queue show` and the delivery log name it. */
export interface LastTls {
  /** The policy that applied: dane, sts-enforce, sts-testing, opportunistic, required, off, ... */
  policy: string;
  /** Absent when the attempt went in plain text. */
  version?: string;
  cipher?: string;
  /** The certificate passed the policy's check. */
  verified: boolean;
}

export interface RecipientSpec {
  address: string;
  notify?: NotifyKeyword[];
  orcpt?: string;
}

export interface NewMessage {
  /** "" for the null sender. */
  sender: string;
  /** Opaque queue key (the scheduler uses the recipients' domain); one per message. */
  destination: string;
  /** At least one; `lastReply` for a message moved here with its history. */
  recipients: (RecipientSpec & { lastReply?: string })[];
  /** Free attributes: envid, ret, listener, client ip, pool, batch id ... */
  attributes?: Record<string, string>;
  /** Exact message bytes; must not be changed by the caller after `append`. */
  body: Uint8Array;
  /** Default: clock.now(). */
  arrivalMs?: number;
  /**
   * A message that already has a history (moved here from another node): attempts made so far
   * (default 0) and when the next one is due (default: its arrival).
   */
  attempts?: number;
  nextAttemptMs?: number;
}

export type RecipientState = "pending" | "delivered" | "failed";

export interface StoredRecipient extends RecipientSpec {
  state: RecipientState;
  lastReply?: string;
  /** The TLS of this recipient's last attempt (policy, version, cipher, verified), when it had one. */
  lastTls?: LastTls;
}

export interface StoredMessage {
  id: string;
  slot: number;
  sender: string;
  destination: string;
  arrivalMs: number;
  attempts: number;
  nextAttemptMs: number;
  /** Body size in bytes. */
  sizeBytes: number;
  recipients: StoredRecipient[];
  attributes: Record<string, string>;
}

export interface OutcomeUpdate {
  /** `index` is into the message's recipients. */
  recipients: { index: number; state: RecipientState; reply?: string; tls?: LastTls }[];
  /** The new attempt count. */
  attempts: number;
  /** When some recipients stay pending; default: unchanged. */
  nextAttemptMs?: number;
  /** Free text kept in the record, e.g. "admin-bounce", "expired". */
  reason?: string;
}

export interface SpoolOptions {
  dir: string;
  /** Default 64 MiB; a larger record gets a segment of its own. */
  segmentSizeBytes?: number;
  /**
   * Default true. `false` skips fdatasync: only for tests and benchmarks, and it LOSES ACKNOWLEDGED
   * MAIL when the machine crashes (a process crash alone loses nothing: the bytes are in the page cache).
   */
  sync?: boolean;
  /** A sealed segment whose live share of bytes falls below this is compacted. Default 0.3. */
  compactBelowLiveRatio?: number;
  /** Bounded cache of recently written bodies. Default 64 MiB; 0 disables it. */
  bodyCacheBytes?: number;
  clock?: Clock;
  log?: Logger;
  metrics?: Metrics;
  /** Fault-injection seam; default: the real node:fs. */
  fileLayer?: FileLayer;
}

export interface DamagedRecord {
  /** Segment file name, e.g. `00000000000000000003.seg`. */
  segment: string;
  offset: number;
  bytes: number;
  reason: string;
  /** Where a writable open copied the bytes (`<spool>/quarantine/<sequence>-<offset>.bad`). */
  quarantine?: string;
}

export interface RecoveryReport {
  segments: number;
  records: number;
  /** Live messages after recovery. */
  messages: number;
  /** Messages found whose recipients were all done. */
  deadMessages: number;
  recipients: { pending: number; delivered: number; failed: number };
  /** Bytes cut from the end of the active segment (a batch torn by a crash, never acknowledged). */
  truncatedBytes: number;
  /** Where that torn tail was, and why it is one. */
  tornTail?: { segment: string; offset: number; bytes: number; reason: string };
  /** Damage to acknowledged data: reported, copied to the quarantine, never cut silently. */
  damaged: DamagedRecord[];
  /** Segments deleted or compacted right after the scan (empty, or left by an interrupted compaction). */
  segmentsReclaimed: number;
  ms: number;
}

export interface SpoolStats {
  segments: number;
  activeSegment: string;
  fileBytes: number;
  liveBytes: number;
  deadBytes: number;
  messages: number;
  recipients: { pending: number; delivered: number; failed: number };
  destinations: number;
  groupCommit: {
    batches: number;
    records: number;
    bytes: number;
    recordsPerBatch: number;
    largestBatchRecords: number;
    queued: number;
  };
  bodyCache: { entries: number; bytes: number; hits: number; misses: number };
  compactions: number;
}

export interface CompactReport {
  segmentsCompacted: number;
  messagesMoved: number;
  segmentsDeleted: number;
  bytesReclaimed: number;
}

export interface VerifySegment {
  name: string;
  bytes: number;
  records: number;
  messageRecords: number;
  outcomeRecords: number;
}

export interface VerifyReport {
  dir: string;
  segments: VerifySegment[];
  records: number;
  /** Messages that would be live after recovery. */
  messages: number;
  recipients: { pending: number; delivered: number; failed: number };
  liveBytes: number;
  fileBytes: number;
  /** Bad records: each names its segment and offset. Any makes `ok` false (CLI exit 65). */
  damaged: DamagedRecord[];
  /** An incomplete last batch at the end of the newest segment: a crash, not damage. */
  tornTail?: { segment: string; offset: number; bytes: number; reason: string };
  /** Damaged bytes moved aside by an earlier start; any makes `ok` false until the operator removes them. */
  quarantined: { path: string; bytes: number }[];
  ok: boolean;
}
