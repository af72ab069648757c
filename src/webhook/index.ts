/**
 * Event webhooks: the delivery log's events POSTed to HTTP(S) endpoints, signed, at least once.
 *
 * Owns: the public face of webhook/.
 * Does not own: which events exist (observe/deliveryLog.ts) or the configuration (config/).
 */
export { type Position, readPosition } from "./_follow.ts";
export { signature, type WebhookHealth, WebhookDispatcher, type WebhookOptions } from "./dispatcher.ts";
