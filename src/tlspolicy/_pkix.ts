/**
 * The WebPKI check MTA-STS asks for (RFC 8461 §4.2): the MX certificate chains to a trusted root and
 * names the MX host (RFC 6125 §6.4: a wildcard stands for exactly the leftmost label).
 *
 * Owns: `checkPkix`, the mapping of the TLS stack's verdict to RFC 8460 result types.
 * Does not own: the chain verdict itself (the TLS stack, with the CA bundle), DANE (dane.ts).
 */
import { X509Certificate } from "node:crypto";

export type PkixVerdict =
  | { ok: true }
  | {
      ok: false;
      resultType:
        | "certificate-expired"
        | "certificate-host-mismatch"
        | "certificate-not-trusted"
        | "validation-failure";
      detail: string;
    };

const EXPIRED = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID"]);
const NAME = new Set(["ERR_TLS_CERT_ALTNAME_INVALID", "HOSTNAME_MISMATCH"]);

export function checkPkix(
  peer: { chain: readonly Uint8Array[]; authorizationError?: { code: string; message: string } },
  host: string,
): PkixVerdict {
  const leafDer = peer.chain[0];
  if (!leafDer)
    return { ok: false, resultType: "validation-failure", detail: "the server presented no certificate" };
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(Buffer.from(leafDer));
  } catch (err) {
    return { ok: false, resultType: "validation-failure", detail: `unparsable certificate: ${String(err)}` };
  }
  const e = peer.authorizationError;
  if (e && EXPIRED.has(e.code))
    return {
      ok: false,
      resultType: "certificate-expired",
      detail: `${e.message} (valid until ${leaf.validTo})`,
    };
  if (e && !NAME.has(e.code)) return { ok: false, resultType: "certificate-not-trusted", detail: e.message };
  const named = /^[\d.]+$|:/.test(host)
    ? leaf.checkIP(host) !== undefined
    : leaf.checkHost(host, { partialWildcards: false }) !== undefined;
  if (!named)
    return {
      ok: false,
      resultType: "certificate-host-mismatch",
      detail: `certificate names ${leaf.subjectAltName ?? leaf.subject}, not ${host}`,
    };
  return { ok: true };
}
