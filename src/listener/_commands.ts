/**
 * The command state machine of RFC 5321: one command line in, one reply (or none yet) out.
 *
 * Owns: dispatching a command by its verb; EHLO/HELO and the extensions offered (PIPELINING, SIZE,
 * 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS, AUTH, DSN, CHUNKING, BINARYMIME); MAIL and RCPT
 * (the transaction, relay policy, `<postmaster>`, the recipient limit, the Acceptor's recipient
 * check); RSET, NOOP, QUIT, VRFY, EXPN, HELP and the junk command limit.
 * Does not own: DATA and BDAT (_message.ts), STARTTLS (_tls.ts), AUTH (_auth.ts), protocol syntax
 * (smtp/), writing replies (_session.ts).
 * Invariants: a handler returns its reply as a value (undefined when it wrote or will write it
 * itself); a transaction exists only after a valid MAIL and holds at most `maxRecipients` recipients.
 */
import {
  afterPrefix,
  parseCommand,
  parseEsmtpParams,
  parsePath,
  reply,
  type SmtpReply,
} from "../smtp/index.ts";
import { authOffered, authStart, MECHANISMS } from "./_auth.ts";
import { bdat, data } from "./_message.ts";
import { countError, endSession, type ListenerContext, type Session, send } from "./_session.ts";
import { starttls } from "./_tls.ts";
import type { EnvelopeRecipient } from "./_types.ts";

export function command(ctx: ListenerContext, s: Session, line: string): SmtpReply | undefined {
  const { verb, arg } = parseCommand(line);
  switch (verb) {
    case "EHLO":
    case "HELO":
      return hello(ctx, s, verb, arg);
    case "MAIL":
      return mail(ctx, s, arg);
    case "RCPT":
      return rcpt(ctx, s, arg);
    case "DATA":
      return data(ctx, s, arg);
    case "BDAT":
      return bdat(ctx, s, arg);
    case "RSET":
      if (arg) return reply(501, "5.5.4", "Syntax: RSET");
      s.txn = undefined;
      return junk(ctx, s, reply(250, "2.0.0", "Ok"));
    case "NOOP":
      return junk(ctx, s, reply(250, "2.0.0", "Ok"));
    case "QUIT":
      endSession(s);
      return reply(221, "2.0.0", "Bye");
    case "VRFY":
      // RFC 5321 §3.5.3: 252 when we will not verify but will accept mail for the address.
      if (!arg) return reply(501, "5.5.4", "Syntax: VRFY address");
      return junk(
        ctx,
        s,
        reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"),
      );
    case "EXPN":
      return reply(502, "5.5.1", "Error: command not implemented");
    case "HELP":
      return junk(
        ctx,
        s,
        reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"),
      );
    case "STARTTLS":
      return starttls(ctx, s, arg);
    case "AUTH":
      return authStart(ctx, s, arg);
    default:
      return reply(500, "5.5.2", "Error: command not recognized");
  }
}

/**
 * NOOP, RSET, VRFY and HELP are answered as usual, but past `maxJunkCommands` since the last accepted
 * message each one counts as an error, so a client cannot hold a session with them forever (Postfix's
 * `smtpd_junk_command_limit`, default 100, reset after mail is accepted).
 */
function junk(ctx: ListenerContext, s: Session, r: SmtpReply): SmtpReply | undefined {
  if (++s.junk <= ctx.opts.maxJunkCommands) return r;
  send(s, r);
  countError(ctx, s, "junk");
  return undefined;
}

function hello(ctx: ListenerContext, s: Session, verb: "EHLO" | "HELO", arg: string): SmtpReply | undefined {
  const opts = ctx.opts;
  if (!arg) return reply(501, "5.5.4", `Syntax: ${verb} hostname`);
  s.helo = arg.split(/[ \t]/)[0]!;
  s.esmtp = verb === "EHLO";
  s.txn = undefined; // RFC 5321 §4.1.4: EHLO resets the state as RSET does
  if (verb === "HELO") return reply(250, undefined, opts.hostname);
  const lines = [
    opts.hostname,
    "PIPELINING",
    `SIZE ${opts.maxMessageBytes}`,
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
  ];
  if (ctx.tlsOptions && !s.tlsStarted) lines.push("STARTTLS");
  if (authOffered(ctx, s) && !s.authUser) lines.push(`AUTH ${MECHANISMS.join(" ")}`);
  lines.push("DSN", "CHUNKING", "BINARYMIME");
  return { code: 250, lines };
}

function mail(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  if (!s.helo) return reply(503, "5.5.1", "Error: send HELO/EHLO first");
  if (s.txn) return reply(503, "5.5.1", "Error: nested MAIL command");
  if (ctx.opts.auth === "required" && !s.authUser) return reply(530, "5.7.0", "Authentication required");
  const rest = afterPrefix(arg, "FROM:");
  if (rest === undefined) return reply(501, "5.5.4", "Syntax: MAIL FROM:<address>");
  const path = parsePath(rest, { allowNull: true, role: "sender" });
  if (!path.ok) return path.reply;
  if (path.rest && !s.esmtp) return reply(555, "5.5.4", "Parameters need EHLO");
  const p = parseEsmtpParams(path.rest, "MAIL");
  if (!p.ok) return p.reply;
  if (p.params.sizeBytes !== undefined && p.params.sizeBytes > ctx.opts.maxMessageBytes)
    return reply(552, "5.3.4", "Message size exceeds fixed limit");
  if (path.mailbox?.utf8 && !p.params.smtputf8)
    return reply(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8");
  s.txn = { sender: path.address, params: p.params, recipients: [], chunkBytes: 0 };
  return reply(250, "2.1.0", "Ok");
}

function rcpt(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  const opts = ctx.opts;
  const txn = s.txn;
  if (!txn) return reply(503, "5.5.1", "Error: need MAIL command");
  if (txn.chunks) return reply(503, "5.5.1", "Error: RCPT after BDAT");
  const rest = afterPrefix(arg, "TO:");
  if (rest === undefined) return reply(501, "5.5.4", "Syntax: RCPT TO:<address>");
  // RFC 5321 §4.5.1: `<Postmaster>` without a domain (any case) MUST be accepted, from anyone: it is
  // how a stranger reports a problem. It is the postmaster of this host, so it goes to
  // postmaster@<hostname> (route that domain to the operators' mailbox).
  const pm = /^<postmaster>(?=$|[ \t])/i.exec(rest.trimStart());
  if (pm) {
    const params = parseEsmtpParams(rest.trimStart().slice(pm[0].length).trim(), "RCPT");
    if (!params.ok) return params.reply;
    if (txn.recipients.length >= opts.maxRecipients) return reply(452, "4.5.3", "Error: too many recipients");
    const r: EnvelopeRecipient = { address: `postmaster@${opts.hostname}` };
    if (params.params.notify) r.notify = params.params.notify;
    if (params.params.orcpt) r.orcpt = params.params.orcpt;
    txn.recipients.push(r);
    return reply(250, "2.1.5", "Ok");
  }
  const path = parsePath(rest, { allowNull: false, role: "recipient" });
  if (!path.ok) return path.reply;
  if (path.rest && !s.esmtp) return reply(555, "5.5.4", "Parameters need EHLO");
  const p = parseEsmtpParams(path.rest, "RCPT");
  if (!p.ok) return p.reply;
  if (path.mailbox?.utf8 && !txn.params.smtputf8)
    return reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8");
  if (txn.recipients.length >= opts.maxRecipients) return reply(452, "4.5.3", "Error: too many recipients"); // RFC 5321 §4.5.3.1.10
  const relay = s.relayAllowed || Boolean(s.authUser);
  const verdict = ctx.acceptor.checkRecipient?.({ sender: txn.sender, recipient: path.address, relay });
  if (verdict !== undefined && verdict !== "local") return verdict;
  if (!relay && verdict !== "local") return reply(554, "5.7.1", "Relay access denied");
  const r: EnvelopeRecipient = { address: path.address };
  if (p.params.notify) r.notify = p.params.notify;
  if (p.params.orcpt) r.orcpt = p.params.orcpt;
  txn.recipients.push(r);
  return reply(250, "2.1.5", "Ok");
}
