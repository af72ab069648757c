import { expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

// DESIGN.md's module table: an arrow is "may import"; anything else is forbidden.
const ALLOWED: Record<string, string[] | "*"> = {
  cli: ["app", "config", "observe", "lib"],
  app: "*",
  config: ["lib"],
  smtp: ["lib"],
  listener: ["smtp", "lib", "observe"],
  deliverer: ["smtp", "mime", "dns", "lib", "observe"],
  tlspolicy: ["dns", "lib", "observe"],
  dns: ["lib", "observe"],
  scheduler: ["deliverer", "bounce", "spool", "lib", "observe"],
  spool: ["lib", "observe"],
  bounce: ["smtp", "lib"],
  dkim: ["smtp", "lib"],
  suppression: ["lib", "observe"],
  webhook: ["lib", "observe"],
  mime: ["lib"],
  observe: ["lib"],
  cluster: ["lib", "observe"],
  lib: [],
};

const SRC = resolve(import.meta.dir, "../../src");

function* files(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* files(p);
    else if (p.endsWith(".ts")) yield p;
  }
}

test("every import between modules follows DESIGN.md's module table and goes through index.ts", () => {
  const violations: string[] = [];
  for (const file of files(SRC)) {
    const from = relative(SRC, file).split("/")[0]!;
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*)"(\.[^"]+)"/g)) {
      const target = resolve(dirname(file), m[1]!);
      const rel = relative(SRC, target);
      if (rel.startsWith("..")) continue; // package.json and the like
      const to = rel.split("/")[0]!;
      if (to === from) continue;
      const allowed = ALLOWED[from];
      if (allowed === undefined)
        violations.push(`${relative(SRC, file)}: module "${from}" is not in the table`);
      else if (allowed !== "*" && !allowed.includes(to))
        violations.push(`${relative(SRC, file)} imports ${to}/`);
      else if (!rel.endsWith("/index.ts") && !(from === "cli" && rel.startsWith("cli/"))) {
        violations.push(`${relative(SRC, file)} imports ${rel} (not through ${to}/index.ts)`);
      }
    }
  }
  expect(violations).toEqual([]);
});
