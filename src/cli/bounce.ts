/**
 * `mta bounce`: the bounce classification rules at work: which class a reply gets and from which
 * rule, and the rules themselves.
 *
 * Owns: `mta bounce classify REPLY` (class, the rule's file:line and text; --json), `mta bounce
 * rules` (the effective rules: the configuration's rules_files in order, then the built-in file).
 * Exit codes: 0, 64 usage, 78 a rules file with problems (each named with its line).
 */
import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { builtinRulesSource, replyLineInput } from "../bounce/index.ts";
import { loadClassifier } from "../feedback/index.ts";
import { type Config, findConfigPath, loadConfig, parseConfigText } from "../config/index.ts";
import { EXIT, UsageError } from "../lib/index.ts";
import { configArg } from "./_args.ts";

/** The configuration when one is found; else the defaults (built-in rules only). */
function configOrDefaults(file: string | undefined): Config {
  try {
    return loadConfig(findConfigPath(file)).config;
  } catch (err) {
    if (file === undefined && (err as { file?: string }).file === "(none)")
      return parseConfigText("", "/dev/null").config;
    throw err;
  }
}

const classify = defineCommand({
  meta: {
    name: "classify",
    description: 'The class of a reply, e.g. mta bounce classify "550 5.1.1 no such user"',
  },
  args: {
    ...configArg,
    reply: { type: "positional", required: true, description: "The reply: code, enhanced code, text" },
    json: { type: "boolean", description: "Print JSON" },
  },
  run({ args }) {
    const config = configOrDefaults(args.config);
    const line = args.reply.replace(/\s+/g, " ").trim();
    if (line === "") throw new UsageError("the reply is empty");
    const input = replyLineInput(line);
    const c = loadClassifier(config).classify(input);
    const ruleText = c.rule ? ruleLine(config, c.rule) : undefined;
    if (args.json) {
      process.stdout.write(
        `${JSON.stringify({ ...input, class: c.class, rule: c.rule ?? null, ruleText: ruleText ?? null })}\n`,
      );
      return EXIT.ok;
    }
    process.stdout.write(`${c.class}\t${c.rule ? `${c.rule}: ${ruleText}` : "(no rule matched)"}\n`);
    return EXIT.ok;
  },
});

/** The text of rule `file:line`. */
function ruleLine(config: Config, rule: string): string {
  const at = rule.lastIndexOf(":");
  const file = rule.slice(0, at);
  const n = Number(rule.slice(at + 1));
  const text =
    file === "(built-in)"
      ? builtinRulesSource()
      : config.bounces.rulesFiles.includes(file)
        ? readFileSync(file, "utf8")
        : "";
  return (text.split(/\r?\n/)[n - 1] ?? "").replace(/\s+/g, " ").trim();
}

const rules = defineCommand({
  meta: {
    name: "rules",
    description: "The rules in force: bounces.rules_files in order, then the built-in rules",
  },
  args: { ...configArg },
  run({ args }) {
    const config = configOrDefaults(args.config);
    loadClassifier(config); // problems: exit 78 with each named
    for (const f of config.bounces.rulesFiles)
      process.stdout.write(`# ---- ${f}\n${readFileSync(f, "utf8").replace(/\n?$/, "\n")}`);
    if (config.bounces.builtinRules) process.stdout.write(`# ---- (built-in)\n${builtinRulesSource()}`);
    return EXIT.ok;
  },
});

export default defineCommand({
  meta: { name: "bounce", description: "Bounce classification: classify a reply, print the rules" },
  subCommands: { classify, rules },
});
