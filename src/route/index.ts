/**
 * Routing: a recipient domain -> its site (queue key), next hops and per-destination policy.
 *
 * Owns: the public face of route/ (static routes, MX rollup, destination policies, reply rules).
 * Does not own: DNS (dns/), queues and limits (scheduler/).
 */
export { type DestinationPolicy, policyOf } from "./_policy.ts";
export { hasRollups, mxMatches, siteFor } from "./_rollup.ts";
export { type RouteDecision, type RouteOptions, Router } from "./_router.ts";
export { type BackoffRule, DEFAULT_BACKOFF_RULES, matchRule, type ReplyLike } from "./_rules.ts";
export { findRoute, nextHopName } from "./_static.ts";
export { type PlannedNextHop, policyDomain, type TlsPlanner, tlsModeOf } from "./_tls.ts";
