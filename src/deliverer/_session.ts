/**
 * Opening one outbound SMTP session: connection, greeting, EHLO/HELO, STARTTLS by the host's TLS
 * policy, AUTH; the shapes of a message, its target and its results that the transaction uses.
 *
 * Owns: what makes a host unreachable (site-level) or a policy failure rather than a recipient's
 * problem, and the replies that stand for a lost connection or a timeout.
 * Does not own: sockets (connection.ts), the TLS handshake and its checks (tls.ts), the mail
 * transaction (transaction.ts), host order and reuse (deliverer.ts, pool.ts).
 * Invariants: an open session has read a 220 greeting and a 250 to EHLO/HELO (and after STARTTLS, a
 * second one); credentials go out only over TLS, or to a loopback smarthost; nothing here throws
 * for remote behaviour.
 */
import { isLoopback } from "../lib/index.ts";
import { SmtpConnection } from "./_connection.ts";
import { type HostTlsPolicy, legacyTlsPolicy, negotiateTls, type TlsSessionReport } from "./_tls.ts";
import { NO_CAPABILITIES, parseEhlo, reply, type ServerCapabilities, type SmtpReply } from "../smtp/index.ts";

export interface Timeouts {
  connectMs: number;
  greetingMs: number;
  ehloMs: number;
  mailMs: number;
  rcptMs: number;
  dataInitMs: number;
  dataBlockMs: number;
  dataDoneMs: number;
  rsetMs: number;
  quitMs: number;
  idleMs: number;
}

export interface OutboundMessage {
  id: string;
  /** "" = null sender. */
  sender: string;
  recipients: { index: number; address: string; notify?: string[]; orcpt?: string }[];
  envId?: string;
  ret?: "FULL" | "HDRS";
  /** Exact bytes as stored (CRLF lines, not dot-stuffed). */
  body: Uint8Array;
  needsSmtputf8: boolean;
  eightBit: boolean;
  /** Received as BODY=BINARYMIME (RFC 3030): may hold NUL, bare CR/LF and lines of any length. */
  binary?: boolean;
}

export interface AttemptTarget {
  /** `tls`: this host's TLS policy (DANE, MTA-STS, ...); without it the target's `tls`/`tlsVerify` apply. */
  hosts: { name: string; ip: string; port: number; tls?: HostTlsPolicy }[];
  ehloName: string;
  sourceAddress?: string;
  tls: "off" | "opportunistic" | "required";
  tlsVerify: boolean;
  auth?: { username: string; password: string };
  /**
   * Asked when the transaction is over: whether to keep the connection for the next message (the
   * destination has more mail coming). Default: keep it. No: QUIT now instead of holding an idle
   * connection that nothing will use (Postfix's connection cache on demand).
   */
  keepConnection?: () => boolean;
}

export interface RecipientResult {
  index: number;
  kind: "delivered" | "transient" | "permanent";
  reply: SmtpReply;
}

export interface OpenSession {
  conn: SmtpConnection;
  caps: ServerCapabilities;
  host: { name: string; ip: string; port: number };
  messages: number;
  /** The TLS policy this connection was set up under, and whether the peer passed its verdict. */
  tlsPolicy?: { name: string; verified: boolean };
  /**
   * The last transaction ended with the reply to the end of data, which resets the server's state
   * (RFC 5321 §4.1.1.4): the next one needs no RSET first, saving a round trip per message.
   */
  clean?: boolean;
}

/** `tlsReport`: what became of TLS on this new connection, once EHLO was answered. */
export type OpenResult =
  | { kind: "open"; session: OpenSession; tlsReport?: TlsSessionReport }
  /** Site-level: no connection, no greeting, a 421/5xx greeting or EHLO: try the next host. */
  | { kind: "unreachable"; reply: SmtpReply; tlsReport?: TlsSessionReport }
  /** Opportunistic TLS handshake failed: the caller retries this host in plain text. */
  | { kind: "tls-failed"; reply: SmtpReply; tlsReport?: TlsSessionReport }
  /** Our policy cannot be met here (TLS required, AUTH failed): the next host may do better. */
  | { kind: "policy"; reply: SmtpReply; tlsReport?: TlsSessionReport };

export function lost(detail: string): SmtpReply {
  return reply(451, "4.4.2", `connection lost: ${detail}`);
}

export function timedOut(detail: string): SmtpReply {
  return reply(451, "4.4.2", `timeout: ${detail}`);
}

export async function openSession(
  host: { name: string; ip: string; port: number; tls?: HostTlsPolicy },
  target: AttemptTarget,
  t: Timeouts,
  opts: { plainOnly: boolean },
): Promise<OpenResult> {
  const c = await SmtpConnection.connect({
    ip: host.ip,
    port: host.port,
    sourceAddress: target.sourceAddress,
    timeoutMs: t.connectMs,
  });
  if (!(c instanceof SmtpConnection)) return { kind: "unreachable", reply: reply(421, "4.4.1", c.error) };
  const fail = (kind: "unreachable" | "policy", r: SmtpReply): OpenResult => {
    c.destroy();
    return { kind, reply: r };
  };

  const greeting = await c.read(t.greetingMs);
  if (!greeting.ok) return fail("unreachable", reply(421, "4.4.2", `greeting: ${greeting.detail}`));
  if (greeting.reply.code !== 220) {
    await c.quit(t.quitMs);
    return { kind: "unreachable", reply: greeting.reply };
  }

  let caps = await hello(c, target.ehloName, t);
  if ("reply" in caps) return fail("unreachable", caps.reply);

  const policy = host.tls ?? legacyTlsPolicy(target, host);
  let tlsReport: TlsSessionReport | undefined;
  let verified = false;
  if (!opts.plainOnly) {
    const n = await negotiateTls(c, host, caps.caps, policy, t.ehloMs, () => hello(c, target.ehloName, t));
    if (n.kind === "unreachable") return fail("unreachable", n.reply);
    if (n.kind === "policy" || n.kind === "tls-failed") {
      if (!c.closed) await c.quit(t.quitMs);
      return { kind: n.kind, reply: n.reply, tlsReport: n.report };
    }
    caps = { caps: n.caps };
    verified = n.verified;
    tlsReport = n.report;
  }

  if (target.auth) {
    // Credentials travel only over TLS, except to a loopback smarthost (RFC 4954 §4 leaves it to policy).
    if (!c.tls && !isLoopback(host.ip)) {
      await c.quit(t.quitMs);
      return {
        kind: "policy",
        reply: reply(421, "4.7.0", "AUTH configured but the connection is not encrypted"),
      };
    }
    const r = await authenticate(c, caps.caps, target.auth, t);
    if (r) {
      if (c.closed) return { kind: "policy", reply: r };
      await c.quit(t.quitMs);
      return { kind: "policy", reply: r };
    }
  }
  return {
    kind: "open",
    session: { conn: c, caps: caps.caps, host, messages: 0, tlsPolicy: { name: policy.name, verified } },
    ...(tlsReport ? { tlsReport } : {}),
  };
}

/** EHLO, and HELO when the server does not know EHLO (RFC 5321 §3.2). */
async function hello(
  c: SmtpConnection,
  name: string,
  t: Timeouts,
): Promise<{ caps: ServerCapabilities } | { reply: SmtpReply }> {
  const r = await c.command(`EHLO ${name}`, t.ehloMs);
  if (!r.ok) return { reply: lost(`EHLO: ${r.detail}`) };
  if (r.reply.code === 250) return { caps: parseEhlo(r.reply) };
  if (r.reply.code >= 500 && r.reply.code < 600) {
    const h = await c.command(`HELO ${name}`, t.ehloMs);
    if (!h.ok) return { reply: lost(`HELO: ${h.detail}`) };
    if (h.reply.code === 250) return { caps: NO_CAPABILITIES };
    return { reply: h.reply };
  }
  return { reply: r.reply };
}

/** AUTH PLAIN when offered, else LOGIN. Returns the failure reply, or undefined on success. */
async function authenticate(
  c: SmtpConnection,
  caps: ServerCapabilities,
  auth: { username: string; password: string },
  t: Timeouts,
): Promise<SmtpReply | undefined> {
  const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");
  let r: Awaited<ReturnType<SmtpConnection["command"]>>;
  if (caps.auth.includes("PLAIN")) {
    r = await c.command(`AUTH PLAIN ${b64(`\0${auth.username}\0${auth.password}`)}`, t.ehloMs);
  } else if (caps.auth.includes("LOGIN")) {
    r = await c.command("AUTH LOGIN", t.ehloMs);
    if (r.ok && r.reply.code === 334) r = await c.command(b64(auth.username), t.ehloMs);
    if (r.ok && r.reply.code === 334) r = await c.command(b64(auth.password), t.ehloMs);
  } else {
    return reply(421, "4.7.0", "AUTH configured but the server offers neither PLAIN nor LOGIN");
  }
  if (!r.ok) return lost(`AUTH: ${r.detail}`);
  if (r.reply.code === 235) return undefined;
  // A refused login is our configuration's fault, not the recipients': keep the mail (transient).
  return r.reply;
}
