/**
 * The sender's feedback loop: bounce classes of every result, automatic suppression, the suppression
 * check at acceptance, VERP return paths, and asynchronous bounces and complaints received.
 *
 * Owns: the public face of feedback/.
 * Does not own: classification rules and report parsing (bounce/), the list's storage (suppression/),
 * when results happen (disposition/), the accept pipeline (accept/).
 */
export {
  BounceInbox,
  bounceRulesProblems,
  Feedback,
  type FeedbackDeps,
  loadClassifier,
  suppressionDir,
} from "./_feedback.ts";
