/**
 * `npm run torture` (bun torture/run.ts): runs the five torture scenarios against the compiled
 * dist/mta at full length, prints what each tried and what held, then one summary table.
 * Exit code: 0 when nothing acknowledged was lost and no promise broke; 1 otherwise; 64 on bad flags.
 *
 *   --only crash,full,clients,remotes,damage   run a subset (default: all)
 *   --rounds N          crash loop: kills (default 200)
 *   --sessions N        crash loop: injecting sessions (default 8)
 *   --max-life-ms N     crash loop: longest life before a kill (default 2000)
 *   --full-rounds N     disk full: fill/refuse/free rounds (default 5)
 *   --clients-s N       hostile clients: seconds (default 120)
 *   --remotes-s N       hostile remotes: seconds the servers stay hostile (default 60)
 *   --damage-rounds N   damaged spool: spools damaged (default 5)
 *   --seed N            seeds every random choice (default 1)
 *   --quick             the CI sizes (a few rounds each, about a minute in all)
 */
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { MTA } from "../test/support/mta.ts";
import { crashLoop, crashLoopDefaults } from "./crashLoop.ts";
import { damagedSpool, damagedSpoolDefaults } from "./damagedSpool.ts";
import { diskFull, diskFullDefaults } from "./diskFull.ts";
import { hostileClients, hostileClientsDefaults } from "./hostileClients.ts";
import { hostileRemotes, hostileRemotesDefaults } from "./hostileRemotes.ts";
import type { ScenarioResult } from "./_support.ts";

const SCENARIOS = ["crash", "full", "clients", "remotes", "damage"] as const;

function usage(msg: string): never {
  process.stderr.write(`torture: ${msg}\n`);
  process.exit(64);
}

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        only: { type: "string" },
        rounds: { type: "string" },
        sessions: { type: "string" },
        "max-life-ms": { type: "string" },
        "full-rounds": { type: "string" },
        "clients-s": { type: "string" },
        "remotes-s": { type: "string" },
        "damage-rounds": { type: "string" },
        seed: { type: "string" },
        quick: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    return usage(String((e as Error).message));
  }
})();

if (values.help) {
  const src = await Bun.file(import.meta.path).text();
  process.stdout.write(`${/\/\*\*([\s\S]*?)\*\//.exec(src)?.[1]?.replace(/^ \* ?/gm, "") ?? ""}\n`);
  process.exit(0);
}

function num(name: keyof typeof values, fallback: number): number {
  const v = values[name];
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !/^\d+$/.test(v)) usage(`--${name} must be a whole number`);
  return Number(v);
}

const only = values.only ? values.only.split(",") : [...SCENARIOS];
for (const o of only)
  if (!(SCENARIOS as readonly string[]).includes(o))
    usage(`unknown scenario "${o}" (${SCENARIOS.join(", ")})`);
if (!existsSync(MTA)) usage("dist/mta is missing: build it first (npx bun build.ts)");

const quick = values.quick === true;
const seed = num("seed", 1);
const log = (line: string) => console.log(line);
const results: ScenarioResult[] = [];
const t0 = Date.now();

const run = async (name: string, fn: () => Promise<ScenarioResult>) => {
  const started = Date.now();
  console.log(`\n== ${name}`);
  try {
    const r = await fn();
    r.figures.seconds = Math.round((Date.now() - started) / 1000);
    results.push(r);
    for (const v of r.violations) console.log(`  BROKEN: ${v}`);
  } catch (e) {
    console.log(`  CRASHED: ${(e as Error).stack ?? e}`);
    results.push({
      name,
      summary: "the scenario itself failed",
      lost: 0,
      violations: [String(e)],
      figures: {},
    });
  }
};

if (only.includes("crash"))
  await run("crash loop", () =>
    crashLoop(
      {
        ...crashLoopDefaults,
        rounds: num("rounds", quick ? 6 : crashLoopDefaults.rounds),
        sessions: num("sessions", quick ? 4 : crashLoopDefaults.sessions),
        maxLifeMs: num("max-life-ms", quick ? 800 : crashLoopDefaults.maxLifeMs),
        seed,
      },
      log,
    ),
  );
if (only.includes("full"))
  await run("disk full", () =>
    diskFull(
      {
        ...diskFullDefaults,
        rounds: num("full-rounds", quick ? 2 : diskFullDefaults.rounds),
        refusals: quick ? 50 : diskFullDefaults.refusals,
      },
      log,
    ),
  );
if (only.includes("clients"))
  await run("hostile clients", () =>
    hostileClients(
      {
        ...hostileClientsDefaults,
        durationMs: num("clients-s", quick ? 12 : hostileClientsDefaults.durationMs / 1000) * 1000,
        seed,
      },
      log,
    ),
  );
if (only.includes("remotes"))
  await run("hostile remotes", () =>
    hostileRemotes(
      {
        ...hostileRemotesDefaults,
        hostileMs: num("remotes-s", quick ? 10 : hostileRemotesDefaults.hostileMs / 1000) * 1000,
        messagesPerServer: quick ? 5 : hostileRemotesDefaults.messagesPerServer,
      },
      log,
    ),
  );
if (only.includes("damage"))
  await run("damaged spool", () =>
    damagedSpool(
      {
        ...damagedSpoolDefaults,
        rounds: num("damage-rounds", quick ? 2 : damagedSpoolDefaults.rounds),
        messages: quick ? 400 : damagedSpoolDefaults.messages,
        seed,
      },
      log,
    ),
  );

const lost = results.reduce((n, r) => n + r.lost, 0);
const broken = results.reduce((n, r) => n + r.violations.length, 0);
console.log(
  `\n## Torture summary (${quick ? "quick" : "full"} run, seed ${seed}, ${Math.round((Date.now() - t0) / 1000)} s)\n`,
);
console.log("| scenario | what was tried and what held | lost | broken promises | s |");
console.log("|---|---|---:|---:|---:|");
for (const r of results)
  console.log(
    `| ${r.name} | ${r.summary} | ${r.lost} | ${r.violations.length} | ${r.figures.seconds ?? "-"} |`,
  );
console.log(
  lost === 0 && broken === 0
    ? "\nheld: 0 acknowledged messages lost"
    : `\nFAILED: ${lost} lost, ${broken} broken promise(s)`,
);
process.exit(lost === 0 && broken === 0 ? 0 : 1);
