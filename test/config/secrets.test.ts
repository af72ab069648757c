/**
 * Secrets in files of their own (token_file, password_file, users_file), redaction, the client mode
 * that leaves them unread, and the new keys' edges (control.socket, spool.maildrop, shutdown_grace).
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ConfigError,
  controlToken,
  inlineSecretPaths,
  parseConfigText,
  REDACTED,
  redactSecrets,
  resolveSecrets,
} from "../../src/config/index.ts";

const HASH = "$argon2id$v=19$m=65536,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "mta-secrets-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function problems(text: string, file = "/etc/mta/mta.yaml"): string[] {
  try {
    parseConfigText(text, file);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems.map((p) => `${p.path}: ${p.message}`);
  }
}

test("token_file, password_file and users_file are read into the configuration the daemon uses", () => {
  withDir((dir) => {
    writeFileSync(join(dir, "token"), "tok-123\n");
    writeFileSync(join(dir, "pass"), "relay-pw\n");
    writeFileSync(join(dir, "users"), `# comment\n\nbob:${HASH}\n`);
    const text = [
      "control: { token_file: ./token }",
      `listen: [{ address: 127.0.0.1:2525, users: { alice: '${HASH}' }, users_file: ./users }]`,
      "delivery: { routes: { x.test: { hosts: ['a:1'], auth: { username: u, password_file: ./pass } } } }",
    ].join("\n");
    const { config: loaded, raw } = parseConfigText(text, join(dir, "mta.yaml"));
    // Loading reads no secret file (any user may load the file); resolveSecrets reads them.
    expect(loaded.control.token).toBeUndefined();
    const { config, problems: unread } = resolveSecrets(loaded);
    expect(unread).toEqual([]);
    expect(config.control.token).toBe("tok-123");
    expect(config.delivery.routes["x.test"]!.auth).toMatchObject({ username: "u", password: "relay-pw" });
    expect(Object.keys(config.listen[0]!.users).sort()).toEqual(["alice", "bob"]);
    // What check-config prints: the files by path, every secret value redacted.
    const shown = JSON.stringify(redactSecrets(raw));
    expect(shown).not.toContain("tok-123");
    expect(shown).not.toContain(HASH);
    expect(shown).toContain('"token_file":"./token"');
    expect(redactSecrets(raw).listen[0]!.users.alice).toBe(REDACTED);
    expect(inlineSecretPaths(raw)).toEqual(["listen[0].users"]);
  });
});

test("a client that may not read the secret files loads the configuration all the same", () => {
  withDir((dir) => {
    const tokenFile = join(dir, "token");
    const text = `control: { token_file: ${tokenFile} }`;
    // A client's load does not read it at all; what serve and check-config read reports it.
    const { config } = parseConfigText(text, join(dir, "mta.yaml"));
    expect(resolveSecrets(config).problems).toEqual([
      { path: ["control", "token_file"], message: `cannot read ${tokenFile} (ENOENT)` },
    ]);
    expect(config.control.token).toBeUndefined();
    expect(controlToken(config)).toBeUndefined();
    writeFileSync(tokenFile, "late-token\n");
    expect(controlToken(config)).toBe("late-token");
  });
});

test("secret files that are empty, unreadable, doubled or malformed are reported with their YAML path", () => {
  withDir((dir) => {
    writeFileSync(join(dir, "empty"), "\n");
    writeFileSync(join(dir, "two"), "a\nb\n");
    writeFileSync(join(dir, "users"), `bob:${HASH}\nbob:${HASH}\nplain:secret\n`);
    const at = join(dir, "mta.yaml");
    const secretProblems = (text: string) =>
      resolveSecrets(parseConfigText(text, at).config).problems.map(
        (p) => `${p.path.join(".")}: ${p.message}`,
      );
    expect(secretProblems("control: { token_file: ./empty }")).toEqual([
      `control.token_file: ${join(dir, "empty")} is empty`,
    ]);
    expect(secretProblems("control: { token_file: ./two }")[0]).toContain("holds more than one line");
    expect(problems("control: { token: x, token_file: ./two }", at)[0]).toContain("not both");
    expect(secretProblems("listen: [{ address: 127.0.0.1:1, users_file: ./users }]")).toEqual([
      `listen.0.users_file: ${join(dir, "users")} line 2: user bob given twice`,
      `listen.0.users_file: ${join(dir, "users")} line 3: expected user:hash with a hash from \`mta hash-password\``,
    ]);
    expect(
      problems("delivery: { routes: { x.test: { hosts: ['a:1'], auth: { username: u } } } }")[0],
    ).toContain("exactly one of password and password_file");
  });
});

test("control.socket defaults to the spool; the maildrop must be outside it; shutdown_grace is 0 to 1h", () => {
  const { config } = parseConfigText(
    "spool: { dir: /var/spool/mta/q, maildrop: /var/spool/mta/drop }",
    "/etc/mta/mta.yaml",
  );
  expect(config.control.socketPath).toBe("/var/spool/mta/q/control.sock");
  expect(config.shutdownGraceMs).toBe(30_000);
  expect(
    parseConfigText("control: { socket: '' }", "/etc/mta/mta.yaml").config.control.socketPath,
  ).toBeUndefined();
  expect(parseConfigText("spool: { maildrop: '' }", "/etc/mta/mta.yaml").config.spool.maildrop).toBe("");
  expect(parseConfigText("shutdown_grace: 0", "/etc/mta/mta.yaml").config.shutdownGraceMs).toBe(0);
  for (const bad of [
    "spool: { dir: /s, maildrop: /s }",
    "spool: { dir: /s, maildrop: /s/d }",
    "spool: { dir: /d/s, maildrop: /d }",
  ])
    expect(problems(bad)[0]).toContain("spool.maildrop: must be outside spool.dir");
  expect(problems("shutdown_grace: 2h")).toEqual(['shutdown_grace: expected at most 1h, got "2h"']);
  const deep = `/var/${"d".repeat(100)}`;
  expect(problems(`spool: { dir: ${deep} }`)[0]).toContain("spool.dir: the control socket");
  expect(problems(`spool: { dir: ${deep} }\ncontrol: { socket: /run/mta.sock }`)).toEqual([]);
  expect(problems("shutdown_grace: soon")[0]).toContain("expected a duration");
});
