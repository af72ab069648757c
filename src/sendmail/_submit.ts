/**
 * Which way `mta send` (sendmail) hands mail over, by who runs it.
 *
 * Owns: the choice (a daemon this user may talk to → its inject API; a daemon this user may not talk
 * to, or a spool this user may not open → the maildrop; else the spool itself), and the maildrop sink.
 * Does not own: the drop file (accept/'s maildrop), the other sinks (_sinks.ts), the pump (_send.ts).
 * Invariant: a user who is neither root nor the daemon's user never needs a secret: the maildrop is
 * the only way in that needs no permission beyond creating a file, and the file's owner is the uid
 * the daemon records.
 */
import { accessSync, constants, existsSync } from "node:fs";
import { dirname } from "node:path";
import { type Config, ConfigError, resolveSecrets } from "../config/index.ts";
import { errnoOf, PermissionError } from "../lib/index.ts";
import { type ControlEndpoint, findDaemon } from "../admin/index.ts";
import { dropMessage } from "../accept/index.ts";
import type { SendItem } from "./_items.ts";

/**
 * Whether this user may be refused the spool for want of permission: false only for EACCES/EPERM on
 * it (or on its parent when it does not exist yet). Anything else (a file where the directory belongs)
 * is for local mode to report, with its own words and exit code.
 */
function spoolRefuses(config: Config): boolean {
  const dir = config.spool.dir;
  try {
    accessSync(existsSync(dir) ? dir : dirname(dir), constants.W_OK);
    if (existsSync(dir)) accessSync(dir, constants.X_OK);
    return false;
  } catch (err) {
    const code = errnoOf(err);
    return code === "EACCES" || code === "EPERM";
  }
}

export async function submissionWay(
  config: Config,
): Promise<{ daemon?: ControlEndpoint; maildrop?: string }> {
  const d = await findDaemon(config, 2000);
  if ("found" in d) return { daemon: d.found };
  const drop = config.spool.maildrop;
  const dropReady = drop !== "" && existsSync(drop);
  if ("refused" in d) {
    if (dropReady) return { maildrop: drop };
    throw new PermissionError(
      `send: ${d.refused}, and ${drop ? `the maildrop ${drop} does not exist (mta serve creates it at start)` : "spool.maildrop is off"}`,
    );
  }
  // No daemon: a user who may not open the spool leaves the mail in the maildrop for it, when there
  // is one; else local mode says what is wrong with the spool.
  if (dropReady && spoolRefuses(config)) return { maildrop: drop };
  return {};
}

/** The configuration with its secret files read, for delivering in this process (root or mta only). */
export function withSecrets(config: Config): Config {
  const { config: full, problems } = resolveSecrets(config);
  if (problems.length > 0)
    throw new ConfigError(
      config.source || "(configuration)",
      problems.map((p) => ({ path: p.path.join("."), message: p.message })),
    );
  return full;
}

type Outcome = { ok: true; ids: string[] } | { ok: false; unavailable: string };

/** Each item becomes one drop file; the daemon picks it up (now, or when it next runs). */
export class MaildropSink {
  readonly mode = "maildrop";
  readonly inFlight = 1;
  readonly batchSize = 64;
  readonly batchBytes = 16 * 1024 * 1024;

  constructor(private readonly dir: string) {}

  async submit(items: SendItem[]): Promise<Outcome[]> {
    return items.map((it) => {
      try {
        const name = dropMessage(this.dir, {
          sender: it.sender,
          recipients: it.recipients,
          message: it.message,
          attributes: it.attributes,
        });
        return { ok: true, ids: [name] };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? String(err);
        return { ok: false, unavailable: `cannot write to the maildrop ${this.dir} (${code})` };
      }
    });
  }
}
