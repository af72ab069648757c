/**
 * The scheduler: queues, retries, expiry, bounces and traffic shaping.
 *
 * Owns: the public face of scheduler/.
 * Does not own: the spool, SMTP, DSN text, DNS (see _scheduler.ts for how they are composed).
 */
export { Scheduler } from "./_scheduler.ts";
export { type Rate, parseRate, RateLimiter } from "./_rate.ts";
export { type BackoffRule, DEFAULT_BACKOFF_RULES, matchRule, type ReplyLike } from "./_rules.ts";
export type {
  DeliveryEngine,
  DestinationEvent,
  DestinationPolicy,
  DestinationState,
  DestinationSummary,
  EgressSource,
  PoolMember,
  SchedulerEvent,
  SchedulerEventType,
  SchedulerOptions,
  SchedulerRoute,
  SchedulerSpool,
} from "./_types.ts";
