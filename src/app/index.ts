export { Daemon, runDaemon } from "./daemon.ts";
export { dkimProblems, Engine } from "./engine.ts";
export { type StartProblem, startProblems } from "./preflight.ts";
export { tlsPolicyProblems } from "./tlsDelivery.ts";
export { DkimSigner, formatTxtRecord, generateKey } from "../dkim/index.ts";
export { formatVerifyReport } from "../spool/index.ts";
export * from "./queue.ts";
export { formatSummary, parseSendArgs, runSend, type SendArgs, type SendSummary, send } from "./send.ts";
export { bounceRulesProblems, loadClassifier } from "./feedback.ts";
export {
  type CheckResult,
  type ListFilter,
  openSuppressClient,
  type SuppressClient,
} from "./_suppressClient.ts";
export {
  type NewSuppression,
  normalizeAddress,
  normalizeScope,
  parseCsv,
  REASONS,
  SuppressionError,
  type SuppressionReason,
} from "../suppression/index.ts";
export { BOUNCE_CLASSES, builtinRulesSource, KUMO_CLASS_NAMES, replyLineInput } from "../bounce/index.ts";
