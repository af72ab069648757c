/**
 * The suppression list: addresses mail must not go to, durable in the spool directory, checked in RAM.
 *
 * Owns: the public face of suppression/.
 * Does not own: when an address is added (app/: bounces of chosen classes, complaints, the operator),
 * what a hit means for a recipient (app/).
 */
export {
  decodeRecords as decodeChanges,
  encodeRecords as encodeChanges,
  LOG_FILE,
  type LogRecord as SuppressionChange,
  normalizeAddress,
  normalizeScope,
  REASONS,
  type SuppressionReason,
  TYPE_REMOVE as CHANGE_REMOVE,
} from "./_log.ts";
export { CSV_HEADER, type CsvProblem, formatCsv, formatCsvRow, parseCsv } from "./csv.ts";
export { SuppressionList } from "./list.ts";
export { readEntries } from "./_read.ts";
export {
  type AddResult,
  type NewSuppression,
  type RecoveryReport,
  type SharedPosition,
  type SuppressionEntry,
  SuppressionError,
  type SuppressionHit,
  type SuppressionOptions,
} from "./types.ts";
