import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { runMta, startMta, tempDir, testConfig } from "../support/mta.ts";

const EXAMPLE = resolve(import.meta.dir, "../../mta.example.yaml");

describe("mta executable", () => {
  test("--version prints the package version", () => {
    const r = runMta(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  test("--help lists the commands, and each command has its own help", () => {
    const r = runMta(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("serve");
    expect(r.stdout).toContain("check-config");
    const c = runMta(["check-config", "--help"]);
    expect(c.code).toBe(0);
    expect(c.stdout).toContain("--json");
  });

  test("an unknown command is a usage error (64) naming it, with a did-you-mean", () => {
    const r = runMta(["frobnicate"]);
    expect(r.code).toBe(64);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      'mta: unknown command "frobnicate"; the commands are serve, check-config, dkim, hash-password, queue, send, suppress, bounce (see mta --help)\n',
    );
    const q = runMta(["queue", "sumary"]);
    expect(q.code).toBe(64);
    expect(q.stderr).toStartWith('mta: queue: unknown command "sumary" (did you mean "summary"?)');
  });

  test("check-config accepts mta.example.yaml and prints the effective config as YAML or JSON", () => {
    const r = runMta(["check-config", "-c", EXAMPLE]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("max_age: 5d");
    const j = runMta(["check-config", "-c", EXAMPLE, "--json"]);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout).listen[0].address).toBe("127.0.0.1:2525");
  });

  test("check-config finds the file through MTA_CONFIG", () => {
    const r = runMta(["check-config", "-q"], { env: { MTA_CONFIG: EXAMPLE } });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
  });

  test("a config with three mistakes exits 78 naming all three with path and line", () => {
    using dir = tempDir();
    const file = join(dir.path, "bad.yaml");
    writeFileSync(
      file,
      "delivery:\n  max_age: 5x\nspool:\n  dirr: /tmp\nlisten:\n  - address: 127.0.0.1:25\n    relay_from: [10.0.0.0/33]\n",
    );
    const r = runMta(["check-config", "-c", file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("3 problems");
    expect(r.stderr).toContain("2:12  delivery.max_age");
    expect(r.stderr).toContain('4:3  spool.dirr: unknown key "dirr" (did you mean "dir"?)');
    expect(r.stderr).toContain("7:18  listen[0].relay_from[0]");
    const s = runMta(["serve", "-c", file]);
    expect(s.code).toBe(78);
  });
});

describe("mta serve", () => {
  test("answers /healthz and /metrics, reloads on SIGHUP, stops on SIGTERM within 2 s", async () => {
    using dir = tempDir();
    await using mta = await startMta({ dir: dir.path });
    const base = `http://127.0.0.1:${mta.controlPort}`;
    const health = await fetch(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(((await health.json()) as { status: string }).status).toBe("ok");
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain(`mta_build_info{runtime="bun ${Bun.version}",version="${pkg.version}"} 1`);
    expect(metrics).toMatch(/^process_resident_memory_bytes \d+/m);

    // A valid change is applied; an invalid one is logged and the old config kept.
    writeFileSync(mta.configFile, `${testConfig(dir.path)}\n`.replace("level: info", "level: debug"));
    mta.proc.kill("SIGHUP");
    await mta.waitForLog((r) => r.msg === "configuration reloaded");
    writeFileSync(mta.configFile, "spool: { dirr: x }\n");
    mta.proc.kill("SIGHUP");
    const failed = await mta.waitForLog((r) => String(r.msg).startsWith("configuration reload failed"));
    expect(String(failed.msg)).toContain("did you mean");
    expect((await fetch(`${base}/healthz`)).status).toBe(200);

    const t0 = performance.now();
    const code = await mta.stop("SIGTERM");
    expect(code).toBe(0);
    expect(performance.now() - t0).toBeLessThan(2000);
  }, 20_000);

  test("a second mta serve on the same spool is refused with a clear message", async () => {
    using dir = tempDir();
    await using first = await startMta({ dir: dir.path });
    const configFile = join(dir.path, "second.yaml");
    writeFileSync(configFile, testConfig(dir.path));
    const second = runMta(["serve", "-c", configFile]);
    expect(second.code).toBe(69);
    expect(second.stderr).toMatch(/lock/i);
    expect(second.stderr).toContain(String(first.proc.pid));
  });
});
