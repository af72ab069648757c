import { expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

// docs/architecture.md's module table: an arrow is "may import"; anything else is forbidden.
const ALLOWED: Record<string, string[] | "*"> = {
  cli: ["app", "admin", "sendmail", "bounce", "dkim", "feedback", "suppression", "config", "observe", "lib"],
  app: "*",
  accept: [
    "config",
    "disposition",
    "feedback",
    "listener",
    "message",
    "mime",
    "observe",
    "smtp",
    "spool",
    "lib",
  ],
  admin: [
    "accept",
    "bounce",
    "config",
    "disposition",
    "dkim",
    "feedback",
    "message",
    "observe",
    "scheduler",
    "smtp",
    "spool",
    "suppression",
    "lib",
  ],
  sendmail: ["accept", "admin", "app", "config", "message", "observe", "smtp", "lib"],
  message: ["lib"],
  config: ["lib"],
  smtp: ["lib"],
  listener: ["smtp", "message", "lib", "observe"],
  deliverer: ["smtp", "mime", "dns", "lib", "observe"],
  tlspolicy: ["dns", "lib", "observe"],
  dns: ["lib", "observe"],
  route: ["config", "dns", "tlspolicy", "smtp", "lib"],
  scheduler: ["deliverer", "disposition", "route", "message", "smtp", "lib", "observe"],
  disposition: ["bounce", "deliverer", "smtp", "lib", "observe"],
  spool: ["smtp", "lib", "observe"],
  bounce: ["message", "smtp", "lib"],
  dkim: ["config", "smtp", "lib", "observe"],
  feedback: ["bounce", "config", "listener", "message", "observe", "smtp", "suppression", "lib"],
  suppression: ["lib", "observe"],
  webhook: ["lib", "observe"],
  mime: ["message", "lib"],
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

test("every import between modules follows the module table and goes through index.ts", () => {
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
