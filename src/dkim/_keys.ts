/**
 * DKIM keys: loading, checking, generating, and the DNS TXT record that publishes one.
 *
 * Owns: `DkimKeyError`, `loadKey`, `readKeyFile`, `generateKey`, `formatTxtRecord`.
 * Invariants: a key that loads is usable for signing: RSA keys have at least 2048 bits (RFC 8301 makes
 * 1024 the floor; Gmail and Yahoo want 2048), Ed25519 keys sign ed25519-sha256 (RFC 8463).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { errorMessage, MtaError } from "../lib/index.ts";

export type DkimAlgorithm = "rsa-sha256" | "ed25519-sha256";

/** A key that cannot be read or used. The app reports it as a config error (exit 78). */
export class DkimKeyError extends MtaError {
  override name = "DkimKeyError";
  constructor(message: string, options?: { cause?: unknown }) {
    super("config", message, options);
  }
}

export const MIN_RSA_BITS = 2048;

export interface LoadedKey {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  key: KeyObject;
}

const DOMAIN_RE =
  /^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const SELECTOR_RE = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9_])?$/;

export function loadKey(spec: {
  domain: string;
  selector: string;
  privateKeyPem: string;
  algorithm?: DkimAlgorithm;
  keyFile?: string;
}): LoadedKey {
  const where = spec.keyFile
    ? `DKIM key file ${spec.keyFile} (${spec.selector}._domainkey.${spec.domain})`
    : `DKIM key ${spec.selector}._domainkey.${spec.domain}`;
  const domain = spec.domain.toLowerCase().replace(/\.$/, "");
  if (!DOMAIN_RE.test(domain)) throw new DkimKeyError(`${where}: "${spec.domain}" is not a domain name`);
  if (!SELECTOR_RE.test(spec.selector))
    throw new DkimKeyError(`${where}: "${spec.selector}" is not a valid selector`);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: spec.privateKeyPem, format: "pem" });
  } catch (err) {
    throw new DkimKeyError(`${where}: not a readable PEM private key (${errorMessage(err)})`, { cause: err });
  }
  let algorithm: DkimAlgorithm;
  if (key.asymmetricKeyType === "rsa") {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS)
      throw new DkimKeyError(`${where}: RSA key has ${bits} bits, at least ${MIN_RSA_BITS} are required`);
    algorithm = "rsa-sha256";
  } else if (key.asymmetricKeyType === "ed25519") {
    algorithm = "ed25519-sha256";
  } else {
    throw new DkimKeyError(
      `${where}: unsupported key type ${key.asymmetricKeyType ?? "unknown"} (use RSA 2048+ or Ed25519)`,
    );
  }
  if (spec.algorithm !== undefined && spec.algorithm !== algorithm)
    throw new DkimKeyError(`${where}: algorithm ${spec.algorithm} does not match the ${algorithm} key`);
  return { domain, selector: spec.selector, algorithm, key };
}

/** Reads a PEM key file; an unreadable file is a `DkimKeyError` naming the path. */
export function readKeyFile(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new DkimKeyError(`DKIM key file ${path}: cannot be read (${errorMessage(err)})`, { cause: err });
  }
}

/** The `p=` value: SPKI DER for RSA (RFC 6376 §3.6.1), the raw 32-byte public key for Ed25519 (RFC 8463 §4). */
export function publicKeyTag(key: KeyObject): string {
  const pub = createPublicKey(key);
  const der = pub.export({ type: "spki", format: "der" });
  if (pub.asymmetricKeyType === "ed25519") return der.subarray(der.length - 32).toString("base64");
  return der.toString("base64");
}

export function generateKey(
  type: "rsa" | "ed25519",
  bits = MIN_RSA_BITS,
): { privateKeyPem: string; dnsTxt: string } {
  if (type === "rsa" && (!Number.isInteger(bits) || bits < MIN_RSA_BITS || bits > 8192))
    throw new DkimKeyError(`RSA key size ${bits}: use ${MIN_RSA_BITS} to 8192 bits`);
  const { privateKey } =
    type === "rsa" ? generateKeyPairSync("rsa", { modulusLength: bits }) : generateKeyPairSync("ed25519");
  const privateKeyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const k = type === "rsa" ? "rsa" : "ed25519";
  return { privateKeyPem, dnsTxt: `v=DKIM1; k=${k}; p=${publicKeyTag(privateKey)}` };
}

/**
 * A zone-file line publishing `dnsTxt` at `selector._domainkey.domain`. A TXT character-string holds
 * at most 255 bytes (RFC 1035 §3.3), so longer values (RSA keys) are split into several strings that
 * resolvers concatenate.
 */
export function formatTxtRecord(domain: string, selector: string, dnsTxt: string): string {
  const parts: string[] = [];
  for (let i = 0; i < dnsTxt.length; i += 255) parts.push(`"${dnsTxt.slice(i, i + 255)}"`);
  return `${selector}._domainkey.${domain} IN TXT ${parts.join(" ")}`;
}
