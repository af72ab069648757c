/**
 * One mail transaction on an open outbound session: MAIL, RCPT..., DATA (or one BDAT LAST) with
 * per-recipient results, and RSET between messages.
 *
 * Owns: command syntax and parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT), PIPELINING,
 * the pre-flight checks (SIZE 5.3.4, SMTPUTF8 5.6.7, content 5.6.3), what a lost connection means for
 * each recipient.
 * Does not own: opening the session (session.ts), sockets (connection.ts), host order and reuse
 * (deliverer.ts, pool.ts), content conversion (mime/).
 * Invariants: every recipient gets exactly one result; nothing here throws for remote behaviour; no
 * line over 998 octets and no 8-bit octet without BODY=8BITMIME goes out by DATA; binary content goes
 * only by BDAT with BODY=BINARYMIME to a server that offers CHUNKING and BINARYMIME.
 * Line-structured mail goes by DATA (the body is already in memory, and DATA works with every server);
 * only BINARYMIME content goes by BDAT, in one `BDAT <size> LAST` chunk.
 */
import { concatBytes } from "../lib/index.ts";
import { prepareForTransport, scanContent } from "../mime/index.ts";
import {
  classifyReply,
  dotStuff,
  type ReplyClass,
  reply,
  type ServerCapabilities,
  type SmtpReply,
  xtextEncode,
} from "../smtp/index.ts";
import {
  lost,
  type OpenSession,
  type OutboundMessage,
  type RecipientResult,
  type Timeouts,
  timedOut,
} from "./_session.ts";

const RESULT_KIND: Record<ReplyClass, RecipientResult["kind"]> = {
  success: "delivered",
  transient: "transient",
  permanent: "permanent",
};

export type TransactionOutcome =
  /**
   * Every recipient has a result; `reusable` says whether the connection can take another message;
   * `quitting`: QUIT was sent behind the message (its 221 is still to be read).
   */
  | { kind: "done"; results: RecipientResult[]; reusable: boolean; quitting?: boolean }
  /** Nothing was accepted and the server said 421 or the connection died before MAIL's reply. */
  | { kind: "site"; reply: SmtpReply };

function allRecipients(msg: OutboundMessage, kind: RecipientResult["kind"], r: SmtpReply): RecipientResult[] {
  return msg.recipients.map((rc) => ({ index: rc.index, kind, reply: r }));
}

/** What goes on the wire for one message on one session, decided from the EHLO answer. */
export interface WirePlan {
  /** The bytes to send (the stored ones, or converted for this server). */
  body: Uint8Array;
  /** MAIL's BODY= parameter. */
  bodyType: "8BITMIME" | "BINARYMIME" | undefined;
  smtputf8: boolean;
  /** BDAT (binary content) rather than DATA. */
  bdat: boolean;
}

const NON_ASCII = /[^\x00-\x7f]/;

/**
 * Pre-flight checks that need only the EHLO answer (failing them sends nothing), and the plan for
 * the content:
 * - binary content (declared BINARYMIME, or NUL in it) needs CHUNKING and BINARYMIME (RFC 3030 §3),
 *   else a permanent 5.6.3: there is no 7-bit form of it that keeps every byte;
 * - 8-bit content to a server without 8BITMIME is converted to 7-bit (quoted-printable or base64, as
 *   Postfix does by default), unless that is impossible (8-bit header fields) or would break a DKIM
 *   signature: then a permanent 5.6.3 (RFC 6152 §3 forbids sending 8-bit data there as it is);
 * - a line over 998 octets is re-encoded the same way (stored mail has none; this covers mail that
 *   reached the spool before that rule);
 * - SMTPUTF8 is needed for a non-ASCII address whatever the stored attributes say (a DSN to a UTF-8
 *   sender has none), and a server without it gets nothing (5.6.7, RFC 6531 §3.2).
 */
export function planContent(caps: ServerCapabilities, msg: OutboundMessage): WirePlan | RecipientResult[] {
  const refuse = (code: number, enhanced: string, text: string) =>
    allRecipients(msg, "permanent", reply(code, enhanced, text));
  const smtputf8 =
    msg.needsSmtputf8 || NON_ASCII.test(msg.sender) || msg.recipients.some((r) => NON_ASCII.test(r.address));
  if (smtputf8 && !caps.smtputf8)
    return refuse(553, "5.6.7", "message needs SMTPUTF8 but the server does not support it");
  const scan = scanContent(msg.body);
  let plan: WirePlan;
  if (msg.binary || scan.nul) {
    if (!caps.chunking || !caps.binarymime)
      return refuse(
        554,
        "5.6.3",
        "binary content (BODY=BINARYMIME) but the server does not offer CHUNKING and BINARYMIME (RFC 3030)",
      );
    plan = { body: msg.body, bodyType: "BINARYMIME", smtputf8, bdat: true };
  } else {
    const sevenBit = !caps.eightBitMime;
    const p = prepareForTransport(msg.body, { sevenBit, scan });
    if (!p.ok)
      return refuse(
        554,
        "5.6.3",
        sevenBit && scan.eightBit
          ? `8-bit content, the server does not offer 8BITMIME, and ${p.reason} (RFC 6152)`
          : `content cannot be sent as it is: ${p.reason}`,
      );
    const eightBit = !sevenBit && (scan.eightBit || msg.eightBit);
    plan = { body: p.message, bodyType: eightBit ? "8BITMIME" : undefined, smtputf8, bdat: false };
  }
  if (caps.sizeBytes > 0 && plan.body.length > caps.sizeBytes)
    return refuse(
      552,
      "5.3.4",
      `message of ${plan.body.length} bytes exceeds the server's SIZE limit of ${caps.sizeBytes}`,
    );
  return plan;
}

function mailCommand(caps: ServerCapabilities, msg: OutboundMessage, plan: WirePlan): string {
  let cmd = `MAIL FROM:<${msg.sender}>`;
  if (caps.size) cmd += ` SIZE=${plan.body.length}`;
  if (plan.bodyType) cmd += ` BODY=${plan.bodyType}`;
  if (plan.smtputf8) cmd += " SMTPUTF8";
  if (caps.dsn) {
    if (msg.ret) cmd += ` RET=${msg.ret}`;
    if (msg.envId) cmd += ` ENVID=${msg.envId}`;
  }
  return cmd;
}

function rcptCommand(caps: ServerCapabilities, rc: OutboundMessage["recipients"][number]): string {
  let cmd = `RCPT TO:<${rc.address}>`;
  if (caps.dsn) {
    if (rc.notify && rc.notify.length > 0) cmd += ` NOTIFY=${rc.notify.join(",")}`;
    // ORCPT arrives as received (`rfc822;xtext`); a bare address is encoded here (RFC 3461 §4.2).
    if (rc.orcpt) cmd += ` ORCPT=${rc.orcpt.includes(";") ? rc.orcpt : `rfc822;${xtextEncode(rc.orcpt)}`}`;
  }
  return cmd;
}

/**
 * One mail transaction on an open session. With PIPELINING, MAIL, every RCPT and DATA leave in one
 * write (RFC 2920 §3.1) and the replies are read back in order.
 */
export async function transaction(
  s: OpenSession,
  msg: OutboundMessage,
  plan: WirePlan,
  t: Timeouts,
  /** Asked before the message is sent: true sends QUIT right behind it (RFC 2920 §3.1 lets QUIT end a group). */
  quitAfter?: () => boolean,
): Promise<TransactionOutcome> {
  const c = s.conn;
  const caps = s.caps;
  s.messages++;
  s.clean = false;
  const mail = mailCommand(caps, msg, plan);
  const rcpts = msg.recipients.map((rc) => rcptCommand(caps, rc));
  const rcptReplies: SmtpReply[] = [];
  let dataReply: SmtpReply | undefined;

  const failPending = (r: SmtpReply, from: number): TransactionOutcome => {
    const results: RecipientResult[] = [];
    msg.recipients.forEach((rc, i) => {
      const got = rcptReplies[i];
      if (i < from && got && classifyReply(got) !== "success")
        results.push({ index: rc.index, kind: RESULT_KIND[classifyReply(got)], reply: got });
      else results.push({ index: rc.index, kind: "transient", reply: r });
    });
    return { kind: "done", results, reusable: false };
  };
  const broken = (res: { why: "closed" | "timeout"; detail: string }, stage: string) =>
    res.why === "timeout" ? timedOut(`${stage}: ${res.detail}`) : lost(`${stage}: ${res.detail}`);

  if (caps.pipelining) {
    // BDAT is sent only once a recipient was accepted (its bytes cannot be taken back), so it is not
    // in the batch.
    const batch = `${mail}\r\n${rcpts.join("\r\n")}\r\n${plan.bdat ? "" : "DATA\r\n"}`;
    if (!(await c.write(batch, t.mailMs))) return { kind: "site", reply: lost(`MAIL: ${c.closeDetail}`) };
  } else if (!(await c.write(`${mail}\r\n`, t.mailMs)))
    return { kind: "site", reply: lost(`MAIL: ${c.closeDetail}`) };

  const m = await c.read(t.mailMs);
  if (!m.ok) return { kind: "site", reply: broken(m, "MAIL") };
  const mailOk = classifyReply(m.reply) === "success";
  if (!mailOk && m.reply.code === 421) {
    c.destroy();
    return { kind: "site", reply: m.reply };
  }

  for (let i = 0; i < rcpts.length; i++) {
    if (!caps.pipelining) {
      if (!mailOk) break;
      if (!(await c.write(`${rcpts[i]}\r\n`, t.rcptMs)))
        return failPending(lost(`RCPT: ${c.closeDetail}`), i);
    }
    const r = await c.read(t.rcptMs);
    if (!r.ok) return failPending(broken(r, "RCPT"), i);
    rcptReplies.push(r.reply);
    if (r.reply.code === 421) return failPending(r.reply, i + 1);
  }
  const accepted = rcptReplies.filter((r) => classifyReply(r) === "success").length;

  if (plan.bdat) {
    if (!mailOk)
      return {
        kind: "done",
        results: allRecipients(
          msg,
          classifyReply(m.reply) === "permanent" ? "permanent" : "transient",
          m.reply,
        ),
        reusable: !c.closed,
      };
    return bdatLast(s, msg, plan, rcptReplies, accepted, t, failPending, broken);
  }

  if (caps.pipelining) {
    const d = await c.read(t.dataInitMs);
    if (!d.ok) return failPending(broken(d, "DATA"), rcpts.length);
    dataReply = d.reply;
  } else if (mailOk && accepted > 0) {
    const d = await c.command("DATA", t.dataInitMs);
    if (!d.ok) return failPending(broken(d, "DATA"), rcpts.length);
    dataReply = d.reply;
  }

  if (!mailOk) {
    // RFC 2920 §3.1: a server that answers 354 although nothing was accepted gets an empty message.
    if (dataReply?.code === 354) {
      await c.write(".\r\n", t.dataBlockMs);
      await c.read(t.dataDoneMs);
    }
    const kind = RESULT_KIND[classifyReply(m.reply)];
    return {
      kind: "done",
      results: allRecipients(msg, kind === "delivered" ? "transient" : kind, m.reply),
      reusable: !c.closed,
    };
  }

  const results: RecipientResult[] = [];
  let final: SmtpReply | undefined;
  let quitting = false;
  if (dataReply?.code === 354 && accepted === 0) {
    await c.write(".\r\n", t.dataBlockMs);
    s.clean = (await c.read(t.dataDoneMs)).ok;
  } else if (dataReply?.code === 354) {
    // Nothing more for this connection: QUIT goes in the same write as the message, saving a round trip.
    quitting = caps.pipelining && quitAfter?.() === true;
    const stuffed = dotStuff(plan.body);
    const out = quitting && stuffed.length <= 65536 ? concatBytes([stuffed, QUIT_LINE]) : stuffed;
    if (!(await c.write(out, t.dataBlockMs)))
      return failPending(lost(`DATA: ${c.closeDetail}`), rcpts.length);
    if (quitting && out === stuffed && !(await c.write(QUIT_LINE, t.dataBlockMs))) quitting = false;
    const f = await c.read(t.dataDoneMs);
    if (!f.ok) return failPending(broken(f, "end of data"), rcpts.length);
    // With QUIT behind the data, a server that never answers the dot but answers QUIT gives 221
    // first: that is no acceptance of the message (it must not count as delivered).
    if (quitting && f.reply.code === 221)
      return failPending(lost("end of data: no reply, only the one to QUIT"), rcpts.length);
    final = f.reply;
    s.clean = true;
  } else if (dataReply) {
    // DATA refused: the accepted recipients share its fate; a 2xx here is nonsense, so transient.
    final =
      classifyReply(dataReply) === "success" ? reply(451, "4.5.0", "DATA answered without 354") : dataReply;
  }
  msg.recipients.forEach((rc, i) => {
    const rr = rcptReplies[i]!;
    if (classifyReply(rr) !== "success")
      results.push({ index: rc.index, kind: RESULT_KIND[classifyReply(rr)], reply: rr });
    else {
      const f = final ?? reply(451, "4.5.0", "no reply to DATA");
      results.push({ index: rc.index, kind: RESULT_KIND[classifyReply(f)], reply: f });
    }
  });
  if (quitting) return { kind: "done", results, reusable: false, quitting: true };
  return { kind: "done", results, reusable: !c.closed && final?.code !== 421 };
}

const QUIT_LINE = new TextEncoder().encode("QUIT\r\n");

/**
 * The whole message as one `BDAT <size> LAST` chunk (RFC 3030 §2), once at least one recipient was
 * accepted; its reply is every accepted recipient's result, as the reply to the final dot is.
 */
async function bdatLast(
  s: OpenSession,
  msg: OutboundMessage,
  plan: WirePlan,
  rcptReplies: SmtpReply[],
  accepted: number,
  t: Timeouts,
  failPending: (r: SmtpReply, from: number) => TransactionOutcome,
  broken: (res: { why: "closed" | "timeout"; detail: string }, stage: string) => SmtpReply,
): Promise<TransactionOutcome> {
  const c = s.conn;
  let final: SmtpReply | undefined;
  if (accepted > 0) {
    if (
      !(await c.write(`BDAT ${plan.body.length} LAST\r\n`, t.dataBlockMs)) ||
      !(await c.write(plan.body, t.dataBlockMs))
    )
      return failPending(lost(`BDAT: ${c.closeDetail}`), rcptReplies.length);
    const f = await c.read(t.dataDoneMs);
    if (!f.ok) return failPending(broken(f, "BDAT"), rcptReplies.length);
    final = f.reply;
    s.clean = true;
  }
  const results = msg.recipients.map((rc, i): RecipientResult => {
    const rr = rcptReplies[i]!;
    const r = classifyReply(rr) !== "success" ? rr : (final ?? reply(451, "4.5.0", "no reply to BDAT"));
    return { index: rc.index, kind: RESULT_KIND[classifyReply(r)], reply: r };
  });
  return { kind: "done", results, reusable: !c.closed && final?.code !== 421 };
}

/** RSET before reusing a connection (RFC 5321 §4.1.1.5); false means the connection is dead. */
export async function reset(s: OpenSession, t: Timeouts): Promise<boolean> {
  const r = await s.conn.command("RSET", t.rsetMs);
  if (r.ok && r.reply.code === 250) return true;
  s.conn.destroy();
  return false;
}
