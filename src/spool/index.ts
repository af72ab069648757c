/**
 * The spool (AsyncFS): where accepted mail lives until it is delivered. See docs/spool-format.md.
 *
 * Owns: the public face of spool/; everything else in this folder is private.
 */
export type { FileLayer } from "./_files.ts";
export { nodeFileLayer } from "./_files.ts";
export { SpoolClosedError, SpoolCorruptError, SpoolLockedError, SpoolWriteError } from "./errors.ts";
export { segmentName } from "./_segments.ts";
export { Spool } from "./spool.ts";
export type {
  CompactReport,
  DamagedRecord,
  LastTls,
  NewMessage,
  NotifyKeyword,
  OutcomeUpdate,
  RecipientSpec,
  RecipientState,
  RecoveryReport,
  SpoolOptions,
  SpoolStats,
  StoredMessage,
  StoredRecipient,
  VerifyReport,
  VerifySegment,
} from "./types.ts";
export { formatStats, formatVerifyReport, spoolStats, verifySpool } from "./verify.ts";
