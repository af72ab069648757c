/**
 * The command line at its edges, through the compiled binary: every command of `mta --help` refuses
 * an unknown flag, a flag without its value and an extra operand (exit 64, naming it); every command
 * fed a missing file, a directory and an unreadable file (as nobody) answers one line and a sysexits
 * code, never a stack frame; and the reproductions of issue 13 (check-config = serve's start, zero
 * values, misleading messages).
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { spawn } from "bun";
import { chownSync, closeSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { controlFetch, MTA, runMta, STACK_FRAME, startMta, tempDir, testConfig } from "../support/mta.ts";
import { lacking, peer } from "../support/peers.ts";
import { selfSignedCert } from "../listener/_harness.ts";
import { freePort } from "../support/sink.ts";
import { startScriptedPeer } from "../support/scriptedPeer.ts";

const SYSEXITS = [64, 65, 66, 69, 73, 74, 75, 77, 78];
// Each test runs the binary tens of times; on a busy 2-core machine that takes a while.
setDefaultTimeout(120_000);

interface Leaf {
  path: string[];
  /** Flags that take a value, e.g. --config. */
  valued: string[];
  /** Number of operands (<ID>, [TARGET]). */
  operands: number;
}

/** Every leaf command reachable from `mta --help`, read from the help text as a user would. */
function leaves(path: string[] = []): Leaf[] {
  const help = runMta([...path, "--help"]);
  expect(help.code).toBe(0);
  const section = /\nCOMMANDS\n\n([\s\S]*?)\n\n/.exec(help.stdout);
  if (section) {
    const names = section[1]!
      .split("\n")
      .map((l) => l.trim().split(/\s+/)[0]!)
      .filter(Boolean);
    return names.flatMap((n) => leaves([...path, n]));
  }
  const valued = [...help.stdout.matchAll(/(--[a-z-]+)=</g)].map((m) => m[1]!);
  const usage = /^USAGE .*$/m.exec(help.stdout)?.[0] ?? "";
  const operands = (usage.match(/ [<[][A-Z]+[>\]]/g) ?? []).length;
  return [{ path, valued, operands }];
}

const LEAVES = leaves();

describe("strict arguments, for every command", () => {
  test("the walk finds every command (a new one cannot be forgotten)", () => {
    const names = LEAVES.map((l) => l.path.join(" "));
    for (const n of [
      "serve",
      "check-config",
      "dkim keygen",
      "hash-password",
      "send",
      "queue summary",
      "queue delete",
    ])
      expect(names).toContain(n);
    expect(names.length).toBeGreaterThanOrEqual(16);
  });

  test("an unknown flag: exit 64, one line naming it, nothing on stdout", () => {
    for (const leaf of LEAVES) {
      const r = runMta([...leaf.path, "--no-such-flag"], { stdin: "" });
      expect({ cmd: leaf.path.join(" "), code: r.code, stdout: r.stdout }).toEqual({
        cmd: leaf.path.join(" "),
        code: 64,
        stdout: "",
      });
      const lines = r.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith("mta: ");
      expect(lines[0]).toContain("--no-such-flag");
    }
  });

  test("a flag without its value, and an extra operand: exit 64 naming it", () => {
    let checked = 0;
    for (const leaf of LEAVES) {
      if (leaf.path[0] === "send") continue; // sendmail's own parser: tested with -f below
      for (const flag of leaf.valued) {
        const r = runMta([...leaf.path, flag]);
        expect({ cmd: `${leaf.path.join(" ")} ${flag}`, code: r.code }).toEqual({
          cmd: `${leaf.path.join(" ")} ${flag}`,
          code: 64,
        });
        expect(r.stderr).toContain(`${flag} needs a value`);
        checked++;
      }
      const extra = [...leaf.path, ...Array.from({ length: leaf.operands + 1 }, (_, i) => `extra${i}`)];
      const r = runMta(extra);
      expect({ cmd: extra.join(" "), code: r.code }).toEqual({ cmd: extra.join(" "), code: 64 });
      expect(r.stderr).toContain("unexpected operand");
      expect(r.stderr).toContain(`"extra${leaf.operands}"`);
    }
    expect(checked).toBeGreaterThan(20);
    const f = runMta(["send", "-f"]);
    expect(f).toEqual({
      code: 64,
      stdout: "",
      stderr: "mta: send: -f needs a value (see mta send --help)\n",
    });
  });

  test("issue 13's cases: a misspelt selector deletes nothing; check-config --confg and -c without a value are refused", async () => {
    using dir = tempDir();
    const config = join(dir.path, "mta.yaml");
    writeFileSync(
      config,
      testConfig(dir.path, "delivery: { retry: [1h] }").replace(
        "control: { address: 127.0.0.1:0 }",
        'control: { address: "" }',
      ),
    );
    // Two messages queued (nothing answers: they stay).
    for (const to of ["a@example.com", "b@other.test"]) {
      const r = runMta(["send", "-c", config, "--max-time", "1s", "-i", to], {
        stdin: "Subject: x\n\nx\n",
        env: { MTA_LOOPBACK_ONLY: "1" },
      });
      expect(r.code).toBe(75);
    }
    const del = runMta([
      "queue",
      "delete",
      "-c",
      config,
      "--older-than",
      "0s",
      "--destinaton",
      "example.com",
      "--yes",
    ]);
    expect(del.code).toBe(64);
    expect(del.stderr).toContain("unknown option --destinaton (did you mean --destination?)");
    const list = runMta(["queue", "list", "-c", config, "--json"]);
    expect(JSON.parse(list.stdout).matched).toBe(2);
    expect(runMta(["check-config", "--confg", config]).code).toBe(64);
    expect(runMta(["check-config", "-c"]).code).toBe(64);
    expect(runMta(["queue", "summary", "-c", config, "--bogus"]).code).toBe(64);
    const show = runMta(["queue", "show", "-c", config, "1M8SRR5660A33E", "extra"]);
    expect(show.stderr).toBe('mta: queue show: unexpected operand "extra" (see mta queue show --help)\n');
    for (const cmd of [["show"], ["suspend"], ["resume"]]) {
      const r = runMta(["queue", ...cmd, "-c", config]);
      expect(r.code).toBe(64);
      expect(r.stderr).toMatch(
        /^mta: queue \w+: missing operand (ID|DESTINATION) \(see mta queue \w+ --help\)\n$/,
      );
    }
    const forever = runMta(["queue", "suspend", "-c", config, "x.test", "--for", "99999999999d"]);
    expect(forever.code).toBe(64);
    expect(forever.stderr).toContain("at most 100 years");
    const bogus = runMta(["bogus"]);
    expect(bogus.stderr).toStartWith('mta: unknown command "bogus"');
  });
});

describe.skipIf(lacking("setpriv", "root"))("missing, directory and unreadable files, as nobody", () => {
  test("every command answers one line and a sysexits code; no line looks like a stack frame", () => {
    using dir = tempDir("mta-edges-", { open: true });
    const good = join(dir.path, "good.yaml");
    writeFileSync(good, testConfig(dir.path), { mode: 0o644 });
    // nobody's own spool and log, so that `send --batch FILE` gets as far as reading FILE.
    mkdirSync(join(dir.path, "spool"));
    chownSync(join(dir.path, "spool"), 65534, 65534);
    writeFileSync(join(dir.path, "deliveries.jsonl"), "");
    chownSync(join(dir.path, "deliveries.jsonl"), 65534, 65534);
    const missing = join(dir.path, "missing.yaml");
    const directory = join(dir.path, "a-directory");
    mkdirSync(directory, { mode: 0o755 });
    const unreadable = join(dir.path, "secret.yaml");
    writeFileSync(unreadable, testConfig(dir.path), { mode: 0o600 }); // root's
    const files = { missing, directory, unreadable };
    const dirFd = openSync(directory, "r");
    const seen: string[] = [];
    try {
      for (const [kind, file] of Object.entries(files)) {
        const runs: { args: string[]; stdin?: string | number }[] = [];
        for (const leaf of LEAVES) {
          if (leaf.valued.includes("--config") || leaf.path[0] === "send")
            runs.push({
              args: [...leaf.path, "-c", file, ...Array(leaf.operands).fill("x.test")],
              stdin: "",
            });
        }
        runs.push({ args: ["send", "-c", good, "--batch", file] });
        runs.push({
          args: ["dkim", "keygen", "--domain", "x.test", "--selector", "s", "--out", join(file, "k.pem")],
        });
        runs.push({ args: ["dkim", "keygen", "--domain", "x.test", "--selector", "s", "--out", file] });
        runs.push({ args: ["send", "-c", good, "root"], stdin: dirFd });
        runs.push({ args: ["hash-password"], stdin: dirFd });
        for (const run of runs) {
          const r = runMta(run.args, {
            nobody: true,
            ...(run.stdin !== undefined ? { stdin: run.stdin } : {}),
          });
          const what = `${kind}: mta ${run.args.join(" ")} → ${r.code}\n${r.stderr}`;
          seen.push(what);
          expect({ what, code: SYSEXITS.includes(r.code) }).toEqual({ what, code: true });
          expect({ what, frame: STACK_FRAME.test(`${r.stdout}\n${r.stderr}`) }).toEqual({
            what,
            frame: false,
          });
          expect({ what, first: r.stderr.split("\n")[0]!.startsWith("mta") }).toEqual({ what, first: true });
          // One line, except a configuration error (a header line, then one line per problem) and
          // mta send's batch report (a line per bad item, then the summary line).
          const lines = r.stderr.trimEnd().split("\n");
          if (r.stderr.startsWith("mta send: "))
            expect({ what, all: lines.every((l) => l.startsWith("mta send: ")) }).toEqual({
              what,
              all: true,
            });
          else if (!r.stderr.startsWith("mta: configuration error"))
            expect({ what, lines: lines.length }).toEqual({ what, lines: 1 });
        }
      }
    } finally {
      closeSync(dirFd);
    }
    expect(seen.length).toBeGreaterThan(50); // 19 commands × 3 kinds of file
  });

  test("the words: a missing, a directory and an unreadable configuration", () => {
    using dir = tempDir("mta-edges-", { open: true });
    const secret = join(dir.path, "secret.yaml");
    writeFileSync(secret, "hostname: x.test\n", { mode: 0o600 });
    mkdirSync(join(dir.path, "d.yaml"));
    const cases: [string, string][] = [
      [join(dir.path, "none.yaml"), "cannot read: no such file or directory"],
      [join(dir.path, "d.yaml"), "cannot read: is a directory (a file was expected)"],
      [secret, "cannot read: permission denied"],
    ];
    for (const [file, why] of cases) {
      const r = runMta(["check-config", "-c", file], { nobody: true });
      expect(r.code).toBe(78);
      expect(r.stderr).toBe(`mta: configuration error in ${file}: 1 problem\n  -  (file): ${why}\n`);
    }
  });
});

describe("check-config is serve's start minus binding", () => {
  function both(config: string): { check: ReturnType<typeof runMta>; serve: ReturnType<typeof runMta> } {
    return { check: runMta(["check-config", "-c", config]), serve: runMta(["serve", "-c", config]) };
  }

  test("a non-loopback control address without a token: both exit 78 naming the key and control.token", () => {
    using dir = tempDir();
    const config = join(dir.path, "mta.yaml");
    writeFileSync(
      config,
      testConfig(dir.path).replace("control: { address: 127.0.0.1:0 }", "control: { address: 0.0.0.0:0 }"),
    );
    const { check, serve } = both(config);
    expect(check.code).toBe(78);
    expect(check.stderr).toMatch(
      /\n {2}\d+:\d+ {2}control\.address: 0\.0\.0\.0:0 is not loopback: set control\.token/,
    );
    expect(serve).toEqual({ ...check, stdout: "" });
  });

  test.skipIf(lacking("openssl"))(
    "TLS: garbage, a key of another pair, swapped files, a directory: refused with path and line",
    () => {
      using dir = tempDir();
      const a = selfSignedCert();
      const b = selfSignedCert();
      try {
        const garbage = join(dir.path, "garbage.pem");
        writeFileSync(garbage, "not a certificate\n");
        mkdirSync(join(dir.path, "certdir"));
        const cases: [string, string, RegExp][] = [
          [garbage, a.keyFile, /listen\[0\]\.tls\.cert: .*garbage\.pem: not a PEM certificate/],
          [a.certFile, b.keyFile, /listen\[0\]\.tls\.key: .* is not the private key of the certificate/],
          [a.keyFile, a.certFile, /listen\[0\]\.tls\.cert: .*: not a PEM certificate/],
          [
            join(dir.path, "certdir"),
            a.keyFile,
            /listen\[0\]\.tls\.cert: .*certdir is a directory, not a PEM file/,
          ],
        ];
        for (const [cert, key, want] of cases) {
          const config = join(dir.path, "mta.yaml");
          writeFileSync(
            config,
            testConfig(dir.path).replace(
              "listen: [{ address: 127.0.0.1:0 }]",
              `listen: [{ address: 127.0.0.1:0, tls: { cert: ${cert}, key: ${key} } }]`,
            ),
          );
          const { check, serve } = both(config);
          expect(check.code).toBe(78);
          expect(check.stderr).toMatch(want);
          expect(check.stderr).toMatch(/\n {2}\d+:\d+ {2}listen\[0\]\.tls\./);
          expect(serve).toEqual({ ...check, stdout: "" });
        }
        // The real pair passes both.
        const config = join(dir.path, "mta.yaml");
        writeFileSync(
          config,
          testConfig(dir.path).replace(
            "listen: [{ address: 127.0.0.1:0 }]",
            `listen: [{ address: 127.0.0.1:0, tls: { cert: ${a.certFile}, key: ${a.keyFile} } }]`,
          ),
        );
        expect(runMta(["check-config", "-c", config, "-q"])).toEqual({ code: 0, stdout: "", stderr: "" });
      } finally {
        a.dispose();
        b.dispose();
      }
    },
  );

  test("paths: a file named spool, log.deliveries a directory; serve and check-config 78, send and queue one line", () => {
    using dir = tempDir();
    const config = join(dir.path, "mta.yaml");
    writeFileSync(
      config,
      testConfig(dir.path).replace("control: { address: 127.0.0.1:0 }", 'control: { address: "" }'),
    );
    writeFileSync(join(dir.path, "spool"), "");
    mkdirSync(join(dir.path, "deliveries.jsonl"));
    const { check, serve } = both(config);
    expect(check.code).toBe(78);
    expect(check.stderr).toContain(`spool.dir: ${join(dir.path, "spool")} exists and is not a directory`);
    expect(check.stderr).toContain(
      `log.deliveries: ${join(dir.path, "deliveries.jsonl")} is a directory, not a file`,
    );
    expect(check.stderr).toContain("2 problems");
    expect(serve).toEqual({ ...check, stdout: "" });
    const send = runMta(["send", "-c", config, "-i", "a@x.test"], { stdin: "x\n" });
    expect(send.code).toBe(73);
    expect(send.stderr).toMatch(new RegExp(`^mta: spool\\.dir ${join(dir.path, "spool")}: .*\\n$`));
    for (const q of [["flush"], ["compact"], ["delete", "--destination", "x.test", "--yes"]]) {
      const r = runMta(["queue", ...q, "-c", config]);
      expect(SYSEXITS).toContain(r.code);
      expect(r.stderr).toMatch(new RegExp(`^mta: spool\\.dir ${join(dir.path, "spool")}: [^\\n]+\\n$`));
    }
  });

  test.skipIf(lacking("setpriv", "root"))(
    "an unwritable spool (as nobody): check-config and serve say so with the key; queue flush exits 77",
    () => {
      using dir = tempDir("mta-edges-", { open: true });
      const config = join(dir.path, "mta.yaml");
      writeFileSync(
        config,
        testConfig(dir.path).replace("control: { address: 127.0.0.1:0 }", 'control: { address: "" }'),
        {
          mode: 0o644,
        },
      );
      mkdirSync(join(dir.path, "spool", "segments"), { recursive: true, mode: 0o755 });
      const check = runMta(["check-config", "-c", config], { nobody: true });
      expect(check.code).toBe(78);
      expect(check.stderr).toContain(
        `spool.dir: ${join(dir.path, "spool")}: permission denied (the user running mta must be able to write it)`,
      );
      const serve = runMta(["serve", "-c", config], { nobody: true });
      expect(serve.stderr).toBe(check.stderr);
      const flush = runMta(["queue", "flush", "-c", config], { nobody: true });
      expect(flush.code).toBe(77);
      expect(flush.stderr).toMatch(/^mta: spool\.dir .*: permission denied\n$/);
    },
  );

  test("a directory where a segment file belongs: serve and check-config refuse it by name", () => {
    using dir = tempDir();
    const config = join(dir.path, "mta.yaml");
    writeFileSync(config, testConfig(dir.path));
    const seg = join(dir.path, "spool", "segments", "00000000000000000001.seg");
    mkdirSync(seg, { recursive: true });
    const { check, serve } = both(config);
    expect(check.code).toBe(78);
    expect(check.stderr).toContain(`spool.dir: ${seg} is not a segment file (move it out of the spool)`);
    expect(serve).toEqual({ ...check, stdout: "" });
  });
});

describe("the configuration file", () => {
  function check(text: string | Uint8Array, ...args: string[]): ReturnType<typeof runMta> {
    using dir = tempDir();
    const file = join(dir.path, "mta.yaml");
    writeFileSync(file, text);
    const r = runMta(["check-config", "-c", file, ...args]);
    return { ...r, stderr: r.stderr.replaceAll(file, "FILE") };
  }

  test("a duplicate key is reported beside every other problem", () => {
    const r = check(
      "spool: { dir: ./s }\nspool: { sync: true }\ndelivery: { max_age: 5x }\nlog: { levle: info }\n",
    );
    expect(r.code).toBe(78);
    expect(r.stderr).toBe(
      [
        "mta: configuration error in FILE: 3 problems",
        "  2:1  spool: appears twice in the same mapping (the second would win): remove one",
        '  3:22  delivery.max_age: expected a duration such as "30s", "5m", "4h" or "5d" (a bare number is seconds), got "5x"',
        '  4:8  log.levle: unknown key "levle" (did you mean "level"?)',
        "",
      ].join("\n"),
    );
  });

  test("many nested aliases, a top-level list, a binary file: 78 with one readable problem each", () => {
    const bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"];
    for (const l of "bcdefgh")
      bomb.push(
        `${l}: &${l} [${Array(9)
          .fill(`*${String.fromCharCode(l.charCodeAt(0) - 1)}`)
          .join(", ")}]`,
      );
    const r1 = check(`${bomb.join("\n")}\n`);
    expect(r1.code).toBe(78);
    expect(r1.stderr).toContain("cannot expand the YAML: Excessive alias count");
    const r2 = check("- listen\n- spool\n");
    expect(r2.code).toBe(78);
    expect(r2.stderr).toContain(
      "(file): expected a mapping of keys at the top level (hostname:, spool:, listen:, ...), got a list",
    );
    const binary = new Uint8Array(256).map((_, i) => i);
    const r3 = check(binary);
    expect(r3.code).toBe(78);
    expect(r3.stderr).toBe(
      "mta: configuration error in FILE: 1 problem\n  -  (file): not a YAML text file: a NUL byte at offset 0 (is this the right file?)\n",
    );
    expect(r3.stderr).not.toMatch(/[\x00-\x08\x0e-\x1f\x7f-\xff]/);
  });

  test("zero values: max_message_size 0 and max_age 0 are refused; durations parse one way (300 is 5 minutes)", () => {
    const r = check("listen: [{ address: 127.0.0.1:2525, max_message_size: 0 }]\ndelivery: { max_age: 0 }\n");
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(
      "delivery.max_age: expected a duration greater than 0: 0 would expire every message before its first attempt",
    );
    expect(r.stderr).toContain(
      'listen[0].max_message_size: expected a size greater than 0 (0 is not read as "no limit"',
    );
    const ok = check("delivery: { max_age: 300, delay_warning: 0, retry: [60, 5m] }\n", "--json");
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout).delivery).toMatchObject({
      max_age: 300,
      delay_warning: 0,
      retry: [60, "5m"],
    });
  });

  test("-q prints nothing, even for a bad file; --json prints problems as JSON on stdout", () => {
    const bad = "delivery: { max_age: 5x }\n";
    expect(check(bad, "-q")).toEqual({ code: 78, stdout: "", stderr: "" });
    const j = check(bad, "--json");
    expect(j.code).toBe(78);
    expect(j.stderr).toBe("");
    const out = JSON.parse(j.stdout);
    expect(out.ok).toBe(false);
    expect(out.problems).toEqual([
      expect.objectContaining({ path: "delivery.max_age", line: 1, column: 22 }),
    ]);
  });
});

describe("misleading words corrected", () => {
  test("IPv6 listeners print as [::1]:port; a port in use names its key", async () => {
    using dir = tempDir();
    const config = testConfig(dir.path)
      .replace("listen: [{ address: 127.0.0.1:0 }]", 'listen: [{ address: "[::1]:0" }]')
      .replace("control: { address: 127.0.0.1:0 }", 'control: { address: "[::1]:0" }');
    await using mta = await startMta({ dir: dir.path, config });
    const started = mta.logLines().find((l) => String(l.msg).endsWith(" started"))!;
    expect(started.listeners).toEqual([`[::1]:${mta.smtpPorts[0]}`]);
    expect(started.control).toBe(`[::1]:${mta.controlPort}`);
    using other = tempDir();
    const file = join(other.path, "mta.yaml");
    writeFileSync(
      file,
      testConfig(other.path).replace(
        "listen: [{ address: 127.0.0.1:0 }]",
        `listen: [{ address: "[::1]:${mta.smtpPorts[0]}" }]`,
      ),
    );
    const r = runMta(["serve", "-c", file]);
    expect(r.code).toBe(69);
    expect(r.stderr).toContain(
      `mta: listen[0].address [::1]:${mta.smtpPorts[0]}: cannot listen: address already in use\n`,
    );
  });

  test.skipIf(lacking("script"))(
    "hash-password on a terminal prompts twice, never echoes; from a pipe it reads a line",
    async () => {
      // A real pty (script): the prompts appear, the password typed after them never does.
      const p = spawn([peer("script")!, "-qec", `${MTA} hash-password`, "/dev/null"], {
        stdin: "pipe",
        stdout: "pipe",
        stderr: "pipe",
      });
      let out = "";
      const reading = (async () => {
        for await (const c of p.stdout) out += new TextDecoder().decode(c);
      })();
      const waitFor = async (text: string) => {
        for (let i = 0; i < 400 && !out.includes(text); i++) await Bun.sleep(25);
        expect(out).toContain(text);
      };
      await waitFor("Password: ");
      p.stdin.write("hunter2-secret\r");
      await waitFor("Again: ");
      p.stdin.write("hunter2-secret\r");
      await waitFor("$argon2id$");
      p.stdin.end();
      expect(await p.exited).toBe(0);
      await reading;
      expect(out).not.toContain("hunter2");
      const hash = /\$argon2id\$\S+/.exec(out)![0];
      expect(await Bun.password.verify("hunter2-secret", hash)).toBe(true);
      const piped = runMta(["hash-password"], { stdin: "from-a-pipe\nignored\n" });
      expect(piped.code).toBe(0);
      expect(await Bun.password.verify("from-a-pipe", piped.stdout.trim())).toBe(true);
      expect(runMta(["hash-password"], { stdin: "" })).toMatchObject({ code: 64 });
    },
  );

  test("queue flush of a destination in backoff says that it lifted it and how many go now", async () => {
    using dir = tempDir();
    const closed = freePort();
    // A fixed control port: `mta queue` finds the daemon through the configuration file.
    const config = testConfig(
      dir.path,
      `delivery: { routes: { down.test: "127.0.0.1:${closed}" }, retry: [1h], site_backoff: [1h] }`,
    ).replace("control: { address: 127.0.0.1:0 }", `control: { address: 127.0.0.1:${freePort()} }`);
    const down = `127.0.0.1:${closed}`;
    await using mta = await startMta({ dir: dir.path, config });
    for (let i = 0; i < 3; i++) {
      const res = await controlFetch(mta.dir, "/api/v1/inject", {
        method: "POST",
        body: JSON.stringify({
          sender: "a@x.test",
          recipients: [`r${i}@down.test`],
          subject: "s",
          text: "t",
        }),
      });
      expect(res.status).toBe(200);
    }
    const state = async () =>
      JSON.parse(runMta(["queue", "summary", "-c", mta.configFile, "--json"]).stdout).destinations.find(
        (d: { destination: string }) => d.destination === "down.test",
      )?.state;
    const end = Date.now() + 10_000;
    while ((await state()) !== "backoff" && Date.now() < end) await Bun.sleep(100);
    expect(await state()).toBe("backoff");
    const r = runMta(["queue", "flush", "-c", mta.configFile, "down.test"]);
    expect(r.code).toBe(0);
    // down.test is routed to the sink's address: its site is that next hop, named as summary does.
    expect(r.stdout).toBe(`3 message(s) due now; backoff lifted for down.test via ${down}\n`);
    // With no target every backoff is lifted, as `postqueue -f` does (it said "0 message(s) due now"
    // and retried nothing); -c may come before the subcommand's name, as `postqueue -c DIR -f`.
    const again = Date.now() + 10_000;
    while ((await state()) !== "backoff" && Date.now() < again) await Bun.sleep(100);
    expect(await state()).toBe("backoff");
    const all = runMta(["queue", "-c", mta.configFile, "flush"]);
    expect(all.code).toBe(0);
    expect(all.stdout).toBe(`3 message(s) due now; backoff lifted for ${down}\n`);
  });

  test("the send summary counts this run's own results: a bounce is bounced, its DSN is not delivered", async () => {
    using dir = tempDir();
    await using peer = await startScriptedPeer({
      rcpt: (to) => (to.includes("nobody@bad.test") ? "550 5.1.1 no such user" : "250 2.1.5 ok"),
    });
    const config = join(dir.path, "mta.yaml");
    writeFileSync(
      config,
      testConfig(
        dir.path,
        `delivery: { routes: { bad.test: "127.0.0.1:${peer.port}", mta.test: "127.0.0.1:${peer.port}" } }`,
      ).replace("control: { address: 127.0.0.1:0 }", 'control: { address: "" }'),
    );
    // spawn, not spawnSync: the scripted peer answers on this process's event loop.
    const p = spawn([MTA, "send", "-c", config, "--json", "-i", "nobody@bad.test"], {
      env: { ...process.env, MTA_LOOPBACK_ONLY: "1" },
      stdin: Buffer.from("Subject: x\n\nx\n"),
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, out] = await Promise.all([p.exited, new Response(p.stdout).text()]);
    expect(code).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ accepted: 1, delivered: 0, bounced: 1, deferred: 0 });
    // The DSN went back to the (qualified) sender, and arrived: the old summary counted it as delivered.
    const dsn = peer.sessions.flatMap((s) => s.messages).find((m) => m.from === "");
    expect(dsn?.rcpts.map((r) => r.to)).toEqual([expect.stringMatching(/@mta\.test$/)]);
  });
});
