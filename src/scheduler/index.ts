/**
 * The scheduler: queues, retries, expiry, operator commands and traffic shaping per site.
 *
 * Owns: the public face of scheduler/.
 * Does not own: the spool, SMTP, routing and policy (route/), outcomes and DSNs (disposition/);
 * see _scheduler.ts for how its parts are composed.
 */
export { RateLimiter } from "./_rate.ts";
export { Scheduler } from "./_scheduler.ts";
export { Site, type SiteEnv, type SuspendKind } from "./_site.ts";
export { type LiveView, queueTotals, summarize } from "./_summary.ts";
export type {
  CommandResult,
  DeliveryEngine,
  DestinationEvent,
  DestinationState,
  DestinationSummary,
  EgressSource,
  PoolMember,
  RateGate,
  SchedulerEvent,
  SchedulerOptions,
  SchedulerRouter,
  SchedulerSettings,
  SchedulerSpool,
  SharedLimits,
  SharedSlots,
} from "./_types.ts";
