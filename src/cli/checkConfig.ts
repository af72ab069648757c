/**
 * `mta check-config`: validate the configuration as `mta serve` would at start (binding aside), and
 * print the effective configuration (defaults filled in).
 *
 * Owns: the output: YAML (or `--json`) of the effective configuration on success; on failure the
 * problems, one per line with YAML path and line (or `--json`: `{ ok: false, file, problems }` on
 * stdout); `-q` prints nothing either way. Exit 0 or 78. Secrets (control.token, relay passwords,
 * user hashes, inline or in their *_file) are printed as `<redacted>`.
 * Does not own: the checks (config/ for the file, app/'s `startProblems` for what it points at).
 */
import { defineCommand } from "citty";
import { startProblems } from "../app/index.ts";
import { ConfigError, findConfigPath, loadConfig, redactSecrets, renderConfigYaml } from "../config/index.ts";
import { EXIT } from "../lib/index.ts";
import { configArg } from "./_args.ts";

export default defineCommand({
  meta: {
    name: "check-config",
    description: "Validate the configuration as serve would at start; print the effective configuration",
  },
  args: {
    ...configArg,
    json: { type: "boolean", description: "Print JSON instead of YAML (problems too, on stdout)" },
    quiet: { type: "boolean", alias: "q", description: "Print nothing; only the exit code tells" },
  },
  run({ args }) {
    try {
      const file = findConfigPath(args.config);
      const { config, raw, problemAt } = loadConfig(file);
      const problems = startProblems(config);
      if (problems.length > 0)
        throw new ConfigError(
          file,
          problems.map((p) => problemAt(p.path, p.message)),
        );
      const shown = redactSecrets(raw);
      if (!args.quiet)
        process.stdout.write(
          args.json ? `${JSON.stringify(shown, null, 2)}\n` : `# ${file}: ok\n${renderConfigYaml(shown)}`,
        );
      return EXIT.ok;
    } catch (err) {
      if (!(err instanceof ConfigError) || !(args.quiet || args.json)) throw err;
      if (args.json)
        process.stdout.write(
          `${JSON.stringify({ ok: false, file: err.file, problems: err.problems }, null, 2)}\n`,
        );
      return EXIT.config;
    }
  },
});
