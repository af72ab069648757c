/**
 * TLS on an inbound session: STARTTLS (RFC 3207) and what the handshake negotiated.
 *
 * Owns: answering STARTTLS, upgrading the socket, forgetting the pre-TLS state, recording the TLS
 * version and cipher (for the envelope and the `Received:` line) once the TLS socket is open.
 * Does not own: the listener's socket handlers (_listener.ts), implicit TLS's listening socket.
 * Invariants:
 * - CVE-2011-0411: bytes the client pipelined behind STARTTLS in plaintext are dropped, never executed;
 * - RFC 3207 §4.2: HELO, the transaction and AUTH are forgotten at the upgrade;
 * - after `upgradeTLS` `s.socket` is the TLS socket: Bun keeps handing the plain socket the raw
 *   encrypted bytes (bun issue 26297), and every handler ignores a socket that is not `s.socket`.
 */
import type { Socket } from "bun";
import { reply, type SmtpReply } from "../smtp/index.ts";
import { flush, type ListenerContext, type Session, send } from "./_session.ts";

export function starttls(ctx: ListenerContext, s: Session, arg: string): SmtpReply | undefined {
  if (!ctx.tlsOptions) return reply(502, "5.5.1", "Error: command not implemented");
  if (s.tlsStarted) return reply(503, "5.5.1", "Error: TLS already active");
  if (arg) return reply(501, "5.5.4", "Syntax: STARTTLS");
  send(s, reply(220, "2.0.0", "Ready to start TLS"));
  // CVE-2011-0411: whatever the client pipelined after STARTTLS in plaintext is dropped, never executed.
  s.inbuf = undefined;
  s.inOff = 0;
  flush(s);
  if (s.closed || s.pending) {
    // The 220 did not fit in the socket buffer: the client is not reading; give up on it.
    s.socket.terminate();
    return undefined;
  }
  // RFC 3207 §4.2: forget everything learned before the handshake.
  s.helo = "";
  s.esmtp = false;
  s.txn = undefined;
  s.authUser = undefined;
  s.tlsStarted = true;
  const [, tlsSocket] = s.socket.upgradeTLS<Session>({
    data: s,
    tls: ctx.tlsOptions,
    socket: ctx.handlers,
  });
  s.socket = tlsSocket;
  return undefined;
}

/** Records the negotiated TLS of the session's current socket (once; the plain socket is ignored). */
export function noteTls(s: Session, socket: Socket<Session>): void {
  if (s.tls || socket !== s.socket) return;
  try {
    s.tls = { protocol: socket.getTLSVersion() ?? "TLS", cipher: socket.getCipher()?.name ?? "unknown" };
  } catch {
    s.tls = { protocol: "TLS", cipher: "unknown" };
  }
}
