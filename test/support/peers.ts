/**
 * The third-party peers the tests drive (swaks, Postfix's smtp-sink and smtp-source, openssl, Python,
 * msmtp, ...) and the one rule for a missing one.
 *
 * Owns: finding each peer (`peer(name)` → its path), and `lacking(...)`, the only way a test may be
 * skipped for a missing peer: `test.skipIf(lacking("swaks"))(...)`.
 * Invariant: under `CI=true` nothing is skipped for a missing peer. `lacking` then returns false (the
 * tests run, and fail where they reach for the peer) and registers one failing test per missing peer
 * that names it and the package to install, so a green CI run means every test ran.
 */
import { test } from "bun:test";
import { spawnSync } from "bun";
import { existsSync } from "node:fs";

export type Peer =
  | "swaks"
  | "swaks-tls"
  | "smtp-sink"
  | "smtp-source"
  | "openssl"
  | "python3"
  | "aiosmtpd"
  | "script"
  | "msmtp"
  | "setpriv"
  | "curl"
  | "chromium"
  | "redis-server"
  | "root";

/** The Debian package that brings each peer (what .ci/run installs). */
const PACKAGE: Record<Peer, string> = {
  swaks: "swaks",
  "swaks-tls": "libnet-ssleay-perl and libio-socket-ssl-perl (swaks --tls)",
  "smtp-sink": "postfix",
  "smtp-source": "postfix",
  openssl: "openssl",
  python3: "python3",
  aiosmtpd: "python3-aiosmtpd",
  script: "bsdutils",
  msmtp: "msmtp",
  "redis-server": "redis-server",
  setpriv: "util-linux",
  curl: "curl",
  chromium: "chromium",
  root: "(run the tests as root)",
};

function firstFile(...paths: string[]): string | undefined {
  return paths.find((p) => existsSync(p));
}

function succeeds(cmd: string[]): boolean {
  try {
    return spawnSync(cmd, { stdout: "ignore", stderr: "ignore" }).exitCode === 0;
  } catch {
    return false;
  }
}

const FIND: Record<Peer, () => string | undefined> = {
  swaks: () => Bun.which("swaks") ?? undefined,
  "swaks-tls": () => {
    const swaks = Bun.which("swaks");
    return swaks && succeeds(["perl", "-MNet::SSLeay", "-MIO::Socket::SSL", "-e", "1"]) ? swaks : undefined;
  },
  "smtp-sink": () => firstFile("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"),
  "smtp-source": () => firstFile("/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source"),
  openssl: () => Bun.which("openssl") ?? undefined,
  // Debian's python3: a pyenv python3 on PATH may lack the system packages (aiosmtpd).
  python3: () => firstFile("/usr/bin/python3") ?? Bun.which("python3") ?? undefined,
  aiosmtpd: () => (succeeds(["/usr/bin/python3", "-c", "import aiosmtpd"]) ? "/usr/bin/python3" : undefined),
  script: () => Bun.which("script") ?? undefined,
  msmtp: () => Bun.which("msmtp") ?? undefined,
  setpriv: () => Bun.which("setpriv") ?? undefined,
  curl: () => Bun.which("curl") ?? undefined,
  // Debian's chromium (the brief's flags are for it).
  chromium: () => firstFile("/usr/bin/chromium"),
  "redis-server": () => Bun.which("redis-server") ?? firstFile("/usr/bin/redis-server"),
  root: () => (process.getuid?.() === 0 ? "root" : undefined),
};

const cache = new Map<Peer, string | undefined>();

/** The path of a peer, or undefined when it is not installed. */
export function peer(name: Peer): string | undefined {
  if (!cache.has(name)) cache.set(name, FIND[name]());
  return cache.get(name);
}

const reported = new Set<Peer>();

/**
 * For `test.skipIf` / `describe.skipIf`: true when one of `peers` is missing and the tests may be
 * skipped. Under CI=true it is always false, and each missing peer adds a failing test naming it.
 */
export function lacking(...peers: Peer[]): boolean {
  const missing = peers.filter((p) => peer(p) === undefined);
  if (missing.length === 0) return false;
  if (process.env.CI === "true") {
    for (const p of missing) {
      if (reported.has(p)) continue;
      reported.add(p);
      test(`peer ${p} is installed (CI=true: a missing peer fails the run)`, () => {
        throw new Error(`${p} is missing: install ${PACKAGE[p]} (.ci/run does)`);
      });
    }
    return false;
  }
  console.warn(`skipped: needs ${missing.map((p) => `${p} (${PACKAGE[p]})`).join(", ")}`);
  return true;
}
