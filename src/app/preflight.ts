/**
 * Everything `mta serve` checks before it binds a socket, as a list of problems: `mta check-config`
 * runs exactly this, so that what check-config passes, serve starts (binding aside).
 *
 * Owns: the checks of what the configuration points at: the control token rule and the secret files,
 * each listener's TLS
 * certificate and key (readable files, PEM that loads, a key that matches the certificate), the DKIM
 * keys, the TLS policy (its CA bundle; tls: dane/sts where they can work), the bounce classification
 * rules files (each problem with its file and line), a webhook's CA file, the spool directory, the
 * delivery log (the right kind of path, writable by this user), a cluster's password file and CA
 * (readable, the CA a certificate) and, under MTA_LOOPBACK_ONLY=1, a loopback Redis.
 * Does not own: the YAML itself (config/), binding (daemon.ts).
 * Invariant: each problem names the YAML path it belongs to; nothing here changes the file system.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { accessSync, constants, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { type Config, resolveSecrets } from "../config/index.ts";
import { errnoOf, errnoText, errorMessage, formatHostPort, isLoopback } from "../lib/index.ts";
import { dkimProblems } from "../dkim/index.ts";
import { bounceRulesProblems } from "../feedback/index.ts";
import { tlsPolicyProblems } from "./tlsDelivery.ts";

export interface StartProblem {
  path: (string | number)[];
  message: string;
}

/** Every reason `mta serve` would refuse to start with `config`, binding aside. */
export function startProblems(config: Config): StartProblem[] {
  const problems: StartProblem[] = [];
  const push = (path: (string | number)[], message: string) => problems.push({ path, message });

  const control = config.control.address;
  if (control && !isLoopback(control.host) && !config.control.token && !config.control.tokenFile)
    push(
      ["control", "address"],
      `${formatHostPort(control)} is not loopback: set control.token (a bearer token), or listen on 127.0.0.1`,
    );

  config.listen.forEach((l, i) => {
    if (!l.tls) return;
    const cert = readPem(l.tls.certFile);
    const key = readPem(l.tls.keyFile);
    if ("problem" in cert) push(["listen", i, "tls", "cert"], cert.problem);
    if ("problem" in key) push(["listen", i, "tls", "key"], key.problem);
    if ("problem" in cert || "problem" in key) return;
    let x509: X509Certificate | undefined;
    try {
      x509 = new X509Certificate(cert.text);
    } catch (err) {
      push(["listen", i, "tls", "cert"], `${l.tls.certFile}: not a PEM certificate (${errorMessage(err)})`);
    }
    let privateKey: ReturnType<typeof createPrivateKey> | undefined;
    try {
      privateKey = createPrivateKey(key.text);
    } catch (err) {
      push(["listen", i, "tls", "key"], `${l.tls.keyFile}: not a PEM private key (${errorMessage(err)})`);
    }
    if (x509 && privateKey && !x509.checkPrivateKey(privateKey))
      push(
        ["listen", i, "tls", "key"],
        `${l.tls.keyFile} is not the private key of the certificate ${l.tls.certFile} (swapped or from another pair?)`,
      );
  });

  for (const p of dkimProblems(config)) problems.push(p);
  // The secret files (control.token_file, listen[].users_file, a route's auth.password_file).
  for (const p of resolveSecrets(config).problems) problems.push(p);
  for (const p of tlsPolicyProblems(config)) problems.push(p);
  for (const p of bounceRulesProblems(config)) problems.push(p);
  config.webhooks.forEach((w, i) => {
    if (!w.caFile) return;
    const ca = readPem(w.caFile);
    if ("problem" in ca) push(["webhooks", i, "ca_file"], ca.problem);
  });

  const spool = directoryProblem(config.spool.dir);
  if (spool) push(["spool", "dir"], spool);
  else {
    const seg = segmentsProblem(config.spool.dir);
    if (seg) push(["spool", "dir"], seg);
  }

  if (config.log.deliveriesFile) {
    const log = fileProblem(config.log.deliveriesFile);
    if (log) push(["log", "deliveries"], log);
  }

  const cluster = config.cluster;
  if (cluster) {
    // Files only: whether Redis answers is not a reason to refuse to start (a node starts in local share).
    if (cluster.passwordFile) {
      const pw = readPem(cluster.passwordFile);
      if ("problem" in pw) push(["cluster", "password_file"], pw.problem);
      else if (!(pw.text.split(/\r?\n/)[0] ?? ""))
        push(["cluster", "password_file"], `${cluster.passwordFile}: the first line (the password) is empty`);
    }
    if (cluster.tls?.caFile) {
      const ca = readPem(cluster.tls.caFile);
      if ("problem" in ca) push(["cluster", "tls", "ca"], ca.problem);
      else {
        try {
          new X509Certificate(ca.text);
        } catch (err) {
          push(
            ["cluster", "tls", "ca"],
            `${cluster.tls.caFile}: not a PEM certificate (${errorMessage(err)})`,
          );
        }
      }
    }
    const host = new URL(cluster.redisUrl).hostname.replace(/^\[|\]$/g, "");
    if (process.env.MTA_LOOPBACK_ONLY === "1" && !isLoopback(host))
      push(
        ["cluster", "redis"],
        `${host} is not a loopback address, and MTA_LOOPBACK_ONLY=1 allows nothing else`,
      );
  }
  return problems;
}

function readPem(file: string): { text: string } | { problem: string } {
  try {
    if (statSync(file).isDirectory()) return { problem: `${file} is a directory, not a PEM file` };
    return { text: readFileSync(file, "utf8") };
  } catch (err) {
    return { problem: `cannot read ${file}: ${errnoText(err)}` };
  }
}

/** The nearest existing ancestor of `path` (itself when it exists). */
function existingAncestor(path: string): string {
  let p = path;
  for (;;) {
    try {
      statSync(p);
      return p;
    } catch {
      const up = dirname(p);
      if (up === p) return p;
      p = up;
    }
  }
}

function writable(dir: string): string | undefined {
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
    return undefined;
  } catch (err) {
    return errnoText(err);
  }
}

/** A directory mta must write into (created when missing): problem or undefined. */
export function directoryProblem(dir: string): string | undefined {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(dir);
  } catch (err) {
    if (errnoOf(err) !== "ENOENT" && errnoOf(err) !== "ENOTDIR") return `${dir}: ${errnoText(err)}`;
    const base = existingAncestor(dir);
    if (!statSync(base).isDirectory()) return `${dir} cannot be created: ${base} is not a directory`;
    const why = writable(base);
    return why ? `${dir} cannot be created in ${base}: ${why}` : undefined;
  }
  if (!st.isDirectory()) return `${dir} exists and is not a directory`;
  const why = writable(dir);
  return why ? `${dir}: ${why} (the user running mta must be able to write it)` : undefined;
}

/** Every name the spool takes for a segment (`<20 digits>.seg`) is a readable, writable file. */
function segmentsProblem(dir: string): string | undefined {
  const segments = join(dir, "segments");
  let names: string[];
  try {
    if (!statSync(segments).isDirectory()) return `${segments} exists and is not a directory`;
    names = readdirSync(segments);
  } catch (err) {
    return errnoOf(err) === "ENOENT" ? undefined : `${segments}: ${errnoText(err)}`;
  }
  for (const name of names) {
    if (!/^\d{20}\.seg$/.test(name)) continue; // what the spool reads as a segment
    const p = join(segments, name);
    try {
      if (!statSync(p).isFile()) return `${p} is not a segment file (move it out of the spool)`;
      accessSync(p, constants.R_OK | constants.W_OK);
    } catch (err) {
      return `${p}: ${errnoText(err)}`;
    }
  }
  return undefined;
}

/** A file mta appends to (created with its directory when missing): problem or undefined. */
export function fileProblem(file: string): string | undefined {
  try {
    const st = statSync(file);
    if (st.isDirectory()) return `${file} is a directory, not a file`;
    accessSync(file, constants.W_OK);
    return undefined;
  } catch (err) {
    // ENOTDIR: a plain file stands where a directory of the path should be; said below.
    if (errnoOf(err) !== "ENOENT" && errnoOf(err) !== "ENOTDIR") return `${file}: ${errnoText(err)}`;
  }
  const dir = dirname(file);
  const d = directoryProblem(dir);
  return d ? `${file} cannot be created: ${d}` : undefined;
}
