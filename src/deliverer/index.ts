export type { AttemptResult, AttemptTls, DelivererOptions } from "./_deliverer.ts";
export { Deliverer, RFC5321_TIMEOUTS } from "./_deliverer.ts";
export type { PeerTls } from "./_connection.ts";
export type { HostTlsPolicy, TlsSessionReport, TlsVerdict } from "./_tls.ts";
// Re-exported for callers that only know the deliverer; the protocol lives in smtp/.
export type { ReplyClass, ServerCapabilities, SmtpReply } from "../smtp/index.ts";
export { classifyReply, dotStuff, parseEhlo, parseReplyLines } from "../smtp/index.ts";
export type { AttemptTarget, OutboundMessage, RecipientResult, Timeouts } from "./_session.ts";
