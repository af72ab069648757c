/**
 * The signers of a configuration: its `dkim:` keys read and checked, on the event loop or on worker
 * threads.
 *
 * Owns: `makeSigner` (one signer on this thread: `mta queue`, `mta send`), `makeSignerPool` (the
 * daemon's signing threads), `dkimProblems` (what `mta check-config` reports, per key).
 * Does not own: signing itself (signer.ts, pool.ts), when keys are reloaded (app/).
 */
import { availableParallelism } from "node:os";
import type { Config } from "../config/index.ts";
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import { readKeyFile } from "./_keys.ts";
import { DkimSignerPool } from "./pool.ts";
import { type DkimOptions, DkimSigner } from "./signer.ts";

/** The signer options of the configuration (key files read now), or undefined without keys. */
function dkimOptions(config: Config): DkimOptions | undefined {
  if (config.dkim.keys.length === 0) return undefined;
  return {
    keys: config.dkim.keys.map((k) => ({
      domain: k.domain,
      selector: k.selector,
      privateKeyPem: readKeyFile(k.keyFile),
      keyFile: k.keyFile,
    })),
    ...(config.dkim.headers ? { headers: config.dkim.headers } : {}),
    oversign: config.dkim.oversign,
    canonicalization: config.dkim.canonicalization,
    ...(config.dkim.expireAfterMs > 0 ? { expireAfterMs: config.dkim.expireAfterMs } : {}),
    domainMap: config.dkim.domainMap,
  };
}

/** Loads and checks every DKIM key of the configuration; throws DkimKeyError (exit 78) on a bad one. */
export function makeSigner(config: Config): DkimSigner | undefined {
  const options = dkimOptions(config);
  return options ? DkimSigner.create(options) : undefined;
}

/**
 * Signing threads: RSA signatures (~0.6 ms CPU each) go to one worker per core so that the event loop
 * keeps answering; Ed25519 alone (~40 µs) is cheaper than the hand-off. `MTA_DKIM_THREADS` overrides.
 */
function dkimThreads(signer: DkimSigner): number {
  const env = process.env.MTA_DKIM_THREADS;
  if (env !== undefined && /^\d+$/.test(env)) return Math.min(Number(env), 16);
  if (!signer.algorithms.includes("rsa-sha256")) return 0;
  return Math.max(1, Math.min(4, availableParallelism()));
}

/** Loads and checks the keys (throws DkimKeyError), then starts the signing threads in the background. */
export function makeSignerPool(config: Config, log: Logger): DkimSignerPool | undefined {
  const options = dkimOptions(config);
  if (!options) return undefined;
  const signer = DkimSigner.create(options);
  const threads = dkimThreads(signer);
  const pool = DkimSignerPool.create(options, {
    threads,
    onWorkerError: (message) => log.warn(`${message}; signing on the event loop instead`),
  });
  log.info("dkim keys loaded", {
    keys: config.dkim.keys.map((k) => `${k.selector}._domainkey.${k.domain}`),
    threads,
  });
  return pool;
}

/**
 * Every DKIM problem of the configuration, each with the YAML path it belongs to, for
 * `mta check-config`: each key on its own (unreadable, malformed, too short), then the set as a whole.
 */
export function dkimProblems(config: Config): { path: (string | number)[]; message: string }[] {
  const problems: { path: (string | number)[]; message: string }[] = [];
  config.dkim.keys.forEach((k, i) => {
    try {
      DkimSigner.create({
        keys: [
          {
            domain: k.domain,
            selector: k.selector,
            privateKeyPem: readKeyFile(k.keyFile),
            keyFile: k.keyFile,
          },
        ],
      });
    } catch (err) {
      problems.push({ path: ["dkim", "keys", i, "key_file"], message: errorMessage(err) });
    }
  });
  if (problems.length > 0) return problems;
  try {
    makeSigner(config);
  } catch (err) {
    problems.push({ path: ["dkim"], message: errorMessage(err) });
  }
  return problems;
}
