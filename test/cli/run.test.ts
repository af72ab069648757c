/**
 * The one error path (src/cli/_run.ts) with errors no command would throw on purpose: a TypeError from
 * a bug, an errno error nobody put into words, an unhandled rejection. Each runs in a child Bun
 * process, as the executable would, and must print one line and exit with its sysexits code; only
 * MTA_DEBUG=1 shows the stack.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { join } from "node:path";
import { parseStrict } from "../../src/cli/_run.ts";
import { STACK_FRAME } from "../support/mta.ts";

const RUN = join(import.meta.dir, "../../src/cli/_run.ts");

/** A tiny CLI around `run()` whose one command does `body`. */
function cli(body: string, env: Record<string, string> = {}): { code: number; stderr: string } {
  const script = `
import { defineCommand } from "citty";
import { run } from ${JSON.stringify(RUN)};
const boom = defineCommand({ meta: { name: "boom" }, async run() { ${body} } });
process.exitCode = await run(defineCommand({ meta: { name: "mta" }, subCommands: { boom } }), ["boom"]);
`;
  const r = spawnSync([process.execPath, "-e", script], { env: { ...process.env, ...env }, stderr: "pipe" });
  return { code: r.exitCode ?? -1, stderr: r.stderr.toString() };
}

describe("one error path", () => {
  test("a bug (TypeError): one line saying where the detail is, exit 70; MTA_DEBUG=1 prints the stack", () => {
    const r = cli("const u = null as any; return u.index;");
    expect(r.code).toBe(70);
    expect(r.stderr).toMatch(
      /^mta: internal error: TypeError: .*index.* \(a bug; run again with MTA_DEBUG=1 for the detail, and report it\)\n$/,
    );
    expect(r.stderr).not.toMatch(STACK_FRAME);
    const d = cli("const u = null as any; return u.index;", { MTA_DEBUG: "1" });
    expect(d.code).toBe(70);
    expect(d.stderr).toMatch(/\n\s+at /); // the stack, asked for
  });

  test("an errno error nobody put into words: its path and errno's meaning, and errno's exit code", () => {
    const r = cli(`(await import("node:fs")).readFileSync("/nonexistent/file");`);
    expect(r).toEqual({ code: 66, stderr: "mta: /nonexistent/file: no such file or directory\n" });
    const w = cli(`(await import("node:fs")).mkdirSync("/proc/nope");`);
    expect(w.code).toBe(73);
    expect(w.stderr).toBe("mta: /proc/nope: no such file or directory\n");
  });
});

describe("parseStrict", () => {
  const def = {
    config: { type: "string", alias: "c" },
    json: { type: "boolean" },
    id: { type: "positional", required: true },
  } as const;

  test("values glued or separate, aliases, --no-flag, -- ends the flags", () => {
    expect(parseStrict(def, ["-c", "f.yaml", "--json", "ID1"])).toMatchObject({
      config: "f.yaml",
      json: true,
      id: "ID1",
    });
    expect(parseStrict(def, ["--config=-odd.yaml", "--no-json", "--", "--id-with-dashes"])).toMatchObject({
      config: "-odd.yaml",
      json: false,
      id: "--id-with-dashes",
    });
  });

  test("each mistake is named", () => {
    expect(() => parseStrict(def, ["ID", "--confg", "x"])).toThrow(
      "unknown option --confg (did you mean --config?)",
    );
    expect(() => parseStrict(def, ["ID", "-c"])).toThrow("-c needs a value");
    expect(() => parseStrict(def, ["ID", "-c", "--json"])).toThrow("-c needs a value");
    expect(() => parseStrict(def, ["ID", "--json=yes"])).toThrow("--json takes no value");
    expect(() => parseStrict(def, ["ID", "--json", "--json"])).toThrow("--json is given twice");
    expect(() => parseStrict(def, [])).toThrow("missing operand ID");
    expect(() => parseStrict(def, ["ID", "extra"])).toThrow('unexpected operand "extra"');
  });
});
