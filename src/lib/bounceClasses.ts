/**
 * The bounce classes: PowerMTA's bounce categories, in its spelling (the values of `class` in the
 * delivery log, the suppression list's reasons, the names the configuration accepts).
 *
 * Owns: the one list. It lives in lib/ because two modules need it and neither may import the other's:
 * bounce/ (which classifies) and config/ (which checks class names with their YAML line).
 * Invariant: the order is part of the suppression file format (a reason byte indexes this list after
 * "manual" and "complaint"): append only.
 */
export const BOUNCE_CLASSES = [
  "bad-mailbox",
  "bad-domain",
  "inactive-mailbox",
  "invalid-sender",
  "quota-issues",
  "no-answer-from-host",
  "bad-connection",
  "routing-errors",
  "message-expired",
  "protocol-errors",
  "content-related",
  "spam-related",
  "virus-related",
  "policy-related",
  "relaying-issues",
  "bad-configuration",
  "other",
] as const;

export type BounceClass = (typeof BOUNCE_CLASSES)[number];
