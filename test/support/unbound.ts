/**
 * A real validating resolver for the DANE tests: unbound on loopback, serving zones from files through
 * `auth-zone` (for-upstream), the signed ones signed with ldns-signzone and trusted through their DS as
 * trust anchors, so that the AD bit in its answers comes from real DNSSEC validation.
 *
 * Owns: writing the zones, keys (ldns-keygen, ECDSA P-256), signatures (ldns-signzone), the config,
 * starting unbound in the foreground and waiting until it answers; `tamper` to break a signature.
 * Nothing leaves loopback: every name outside the zones goes to a stub on 127.0.0.1:9 (nothing there).
 */
import { type Subprocess, spawn, spawnSync } from "bun";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createResolver } from "../../src/dns/index.ts";
import { freePort } from "./sink.ts";

export interface ZoneSpec {
  /** e.g. "dane.test" */
  name: string;
  /** Records relative to the zone, in zone-file syntax, e.g. "mx1 IN A 127.0.0.41". */
  records: string[];
  /** Sign it and make its key a trust anchor. */
  signed: boolean;
  /** Edits the signed zone file (e.g. to break one RRSIG) before unbound loads it. */
  tamper?: (signedZone: string) => string;
}

export interface Unbound extends AsyncDisposable {
  host: string;
  port: number;
  proc: Subprocess;
}

function run(cmd: string[], cwd: string): string {
  const r = spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString().trim();
}

/** Flips one character of the signature of the first RRSIG covering `type` (a bogus signature). */
export function breakSignature(type: string): (zone: string) => string {
  return (zone) => {
    const lines = zone.split("\n");
    const i = lines.findIndex((l) => new RegExp(`\\sRRSIG\\s+${type}\\s`).test(l));
    if (i < 0) throw new Error(`no RRSIG for ${type} in the signed zone`);
    const l = lines[i]!;
    const at = l.length - 10;
    lines[i] = l.slice(0, at) + (l[at] === "A" ? "B" : "A") + l.slice(at + 1);
    return lines.join("\n");
  };
}

export async function startUnbound(dir: string, zones: ZoneSpec[]): Promise<Unbound> {
  const base = join(dir, `unbound-${Math.random().toString(36).slice(2)}`);
  mkdirSync(base, { recursive: true });
  const anchors: string[] = [];
  const authZones: string[] = [];
  for (const z of zones) {
    const file = join(base, `${z.name}.zone`);
    writeFileSync(
      file,
      [
        `$ORIGIN ${z.name}.`,
        "$TTL 300",
        `@ IN SOA ns.${z.name}. hostmaster.${z.name}. 1 3600 600 86400 60`,
        `@ IN NS ns.${z.name}.`,
        "ns IN A 127.0.0.1",
        ...z.records,
        "",
      ].join("\n"),
    );
    let served = file;
    if (z.signed) {
      const ksk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", z.name], base);
      const zsk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", z.name], base);
      run(["ldns-signzone", "-f", `${file}.signed`, file, ksk, zsk], base);
      served = `${file}.signed`;
      if (z.tamper) writeFileSync(served, z.tamper(readFileSync(served, "utf8")));
      anchors.push(`  trust-anchor-file: "${join(base, `${ksk}.ds`)}"`);
    }
    authZones.push(
      "auth-zone:",
      `  name: "${z.name}."`,
      `  zonefile: "${served}"`,
      "  for-downstream: no",
      "  for-upstream: yes",
      "  fallback-enabled: no",
    );
  }
  const port = freePort();
  const conf = join(base, "unbound.conf");
  writeFileSync(
    conf,
    [
      "server:",
      `  interface: 127.0.0.1@${port}`,
      `  port: ${port}`,
      "  do-daemonize: no",
      "  use-syslog: no",
      '  logfile: ""',
      "  verbosity: 1",
      '  username: ""',
      '  chroot: ""',
      `  directory: "${base}"`,
      '  pidfile: ""',
      "  do-ip6: no",
      "  do-not-query-localhost: no",
      "  outgoing-interface: 127.0.0.1",
      '  module-config: "validator iterator"',
      "  ede: yes",
      "  val-log-level: 2",
      "  access-control: 127.0.0.0/8 allow",
      '  local-zone: "test." nodefault',
      // No caching between questions of a test: each answer is validated afresh.
      "  msg-cache-size: 0",
      "  rrset-cache-size: 0",
      ...anchors,
      ...authZones,
      "stub-zone:",
      '  name: "."',
      "  stub-addr: 127.0.0.1@9",
      "",
    ].join("\n"),
  );
  run(["unbound-checkconf", conf], base);
  const proc = spawn(["unbound", "-d", "-c", conf], { stdout: "ignore", stderr: "pipe" });
  // Ready when it answers a question about the first zone.
  const probe = createResolver({ servers: [{ host: "127.0.0.1", port }], timeoutMs: 200, attempts: 1 });
  for (let i = 0; ; i++) {
    const r = await probe.txt(`ready-${i}.${zones[0]!.name}`);
    if (r.kind !== "error") break;
    if (i > 50 || proc.exitCode !== null)
      throw new Error(`unbound did not start: ${await new Response(proc.stderr).text()}`);
    await Bun.sleep(100);
  }
  return {
    host: "127.0.0.1",
    port,
    proc,
    async [Symbol.asyncDispose]() {
      proc.kill();
      await proc.exited;
    },
  };
}
