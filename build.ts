/**
 * Compiles src/cli/main.ts into the single executable dist/mta (minified, bytecode, ESM).
 * Usage: bun build.ts [--outfile dist/mta]
 */
import { chmodSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";

const outIndex = process.argv.indexOf("--outfile");
const outfile = outIndex > 0 ? process.argv[outIndex + 1]! : "dist/mta";
mkdirSync(dirname(outfile), { recursive: true });

const result = await Bun.build({
  // The DKIM signing worker is a second entrypoint so that it is embedded in the executable.
  entrypoints: ["src/cli/main.ts", "src/dkim/_worker.ts"],
  compile: { outfile },
  minify: true,
  bytecode: true,
  format: "esm",
  target: "bun",
  sourcemap: "none",
  // Test-only fault injection (src/lib/fault.ts) cannot be reached in the executable.
  define: { "process.env.MTA_TEST_FAULT": "undefined" },
});
if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
chmodSync(outfile, 0o755);
console.log(`built ${outfile}`);
