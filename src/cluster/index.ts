/**
 * Cluster: several `mta serve` nodes sharing connection limits, rates and site state through Redis.
 *
 * Owns: the public face of cluster/ (see cluster.ts for the modes, _leases.ts, _rates.ts, _state.ts
 * and _registry.ts for what is shared and how). The app imports this module lazily, only when the
 * configuration has a `cluster:` section: a single node runs no Redis code at all.
 */
export {
  Cluster,
  ClusterError,
  type ClusterHealth,
  type ClusterOptions,
  NameConflictError,
} from "./cluster.ts";
export { type ClusterMode, Lease, type LeaseRequest, localShare } from "./_leases.ts";
export { type RateSpec, SharedRateLimiter } from "./_rates.ts";
export type { RateKind } from "./_scripts.ts";
export type { NodeInfo, QueueTotals } from "./_registry.ts";
export { SiteSlots } from "./_slots.ts";
export { RedisDownError } from "./_link.ts";
export { compareStreamIds, SharedLog, type SharedLogEntry, type SharedLogStatus } from "./_journal.ts";
export { HOLD_KINDS, type HoldKind, type SharedHold, type StateChange } from "./_state.ts";
