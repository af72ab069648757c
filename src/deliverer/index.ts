export type { AttemptResult, DelivererOptions } from "./_deliverer.ts";
export { Deliverer, RFC5321_TIMEOUTS } from "./_deliverer.ts";
export type { ReplyClass, ServerCapabilities, SmtpReply } from "./_protocol.ts";
export { classifyReply, dotStuff, parseEhlo, parseReplyLines } from "./_protocol.ts";
export type { AttemptTarget, OutboundMessage, RecipientResult, Timeouts } from "./_session.ts";
