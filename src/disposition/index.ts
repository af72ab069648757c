/**
 * Disposition: the one path from an outcome (results, expiry, failure, operator bounce or delete)
 * to the spool record, the delivery-log events, the DSN and a verdict.
 *
 * Owns: the public face of disposition/.
 * Does not own: queues (scheduler/), DSN text (bounce/), the accept pipeline DSNs go through (accept/),
 * bounce classes and the suppression list (feedback/, through `Classifying`).
 */
export {
  ADMIN_BOUNCE_REPLY,
  type DisposeInput,
  type Disposed,
  Disposer,
  type DisposerOptions,
} from "./_disposer.ts";
export { type DsnInjector, dsnAction } from "./_dsn.ts";
export type {
  Classifying,
  DisposableMessage,
  DispositionSettings,
  DispositionSpool,
  MessageEvent,
  Outcome,
  RecipientTls,
  Verdict,
} from "./_types.ts";
export { RESULT, type ResultKind, type ResultNames } from "./_vocabulary.ts";
