/**
 * The application: wiring. The daemon (listeners, control endpoint, engine, signals, reload), the
 * engine (spool, routing, scheduler, deliverer, accept pipeline from the configuration), the start
 * checks `mta check-config` and `mta serve` share.
 *
 * Owns: the public face of app/.
 * Does not own: any of the parts it wires (each module owns its own).
 */
export { Daemon, runDaemon } from "./daemon.ts";
export { Engine, egressPools, schedulerSettings } from "./engine.ts";
export { type StartProblem, startProblems } from "./preflight.ts";
export { tlsPolicyProblems } from "./tlsDelivery.ts";
