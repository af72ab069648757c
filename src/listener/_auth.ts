/**
 * AUTH on an inbound session (RFC 4954): SASL PLAIN (RFC 4616) and LOGIN, checked against
 * `Bun.password` hashes.
 *
 * Owns: whether AUTH is offered, the exchange (initial response, 334 challenges, `*` to abort),
 * decoding the client's responses, verifying a username and password, and the reply.
 * Does not own: the users table (the app reads it), where AUTH is refused by policy for MAIL
 * (_commands.ts).
 * Invariants:
 * - plain-text passwords exist only in the locals of `authStep` and `verifyUser`;
 * - an unknown user costs the same hash verification as a known one, so timing does not reveal which
 *   users exist;
 * - AUTH is offered only over TLS, or to loopback clients with `allowPlaintextAuth`.
 */
import { isLoopback } from "../lib/index.ts";
import { reply, type SmtpReply } from "../smtp/index.ts";
import { goodbye, type ListenerContext, refuse, type Session, send } from "./_session.ts";

export type AuthMechanism = "PLAIN" | "LOGIN";
export const MECHANISMS: readonly AuthMechanism[] = ["PLAIN", "LOGIN"];

/** Base64 decode that refuses anything that is not canonical base64 (undefined). */
export function decodeBase64(text: string): string | undefined {
  const t = text.trim();
  if (t.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(t)) return undefined;
  return Buffer.from(t, "base64").toString("utf8");
}

/** PLAIN: `authzid NUL authcid NUL passwd`; the authzid must be empty or equal to the authcid. */
export function parsePlain(decoded: string): { user: string; password: string } | undefined {
  const parts = decoded.split("\0");
  if (parts.length !== 3) return undefined;
  const [authz, user, password] = parts as [string, string, string];
  if (user.length === 0 || (authz.length > 0 && authz !== user)) return undefined;
  return { user, password };
}

export async function verifyUser(
  users: Record<string, string>,
  user: string,
  password: string,
): Promise<boolean> {
  const hash = Object.hasOwn(users, user) ? users[user] : undefined;
  if (hash === undefined) {
    // Same work as for a known user: verify against some real hash, then refuse whatever it says.
    const other = Object.values(users)[0];
    if (other !== undefined) await Bun.password.verify(password, other).catch(() => false);
    return false;
  }
  try {
    return await Bun.password.verify(password, hash);
  } catch {
    return false;
  }
}

export function authOffered(ctx: ListenerContext, s: Session): boolean {
  if (ctx.opts.auth === "off" || !ctx.opts.users) return false;
  return s.tls !== undefined || (ctx.opts.allowPlaintextAuth === true && isLoopback(s.ip));
}

export function authStart(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  if (!authOffered(ctx, s)) {
    if (ctx.opts.auth !== "off" && ctx.tlsOptions && !s.tls)
      return reply(530, "5.7.0", "Must issue a STARTTLS command first");
    return reply(503, "5.5.1", "Error: authentication not enabled");
  }
  if (!s.helo) return reply(503, "5.5.1", "Error: send HELO/EHLO first");
  if (s.authUser) return reply(503, "5.5.1", "Error: already authenticated");
  if (s.txn) return reply(503, "5.5.1", "Error: MAIL transaction in progress");
  const [mechText = "", initial] = arg.split(/[ \t]+/);
  const mech = mechText.toUpperCase();
  if (mech !== "PLAIN" && mech !== "LOGIN")
    return reply(504, "5.5.4", "Error: unsupported authentication mechanism");
  s.auth = { mech };
  if (initial === undefined) {
    s.phase = "auth";
    s.out += mech === "PLAIN" ? "334 \r\n" : "334 VXNlcm5hbWU6\r\n";
    return undefined;
  }
  // RFC 4954 §4: "=" is an empty initial response.
  return authStep(ctx, s, initial === "=" ? "" : initial);
}

/** A line read while the session is in the `auth` phase. */
export function authResponse(ctx: ListenerContext, s: Session, line: string): SmtpReply | undefined {
  if (line === "*") {
    s.phase = "command";
    s.auth = undefined;
    return reply(501, "5.0.0", "Authentication aborted");
  }
  return authStep(ctx, s, line);
}

function authStep(ctx: ListenerContext, s: Session, response: string): SmtpReply | undefined {
  const a = s.auth!;
  const decoded = decodeBase64(response);
  if (decoded === undefined) {
    s.phase = "command";
    s.auth = undefined;
    return reply(501, "5.5.2", "Error: cannot decode response");
  }
  let user: string;
  let password: string;
  if (a.mech === "PLAIN") {
    const p = parsePlain(decoded);
    if (!p) {
      s.phase = "command";
      s.auth = undefined;
      return reply(501, "5.5.2", "Error: malformed PLAIN response");
    }
    ({ user, password } = p);
  } else if (a.user === undefined) {
    a.user = decoded;
    s.phase = "auth";
    s.out += "334 UGFzc3dvcmQ6\r\n";
    return undefined;
  } else {
    user = a.user;
    password = decoded;
  }
  s.phase = "command";
  s.auth = undefined;
  s.busy = true;
  s.deadlineMs = Number.POSITIVE_INFINITY;
  void verifyUser(ctx.opts.users ?? {}, user, password).then((ok) => {
    s.busy = false;
    if (s.closed) return;
    s.deadlineMs = ctx.clock.now() + ctx.opts.commandTimeoutMs;
    if (ok) {
      s.authUser = user;
      send(s, reply(235, "2.7.0", "Authentication successful"));
    } else {
      ctx.log.info("authentication failed", { listener: ctx.name, session: s.id, client: s.ip, user });
      refuse(ctx, s, reply(535, "5.7.8", "Error: authentication failed"));
    }
    if (ctx.stopping && !s.closing) goodbye(ctx, s);
    ctx.resume(s);
  });
  return undefined;
}
