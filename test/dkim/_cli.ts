/** Runs `src/cli/dkim.ts` as its own command (until the integrator registers it in main.ts). */
import { runCommand } from "citty";
import { MtaError } from "../../src/lib/index.ts";
import dkim from "../../src/cli/dkim.ts";

try {
  await runCommand(dkim, { rawArgs: process.argv.slice(2) });
} catch (err) {
  process.stderr.write(`mta: ${(err as Error).message}\n`);
  process.exitCode = err instanceof MtaError && err.code === "usage" ? 64 : 1;
}
