/**
 * A private Postfix instance on loopback, as a real peer that accepts mail and bounces it later.
 *
 * Owns: `startPostfix` (its own config_directory and queue_directory in a temp dir, one smtpd on a
 * loopback port, transport_maps given by the test, no DNS), stopping it, its mail log.
 * Never touches /etc/postfix or the system instance (another helper benchmarks with it). Needs root
 * (Postfix's master) and the postfix package: what .ci/run installs.
 */
import { spawnSync } from "bun";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

export const POSTFIX = existsSync("/usr/sbin/postfix") ? "/usr/sbin/postfix" : undefined;

export interface PostfixInstance extends AsyncDisposable {
  port: number;
  dir: string;
  maillog(): string;
}

function run(cmd: string[]): { code: number; out: string } {
  // postfix(1) reports its problems only to a terminal or syslog: give it a terminal.
  const r = spawnSync(["script", "-qec", cmd.join(" "), "/dev/null"], { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

export async function startPostfix(opts: {
  port: number;
  relayDomains: string[];
  /** domain → "smtp:[127.0.0.1]:port" */
  transports: Record<string, string>;
  extra?: string[];
}): Promise<PostfixInstance> {
  if (!POSTFIX) throw new Error("Postfix is not installed (apt-get install postfix)");
  const dir = mkdtempSync("/tmp/mta-postfix-");
  chmodSync(dir, 0o755); // the postfix user walks into its queue directory
  for (const d of ["etc", "spool", "data"]) mkdirSync(join(dir, d));
  const proto = existsSync("/etc/postfix/master.cf.proto")
    ? "/etc/postfix/master.cf.proto"
    : "/etc/postfix/master.cf";
  copyFileSync(proto, join(dir, "etc/master.cf"));
  const master = readFileSync(join(dir, "etc/master.cf"), "utf8").replace(/^smtp(\s+)inet/m, "#smtp$1inet");
  writeFileSync(join(dir, "etc/master.cf"), `${master}\n127.0.0.1:${opts.port} inet n - n - - smtpd\n`);
  const transport = Object.entries(opts.transports)
    .map(([d, t]) => `${d}=${t}`)
    .join(", ");
  writeFileSync(
    join(dir, "etc/main.cf"),
    [
      "compatibility_level = 3.6",
      `queue_directory = ${dir}/spool`,
      `data_directory = ${dir}/data`,
      "mail_owner = postfix",
      "setgid_group = postdrop",
      "myhostname = mx.postfix.test",
      "mydomain = postfix.test",
      "myorigin = postfix.test",
      "mydestination =",
      "alias_maps =",
      "alias_database =",
      "inet_interfaces = 127.0.0.1",
      "inet_protocols = ipv4",
      "mynetworks = 127.0.0.0/8",
      `relay_domains = ${opts.relayDomains.join(", ")}`,
      `transport_maps = inline:{ ${transport} }`,
      "smtpd_recipient_restrictions = permit_mynetworks, reject",
      "smtp_dns_support_level = disabled",
      "disable_dns_lookups = yes",
      "queue_run_delay = 1s",
      "minimal_backoff_time = 1s",
      "maximal_backoff_time = 2s",
      "smtp_tls_security_level = none",
      "maillog_file_prefixes = /tmp",
      `maillog_file = ${dir}/maillog`,
      ...(opts.extra ?? []),
    ].join("\n"),
  );
  spawnSync(["chown", "-R", "postfix", join(dir, "data")]);
  const check = run([POSTFIX, "-c", join(dir, "etc"), "check"]);
  if (check.code !== 0) throw new Error(`postfix check failed: ${check.out}`);
  const start = run([POSTFIX, "-c", join(dir, "etc"), "start"]);
  if (start.code !== 0) throw new Error(`postfix start failed: ${start.out}`);
  // Wait for its smtpd to listen.
  for (let i = 0; i < 100; i++) {
    try {
      const s = await Bun.connect({ hostname: "127.0.0.1", port: opts.port, socket: { data() {} } });
      s.end();
      break;
    } catch {
      await Bun.sleep(100);
    }
  }
  return {
    port: opts.port,
    dir,
    maillog: () => {
      try {
        return readFileSync(join(dir, "maillog"), "utf8");
      } catch {
        return "";
      }
    },
    async [Symbol.asyncDispose]() {
      run([POSTFIX!, "-c", join(dir, "etc"), "stop"]);
      await Bun.sleep(300);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
