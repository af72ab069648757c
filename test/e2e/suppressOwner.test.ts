/**
 * `mta suppress` run as root on the list of a daemon that runs as another user, before that daemon
 * ever ran: the files are the spool directory owner's (as Postfix's postsuper works as mail_owner),
 * so the daemon, started as that user afterwards, opens the list and refuses the address.
 */
import { describe, expect, test } from "bun:test";
import { chownSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { lacking } from "../support/peers.ts";
import { cliConfigFor, runMta, startMta, tempDir, testConfig } from "../support/mta.ts";

const NOBODY = 65534;

describe.skipIf(lacking("setpriv", "root"))("mta suppress as root on another user's spool", () => {
  test("the list it creates belongs to the spool's owner; the daemon run as that user uses it", async () => {
    using dir = tempDir("mta-owner-", { open: true });
    // As /var/spool/mta would be for a service with User=mta, installed but never started.
    const spool = join(dir.path, "spool");
    mkdirSync(spool, { mode: 0o700 });
    chownSync(spool, NOBODY, NOBODY);
    const cfg = testConfig(dir.path);
    const file = join(dir.path, "root.yaml");
    writeFileSync(file, cfg, { mode: 0o644 });
    chownSync(dir.path, NOBODY, NOBODY);
    expect(process.getuid?.()).toBe(0);
    expect(runMta(["suppress", "add", "gone@example.net", "-c", file])).toMatchObject({
      code: 0,
      stdout: "gone@example.net: added\n",
    });
    const listDir = join(spool, "suppression");
    for (const p of [listDir, ...readdirSync(listDir).map((f) => join(listDir, f))])
      expect({ p, uid: statSync(p).uid, gid: statSync(p).gid }).toEqual({ p, uid: NOBODY, gid: NOBODY });
    await using mta = await startMta({ dir: dir.path, config: cfg, uid: NOBODY });
    const check = runMta(["suppress", "check", "gone@example.net", "-c", cliConfigFor(mta)]);
    expect(check.stderr).toBe("");
    expect(check.stdout).toBe("gone@example.net: suppressed (manual, global, expires never)\n");
    expect(check.code).toBe(0);
  });

  test("a spool directory root owns: the list is root's, as before", () => {
    using dir = tempDir();
    const file = join(dir.path, "mta.yaml");
    writeFileSync(file, testConfig(dir.path));
    expect(runMta(["suppress", "add", "x@example.net", "-c", file]).code).toBe(0);
    expect(statSync(join(dir.path, "spool", "suppression", "suppressions.log")).uid).toBe(0);
  });
});
