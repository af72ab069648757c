/**
 * Secrets in the configuration: the control token, relay passwords and AUTH user hashes, inline or in
 * files of their own (`token_file`, `password_file`, `users_file`).
 *
 * Why files: `mta send` (sendmail) run by any local user reads the configuration to find the maildrop;
 * with the secrets in files of mode 0600/0640, `mta.yaml` can be world-readable (as Postfix's main.cf)
 * while no user but root and the daemon's can read a secret.
 * Owns: reading secret files into the configuration (`resolveSecrets`), the `user:hash` file format,
 * redaction for `mta check-config`, and the list of inline secrets (the daemon warns when the file
 * holding them is readable by every user).
 * Invariant: a secret's value never appears in a message, a log line or `check-config` output.
 */
import { readFileSync } from "node:fs";
import type { RawConfig } from "./schema.ts";
import type { Config } from "./types.ts";

export const REDACTED = "<redacted>";
const HASH = /^\$(argon2(id|i|d)|2[aby])\$/;

/** A secret file's content without its final newline; throws an Error naming the file. */
export function readSecretFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new Error(`cannot read ${file} (${code})`);
  }
  const value = text.replace(/\r?\n$/, "");
  if (value === "") throw new Error(`${file} is empty`);
  if (/[\r\n]/.test(value)) throw new Error(`${file} holds more than one line`);
  return value;
}

/** `user:hash` per line; blank lines and `#` comments are skipped. */
export function parseUsersFile(text: string): { users: Record<string, string>; problems: string[] } {
  const users: Record<string, string> = {};
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const at = line.indexOf(":");
    const user = at > 0 ? line.slice(0, at) : "";
    const hash = at > 0 ? line.slice(at + 1) : "";
    if (!user || !HASH.test(hash))
      problems.push(`line ${i + 1}: expected user:hash with a hash from \`mta hash-password\``);
    else if (Object.hasOwn(users, user)) problems.push(`line ${i + 1}: user ${user} given twice`);
    else users[user] = hash;
  });
  return { users, problems };
}

export interface SecretProblem {
  path: (string | number)[];
  message: string;
}

/**
 * The configuration with every secret file read into its value (the control token, relay passwords,
 * `users_file` merged into `users`), and what could not be read, each with its YAML path. `mta serve`,
 * `mta check-config` (through app/preflight) and a delivering `mta send` need this; `loadConfig` alone
 * never reads a secret file, so that any user may load the configuration.
 */
export function resolveSecrets(config: Config): { config: Config; problems: SecretProblem[] } {
  const problems: SecretProblem[] = [];
  const out = structuredClone(config) as Config;
  const c = out.control;
  if (c.tokenFile !== undefined && c.token === undefined) {
    try {
      c.token = readSecretFile(c.tokenFile);
    } catch (err) {
      problems.push({ path: ["control", "token_file"], message: (err as Error).message });
    }
  }
  for (const [domain, r] of Object.entries(out.delivery.routes)) {
    if (r.auth?.passwordFile === undefined) continue;
    try {
      r.auth.password = readSecretFile(r.auth.passwordFile);
    } catch (err) {
      problems.push({
        path: ["delivery", "routes", domain, "auth", "password_file"],
        message: (err as Error).message,
      });
    }
  }
  out.listen.forEach((l, i) => {
    if (l.usersFile === undefined) return;
    const at = ["listen", i, "users_file"];
    let text: string;
    try {
      text = readFileSync(l.usersFile, "utf8");
    } catch (err) {
      problems.push({
        path: at,
        message: `cannot read ${l.usersFile} (${(err as NodeJS.ErrnoException).code ?? err})`,
      });
      return;
    }
    const parsed = parseUsersFile(text);
    for (const p of parsed.problems.slice(0, 5)) problems.push({ path: at, message: `${l.usersFile} ${p}` });
    if (parsed.problems.length > 5)
      problems.push({
        path: at,
        message: `${l.usersFile}: and ${parsed.problems.length - 5} more such lines`,
      });
    for (const [user, hash] of Object.entries(parsed.users)) {
      if (Object.hasOwn(l.users, user))
        problems.push({ path: at, message: `${l.usersFile}: user ${user} is also in listen[${i}].users` });
      else l.users[user] = hash;
    }
  });
  return { config: freeze(out), problems };
}

function freeze<T>(o: T): T {
  if (o && typeof o === "object" && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) freeze(v);
  }
  return o;
}

/** YAML paths of the secrets written inline in the file (not in *_file keys). */
export function inlineSecretPaths(raw: RawConfig): string[] {
  const out: string[] = [];
  if (raw.control.token !== undefined && raw.control.token_file === undefined) out.push("control.token");
  for (const [domain, r] of Object.entries(raw.delivery.routes))
    if (typeof r === "object" && !Array.isArray(r) && r.auth?.password !== undefined && !r.auth.password_file)
      out.push(`delivery.routes.${domain}.auth.password`);
  raw.listen.forEach((l, i) => {
    if (Object.keys(l.users).length > 0) out.push(`listen[${i}].users`);
  });
  return out;
}

/** A copy of `raw` fit to print: every secret value replaced by `<redacted>` (file paths are kept). */
export function redactSecrets(raw: RawConfig): RawConfig {
  const out = structuredClone(raw);
  if (out.control.token !== undefined) out.control.token = REDACTED;
  for (const r of Object.values(out.delivery.routes))
    if (typeof r === "object" && !Array.isArray(r) && r.auth?.password !== undefined)
      r.auth.password = REDACTED;
  for (const l of out.listen) for (const user of Object.keys(l.users)) l.users[user] = REDACTED;
  return out;
}

/**
 * The control token for a client command: inline, or read from `control.token_file` now; undefined when
 * there is none or this user may not read it (then only the control socket can be used).
 */
export function controlToken(config: Config): string | undefined {
  if (config.control.token !== undefined) return config.control.token;
  if (config.control.tokenFile === undefined) return undefined;
  try {
    return readSecretFile(config.control.tokenFile);
  } catch {
    return undefined;
  }
}
