/**
 * Reply-driven backoff rules (PowerMTA backoff mode, KumoMTA shaping automation).
 *
 * Owns: `BackoffRule` (part of a destination's policy), the default rules, and `matchRule` (the first
 * rule whose pattern matches a reply).
 * Does not own: carrying out the action on a site (scheduler/'s site object).
 * A rule matches on the reply code (a number, or a regex over its three digits), the enhanced code
 * (regex), and the text (regex over `code enhanced text`, lines joined by spaces); every given part
 * must match.
 */
import { replyLine, type SmtpReply } from "../smtp/index.ts";
import type { Rate } from "../lib/index.ts";

export interface BackoffRule {
  /** Shown in logs, events and the `rule` label of metrics; keep it short and fixed. */
  name: string;
  code?: number | RegExp;
  enhanced?: RegExp;
  text?: RegExp;
  /**
   * `suspend`: no new attempts to the destination for `forMs`.
   * `throttle`: at most `maxConnections` connections and `messageRate` for `forMs`.
   * `bounce`: every queued message of the destination fails with this reply (for `forMs`, messages
   * that come due fail too).
   */
  action: "suspend" | "throttle" | "bounce";
  forMs: number;
  maxConnections?: number;
  messageRate?: Rate;
}

export type ReplyLike = SmtpReply;

/**
 * Defaults for the well-known "slow down" replies: Gmail's 4.7.28 ("unusual rate of unsolicited
 * mail") and Microsoft's/Yahoo's "temporarily deferred" blocks suspend; generic rate-limit and "try
 * again later" replies throttle to one connection at one message per second.
 */
export const DEFAULT_BACKOFF_RULES: readonly BackoffRule[] = Object.freeze([
  {
    name: "blocked-temporarily",
    code: /^4\d\d$/,
    text: /\b4\.7\.28\b|unusual rate|temporarily (deferred|blocked)|\bTS0[1-4]\b|\bTSS0[1-9]\b/i,
    action: "suspend",
    forMs: 30 * 60_000,
  },
  {
    name: "rate-limited",
    code: /^4\d\d$/,
    text: /rate.?limit|too many (messages|connections|recipients|concurrent)|throttl|try again later|slow down/i,
    action: "throttle",
    forMs: 10 * 60_000,
    maxConnections: 1,
    messageRate: { count: 1, perMs: 1000 },
  },
]);

export function matchRule(rules: readonly BackoffRule[], r: ReplyLike): BackoffRule | undefined {
  const code = String(r.code);
  const line = replyLine(r);
  for (const rule of rules) {
    if (rule.code !== undefined) {
      if (typeof rule.code === "number" ? rule.code !== r.code : !rule.code.test(code)) continue;
    }
    if (rule.enhanced && !rule.enhanced.test(r.enhanced ?? "")) continue;
    if (rule.text && !rule.text.test(line)) continue;
    return rule;
  }
  return undefined;
}
