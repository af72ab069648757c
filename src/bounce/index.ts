/**
 * Bounces: RFC 3464 delivery status notifications, and reply -> status classification.
 *
 * Owns: the public face of bounce/.
 * Does not own: when a DSN is due or where it is queued (scheduler/).
 */
export type { SmtpReply } from "./_reply.ts";
export {
  buildDsn,
  DEFAULT_MAX_ORIGINAL_BYTES,
  type DsnInput,
  type DsnRecipient,
  foldField,
  formatRfc5322Date,
} from "./dsn.ts";
export { diagnosticFromReply, isNullSender, statusFromReply, wantsDsn } from "./status.ts";
export {
  BOUNCE_CLASSES,
  type BounceClass,
  type BounceRule,
  BUILTIN_RULES_FILE,
  bounceClassNamed,
  builtinRulesSource,
  type Classification,
  Classifier,
  type ClassifyInput,
  enhancedOf,
  KUMO_CLASS_NAMES,
  parseRules,
  replyLineInput,
  type RuleProblem,
  RulesError,
} from "./classify.ts";
export {
  type FeedbackReport,
  type ParsedReport,
  parseDiagnostic,
  parseFieldGroups,
  parseReport,
  type ReportedRecipient,
} from "./parse.ts";
export { findVerpAddresses, parseVerp, tagMatches, type VerpToken, verpAddress, verpTag } from "./verp.ts";
