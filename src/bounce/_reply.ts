/**
 * The shape of an SMTP reply that bounce/ reads.
 *
 * Owns: a local `SmtpReply` type, structurally identical to smtp/'s, defined here because smtp/ had
 * not landed when bounce/ was written; once it has, this file re-exports smtp/'s type instead.
 */
export interface SmtpReply {
  code: number;
  /** Enhanced status code (RFC 3463) such as "5.1.1", when the peer sent one. */
  enhanced?: string;
  /** Text lines, without the code. */
  lines: string[];
}
