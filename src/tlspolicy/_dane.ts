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
 * - DANE-TA(2): a certificate the server presents matches (an issuer, or a self-issued leaf), or a
 *   full-value record (2 1 0 / 2 0 0) holds the anchor that signed the topmost certificate sent
 *   (RFC 7671 §5.2.2: then the server may omit it); digests of an omitted anchor match nothing.
 *   Every certificate below the anchor must be issued and signed by the next one and be within its
 *   validity period; the leaf must name one of the reference identifiers (RFC 7672 §3.2.2: the TLSA
 *   base domain, the MX host name, and the next-hop domain).
 */
import { createHash, createPublicKey, type KeyObject, X509Certificate } from "node:crypto";
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

type Failure = Exclude<DaneVerdict, { ok: true }>;

/** The certificate's own key signed it and it names itself as its issuer (RFC 5280 §6.1: self-issued). */
function selfIssued(cert: X509Certificate): boolean {
  return cert.checkIssued(cert) && cert.verify(cert.publicKey);
}

/**
 * The anchor a full-value DANE-TA record carries (2 0 0: a certificate, 2 1 0: a public key), or
 * undefined for digests, which name an anchor without containing it.
 */
function anchorOf(r: TlsaRecord): { key: KeyObject; cert?: X509Certificate } | undefined {
  if (r.matchingType !== 0) return undefined;
  try {
    if (r.selector === 1)
      return { key: createPublicKey({ key: Buffer.from(r.data), format: "der", type: "spki" }) };
    const cert = new X509Certificate(Buffer.from(r.data));
    return { key: cert.publicKey, cert };
  } catch {
    return undefined; // not a key or certificate: matches nothing
  }
}

/**
 * The chain (leaf first, as the server sent it) against the usable TLSA records of the host.
 * `names`: the reference identifiers for DANE-TA (TLSA base domain first).
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

  let taProblem: Failure | undefined;
  for (const r of usable) {
    if (r.usage !== 2) continue;
    const v = checkTrustAnchor(chain, r, names, nowMs);
    if (v?.ok) return v;
    if (v) taProblem ??= v;
  }
  if (taProblem) return taProblem;
  return {
    ok: false,
    resultType: "tlsa-invalid",
    detail: `no TLSA record matches the certificate chain (${usable.map(tlsaText).join("; ")})`,
  };
}

/**
 * One DANE-TA(2) record against the chain; undefined when it matches nothing at all. The anchor is
 * found in one of three ways (RFC 7671 §5.2):
 * - a certificate the server presented matches the record: the issuers above the leaf, or the leaf
 *   itself when it is self-issued (a server whose own certificate is its trust anchor; its dates
 *   and its name are still checked, as for any DANE-TA leaf);
 * - the record holds the anchor in full (2 1 0, or 2 0 0) and signed the topmost certificate the
 *   server sent: the server may leave the anchor out (RFC 7671 §5.2.2);
 * - a digest (2 x 1, 2 x 2) of an anchor the server left out names nothing we can check: no match.
 */
function checkTrustAnchor(
  chain: X509Certificate[],
  r: TlsaRecord,
  names: readonly string[],
  nowMs: number,
): DaneVerdict | undefined {
  const leaf = chain[0]!;
  let problem: Failure | undefined;
  for (let k = 0; k < chain.length; k++) {
    if (k === 0 && !selfIssued(leaf)) continue;
    if (!matches(chain[k]!, r)) continue;
    // The anchor is chain[k]; with k = 0 the leaf is checked as the end of the path it starts.
    const v = pathProblem(chain.slice(0, k + 1), nowMs, k > 0) ?? nameProblem(leaf, names);
    if (!v) return { ok: true, matched: tlsaText(r) };
    problem ??= v;
  }
  if (problem) return problem;
  const anchor = anchorOf(r);
  if (!anchor) return undefined;
  for (let k = chain.length - 1; k >= 0; k--) {
    const top = chain[k]!;
    if (anchor.cert ? !top.checkIssued(anchor.cert) : false) continue;
    if (!top.verify(anchor.key)) continue;
    // Every certificate the server sent up to `top` is below the anchor: all are checked.
    const v = pathProblem(chain.slice(0, k + 1), nowMs, false) ?? nameProblem(leaf, names);
    return v ?? { ok: true, matched: tlsaText(r) };
  }
  return undefined;
}

/** RFC 7672 §3.2.2: the leaf must name one of the reference identifiers (no partial wildcards). */
function nameProblem(leaf: X509Certificate, names: readonly string[]): Failure | undefined {
  if (names.some((n) => leaf.checkHost(n, { partialWildcards: false }) !== undefined)) return undefined;
  return {
    ok: false,
    resultType: "certificate-host-mismatch",
    detail: `certificate names ${leaf.subjectAltName ?? leaf.subject}, none of ${names.join(", ")}`,
  };
}

/**
 * Why `path` (leaf first) is not a valid chain, or undefined: each certificate issued and signed by
 * the next, the issuers CAs, each within its validity period. `anchorLast`: the last certificate is
 * the trust anchor, whose own dates do not matter (RFC 7671 §5.2.2); otherwise (the anchor is in
 * the TLSA record, or the path is a self-issued leaf alone) every certificate's dates are checked.
 */
function pathProblem(path: X509Certificate[], nowMs: number, anchorLast: boolean): Failure | undefined {
  const checked = anchorLast ? path.length - 1 : path.length;
  for (let i = 0; i < checked; i++) {
    const cert = path[i]!;
    const issuer = path[i + 1];
    if (issuer && (!cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)))
      return {
        ok: false,
        resultType: "validation-failure",
        detail: `${cert.subject} is not signed by ${issuer.subject}`,
      };
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
