/**
 * Inbound SMTP: sessions over `Bun.listen` that hand envelopes and messages to an `Acceptor`.
 *
 * Owns: the session state machine, STARTTLS, AUTH, relay policy, limits, timeouts, graceful close.
 * Does not own: the spool or what "accepted" means (the Acceptor, in app/), protocol syntax (smtp/).
 */
export { startListener } from "./_listener.ts";
export type {
  AcceptResult,
  Acceptor,
  Envelope,
  EnvelopeRecipient,
  Listener,
  ListenerOptions,
} from "./_types.ts";
