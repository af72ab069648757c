/**
 * STARTTLS on an outbound session under a per-host TLS policy: whether to ask, whether it may fail,
 * and what the certificate must prove.
 *
 * Owns: `HostTlsPolicy` (what the deliverer is told per MX host), `negotiateTls` (STARTTLS, the
 * handshake, the policy's verdict on the peer, the second EHLO), `legacyTlsPolicy` (the per-route
 * `tls`/`tls_verify` settings expressed as a policy), and the session report each new connection gives
 * back for TLS-RPT and the delivery log.
 * Does not own: deciding the policy (tlspolicy/ does: DANE, MTA-STS), the socket (connection.ts).
 * Invariants: under `starttls: "require"` no command after EHLO is ever sent in plain text, whatever
 * the server offers or answers (RFC 8461 §4.2, RFC 7672 §2.2); a connection whose policy verdict failed
 * under `onVerifyFailure: "defer"` carries no mail.
 */
import type { PeerTls, SmtpConnection } from "./_connection.ts";
import { reply, type ServerCapabilities, type SmtpReply } from "../smtp/index.ts";

/** The verdict of a policy on the peer's certificates; `resultType` is an RFC 8460 §4.3 result type. */
export type TlsVerdict = { ok: true } | { ok: false; resultType: string; detail: string };

export interface HostTlsPolicy {
  /** How the delivery log and the metrics name it: dane, sts-enforce, sts-testing, required, ... */
  name: string;
  /** off: never STARTTLS; try: when offered, plain otherwise; require: TLS or nothing (4.7.4/4.7.5). */
  starttls: "off" | "try" | "require";
  /** Judges the peer after the handshake; undefined: any certificate will do (unauthenticated TLS). */
  verify?: (peer: PeerTls) => TlsVerdict;
  /**
   * A failed verdict: `defer` this host (4.7.5; the next MX may do better), `plain` (close and retry in
   * plain text: what an opportunistic route with `tls_verify` always did), `report` (carry on over
   * TLS and only report it: MTA-STS testing).
   */
  onVerifyFailure: "defer" | "plain" | "report";
  /** SNI name and the name the TLS stack checks (the MX host name); undefined for address literals. */
  servername?: string;
  /** PEM bundle for the TLS stack's chain verdict; undefined: the runtime's root store. */
  ca?: string;
  /** Part of the pool key: connections set up under the same key give the same guarantees. */
  key: string;
}

/** One new connection's TLS, as TLS-RPT counts sessions (RFC 8460 §4.4) and the log shows them. */
export interface TlsSessionReport {
  host: string;
  ip: string;
  policy: string;
  /** `success` or an RFC 8460 result type; `plain`: no TLS and none required or reportable. */
  result: string;
  detail?: string;
}

export type NegotiateResult =
  | { kind: "ok"; caps: ServerCapabilities; verified: boolean; report: TlsSessionReport }
  /** The handshake (or a `plain` verdict) failed where plain text is allowed: retry without TLS. */
  | { kind: "tls-failed"; reply: SmtpReply; report: TlsSessionReport }
  /** The policy cannot be met on this host: the connection is closed, the next host may do better. */
  | { kind: "policy"; reply: SmtpReply; report: TlsSessionReport }
  | { kind: "unreachable"; reply: SmtpReply };

/** A route's `tls` and `tls_verify` (no policy lookups), as a host policy. */
export function legacyTlsPolicy(
  target: { tls: "off" | "opportunistic" | "required"; tlsVerify: boolean },
  host: { name: string },
): HostTlsPolicy {
  const servername = /^[\d.]+$|:/.test(host.name) ? undefined : host.name;
  return {
    name: target.tls,
    starttls: target.tls === "off" ? "off" : target.tls === "required" ? "require" : "try",
    ...(target.tlsVerify
      ? {
          verify: (peer: PeerTls): TlsVerdict =>
            peer.authorizationError
              ? { ok: false, resultType: "certificate-not-trusted", detail: peer.authorizationError.message }
              : { ok: true },
        }
      : {}),
    onVerifyFailure: target.tls === "required" ? "defer" : "plain",
    ...(servername ? { servername } : {}),
    key: `${target.tls}/${target.tlsVerify ? "v" : "nv"}`,
  };
}

/**
 * STARTTLS after the first EHLO, under `policy`. `hello` repeats EHLO after the handshake
 * (RFC 3207 §4.2: what the server said before TLS is forgotten).
 */
export async function negotiateTls(
  c: SmtpConnection,
  host: { name: string; ip: string },
  caps: ServerCapabilities,
  policy: HostTlsPolicy,
  timeoutMs: number,
  hello: () => Promise<{ caps: ServerCapabilities } | { reply: SmtpReply }>,
): Promise<NegotiateResult> {
  const report = (result: string, detail?: string): TlsSessionReport => ({
    host: host.name,
    ip: host.ip,
    policy: policy.name,
    result,
    ...(detail ? { detail } : {}),
  });
  if (policy.starttls === "off") return { kind: "ok", caps, verified: false, report: report("plain") };
  /** No TLS to be had: a policy failure where TLS is required, else plain text (reported). */
  const withoutTls = (detail: string): NegotiateResult =>
    policy.starttls === "require"
      ? {
          kind: "policy",
          reply: reply(421, "4.7.4", `TLS required (${policy.name}) but ${detail}`),
          report: report("starttls-not-supported", detail),
        }
      : { kind: "ok", caps, verified: false, report: report("starttls-not-supported", detail) };
  // A server that hides STARTTLS (or an attacker who removed it from the EHLO reply, RFC 3207 §6).
  if (!caps.starttls) return withoutTls("the server does not offer STARTTLS");
  const r = await c.command("STARTTLS", timeoutMs);
  if (!r.ok)
    return { kind: "unreachable", reply: reply(451, "4.4.2", `connection lost: STARTTLS: ${r.detail}`) };
  if (r.reply.code !== 220) return withoutTls(`STARTTLS refused: ${r.reply.code}`);
  const hs = await c.startTls({
    ...(policy.servername ? { servername: policy.servername } : {}),
    verify: false,
    ...(policy.ca !== undefined ? { ca: policy.ca } : {}),
    timeoutMs,
  });
  if (!hs.ok) {
    const r2 = reply(421, "4.7.5", hs.detail);
    const rep = report("validation-failure", hs.detail);
    return policy.starttls === "require"
      ? { kind: "policy", reply: r2, report: rep }
      : { kind: "tls-failed", reply: r2, report: rep };
  }
  let verified = false;
  let verdictFailure: { resultType: string; detail: string } | undefined;
  if (policy.verify) {
    const v = policy.verify(c.peer ?? { chain: [] });
    if (v.ok) verified = true;
    else verdictFailure = v;
  }
  if (verdictFailure && policy.onVerifyFailure !== "report") {
    const r2 = reply(421, "4.7.5", `TLS certificate rejected (${policy.name}): ${verdictFailure.detail}`);
    const rep = report(verdictFailure.resultType, verdictFailure.detail);
    // Nothing more is said on this connection: it could be an attacker's.
    c.destroy();
    return policy.onVerifyFailure === "defer" || policy.starttls === "require"
      ? { kind: "policy", reply: r2, report: rep }
      : { kind: "tls-failed", reply: r2, report: rep };
  }
  const again = await hello();
  if ("reply" in again) return { kind: "unreachable", reply: again.reply };
  return {
    kind: "ok",
    caps: again.caps,
    verified,
    report: verdictFailure ? report(verdictFailure.resultType, verdictFailure.detail) : report("success"),
  };
}
