/**
 * DKIM signing of outbound mail (RFC 6376 with rsa-sha256, RFC 8463 with ed25519-sha256).
 *
 * Owns: the public face of dkim/: `DkimSigner`, key checks and generation, the DNS TXT record.
 * Does not own: reloading keys on SIGHUP (app/), the accept pipeline (accept/).
 */
export {
  DkimKeyError,
  type DkimAlgorithm,
  formatTxtRecord,
  generateKey,
  MIN_RSA_BITS,
  readKeyFile,
} from "./_keys.ts";
export {
  DEFAULT_SIGNED_HEADERS,
  type DkimCanonicalization,
  type DkimKeySpec,
  type DkimOptions,
  DkimSigner,
  fromDomain,
} from "./signer.ts";
export { type DkimPoolOptions, DkimSignerPool } from "./pool.ts";
export { dkimProblems, makeSigner, makeSignerPool } from "./_config.ts";
