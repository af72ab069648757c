/**
 * DANE for SMTP (RFC 7672, RFC 7671): which TLSA records can be used, and whether a server's
 * certificate chain matches them.
 *
 * Owns: `splitTlsa` (usable vs unusable records), `checkDane` (the chain against usable records),
 * `tlsaText` (a record in presentation form, for logs and TLS-RPT's policy-string).
 * Does not own: the lookups (plan.ts asks the resolver), the handshake (deliverer/).
 * Rules applied:
 * - Only DANE-TA(2) and DANE-EE(3) are usable in SMTP; PKIX-TA(0) and PKIX-EE(1) are not (RFC 7672
 *   §3.1.3), nor unknown selectors, matching types, or digests of the wrong length (RFC 7671 §4.1).
 * - DANE-EE(3): the server's own certificate or key matches; names and dates are not checked
 *   (RFC 7672 §3.1.1: the record is the authentication).
 * - DANE-TA(2): a certificate the server presents (leaf excluded) matches; every certificate below it
 *   must be issued and signed by the next one and be within its validity period; the leaf must name
 *   one of the reference identifiers (RFC 7672 §3.2.2: the MX host name, and the next-hop domain).
 */
import { createHash, X509Certificate } from "node:crypto";
import type { TlsaRecord } from "../dns/index.ts";

export type DaneVerdict =
  | { ok: true; matched: string }
  | {
      ok: false;
      resultType: "tlsa-invalid" | "certificate-host-mismatch" | "certificate-expired" | "validation-failure";
      detail: string;
    };

const DIGEST_BYTES: Record<number, number> = { 1: 32, 2: 64 };

export function isUsableTlsa(r: TlsaRecord): boolean {
  if (r.usage !== 2 && r.usage !== 3) return false;
  if (r.selector !== 0 && r.selector !== 1) return false;
  if (r.matchingType === 0) return r.data.length > 0;
  return DIGEST_BYTES[r.matchingType] === r.data.length;
}

export function splitTlsa(records: readonly TlsaRecord[]): { usable: TlsaRecord[]; unusable: TlsaRecord[] } {
  const usable: TlsaRecord[] = [];
  const unusable: TlsaRecord[] = [];
  for (const r of records) (isUsableTlsa(r) ? usable : unusable).push(r);
  return { usable, unusable };
}

export function tlsaText(r: TlsaRecord): string {
  return `${r.usage} ${r.selector} ${r.matchingType} ${Buffer.from(r.data).toString("hex")}`;
}

function selected(cert: X509Certificate, selector: number): Buffer {
  return selector === 0 ? cert.raw : (cert.publicKey.export({ type: "spki", format: "der" }) as Buffer);
}

function matches(cert: X509Certificate, r: TlsaRecord): boolean {
  const data = selected(cert, r.selector);
  const want = Buffer.from(r.data);
  if (r.matchingType === 0) return data.equals(want);
  const digest = createHash(r.matchingType === 1 ? "sha256" : "sha512")
    .update(data)
    .digest();
  return digest.equals(want);
}

function parse(chain: readonly Uint8Array[]): X509Certificate[] | string {
  try {
    return chain.map((der) => new X509Certificate(Buffer.from(der)));
  } catch (err) {
    return `unparsable certificate: ${err instanceof Error ? err.message : String(err)}`;
  }
}

/** Whether `cert` is within its validity period at `nowMs`. */
function current(cert: X509Certificate, nowMs: number): boolean {
  return Date.parse(cert.validFrom) <= nowMs && nowMs <= Date.parse(cert.validTo);
}

/**
 * The chain (leaf first, as the server sent it) against the usable TLSA records of the host.
 * `names`: the reference identifiers for DANE-TA (MX host name first).
 */
export function checkDane(
  chainDer: readonly Uint8Array[],
  usable: readonly TlsaRecord[],
  names: readonly string[],
  nowMs: number,
): DaneVerdict {
  const chain = parse(chainDer);
  if (typeof chain === "string") return { ok: false, resultType: "validation-failure", detail: chain };
  const leaf = chain[0];
  if (!leaf)
    return { ok: false, resultType: "validation-failure", detail: "the server presented no certificate" };
  for (const r of usable) if (r.usage === 3 && matches(leaf, r)) return { ok: true, matched: tlsaText(r) };

  let taProblem: Exclude<DaneVerdict, { ok: true }> | undefined;
  for (const r of usable) {
    if (r.usage !== 2) continue;
    for (let k = 1; k < chain.length; k++) {
      if (!matches(chain[k]!, r)) continue;
      const problem = pathProblem(chain.slice(0, k + 1), nowMs);
      if (problem) {
        taProblem ??= problem;
        continue;
      }
      const name = names.find((n) => leaf.checkHost(n, { partialWildcards: false }) !== undefined);
      if (name === undefined) {
        taProblem = {
          ok: false,
          resultType: "certificate-host-mismatch",
          detail: `certificate names ${leaf.subjectAltName ?? leaf.subject}, none of ${names.join(", ")}`,
        };
        continue;
      }
      return { ok: true, matched: tlsaText(r) };
    }
  }
  if (taProblem) return taProblem;
  return {
    ok: false,
    resultType: "tlsa-invalid",
    detail: `no TLSA record matches the certificate chain (${usable.map(tlsaText).join("; ")})`,
  };
}

/** Why `path` (leaf ... trust anchor) is not a valid chain below its anchor, or undefined. */
function pathProblem(path: X509Certificate[], nowMs: number): Exclude<DaneVerdict, { ok: true }> | undefined {
  for (let i = 0; i < path.length - 1; i++) {
    const cert = path[i]!;
    const issuer = path[i + 1]!;
    if (!cert.checkIssued(issuer) || !cert.verify(issuer.publicKey))
      return {
        ok: false,
        resultType: "validation-failure",
        detail: `${cert.subject} is not signed by ${issuer.subject}`,
      };
    // Issuers below the anchor must be CAs; the anchor's own dates do not matter (RFC 7671 §5.2.2).
    if (i > 0 && !cert.ca)
      return {
        ok: false,
        resultType: "validation-failure",
        detail: `${cert.subject} is not a CA certificate`,
      };
    if (!current(cert, nowMs))
      return {
        ok: false,
        resultType: "certificate-expired",
        detail: `${cert.subject} is valid from ${cert.validFrom} to ${cert.validTo}`,
      };
  }
  return undefined;
}
