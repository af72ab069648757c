/**
 * SMTP as pure protocol, shared by the listener (server) and the deliverer (client). No I/O here.
 *
 * Owns: replies and enhanced codes, reply classification, command and parameter parsing, addresses,
 * dot-stuffing and the streaming DATA reader, xtext, EHLO keywords.
 */
export {
  type Mailbox,
  type PathResult,
  domainOf,
  parseAddress,
  parseMailbox,
  parsePath,
} from "./_address.ts";
export { afterPrefix, type Command, isVerb, parseCommand, VERBS, type Verb } from "./_command.ts";
export { DotUnstuffer, type DotUnstufferOptions, dotStuff, findBareNewline } from "./_dot.ts";
export { NO_CAPABILITIES, parseEhlo, type ServerCapabilities } from "./_ehlo.ts";
export {
  type BodyType,
  type EsmtpParams,
  type NotifyKeyword,
  type ParamSupport,
  type ParamsResult,
  parseEsmtpParams,
  xtextDecode,
  xtextEncode,
} from "./_params.ts";
export {
  classifyReply,
  formatReply,
  MAX_REPLY_LINE_OCTETS,
  parseReplyLines,
  parseStoredReply,
  type ReplyClass,
  reply,
  replyLine,
  replyText,
  SmtpError,
  type SmtpReply,
} from "./_reply.ts";
