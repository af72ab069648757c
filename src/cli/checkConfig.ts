/**
 * `mta check-config`: validate the configuration and print the effective one (defaults filled in).
 * DKIM keys are loaded and checked too, as `mta serve` would at start: an operator expects
 * check-config to catch a malformed key before a restart does.
 */
import { defineCommand } from "citty";
import { bounceRulesProblems, dkimProblems } from "../app/index.ts";
import { ConfigError, findConfigPath, loadConfig, renderConfigYaml } from "../config/index.ts";
import { EXIT } from "../lib/index.ts";
import { configArg } from "./_args.ts";

export default defineCommand({
  meta: {
    name: "check-config",
    description: "Validate the configuration; print the effective configuration",
  },
  args: {
    ...configArg,
    json: { type: "boolean", description: "Print JSON instead of YAML" },
    quiet: { type: "boolean", alias: "q", description: "Print nothing; only the exit code tells" },
  },
  run({ args }) {
    const file = findConfigPath(args.config);
    const { config, raw, problemAt } = loadConfig(file);
    const problems = [...dkimProblems(config), ...bounceRulesProblems(config)];
    if (problems.length > 0)
      throw new ConfigError(
        file,
        problems.map((p) => problemAt(p.path, p.message)),
      );
    if (!args.quiet) {
      process.stdout.write(
        args.json ? `${JSON.stringify(raw, null, 2)}\n` : `# ${file}: ok\n${renderConfigYaml(raw)}`,
      );
    }
    return EXIT.ok;
  },
});
