/**
 * Loading the configuration: find the file, parse YAML with positions, validate, report every problem at once.
 *
 * Owns: `findConfigPath`, `loadConfig`, `parseConfigText`, `ConfigError` with its problem list.
 * Every problem names its YAML path and `line:column`; unknown keys get a did-you-mean.
 */
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import * as v from "valibot";
import { isMap, isPair, isScalar, isSeq, LineCounter, type Node, parseDocument, stringify } from "yaml";
import { MtaError } from "../lib/index.ts";
import { feedbackProblems } from "./_feedback.ts";
import { closest } from "./_values.ts";
import { ConfigSchema, type RawConfig } from "./schema.ts";
import { buildConfig, type Config } from "./types.ts";

export interface ConfigProblem {
  /** YAML path such as `listen[0].relay_from[1]`, or "" for the whole file. */
  path: string;
  line?: number;
  column?: number;
  message: string;
}

export class ConfigError extends MtaError {
  override name = "ConfigError";
  constructor(
    readonly file: string,
    readonly problems: ConfigProblem[],
  ) {
    super("config", formatProblems(file, problems));
  }
}

export function formatProblems(file: string, problems: readonly ConfigProblem[]): string {
  const head = `${file}: ${problems.length} problem${problems.length === 1 ? "" : "s"}`;
  const lines = problems.map((p) => {
    const at = p.line !== undefined ? `${p.line}:${p.column ?? 1}` : "-";
    return `  ${at}  ${p.path || "(file)"}: ${p.message}`;
  });
  return [head, ...lines].join("\n");
}

export const CONFIG_SEARCH_PATH = ["./mta.yaml", "/etc/mta/mta.yaml"];

/** `--config`, else `MTA_CONFIG`, else `./mta.yaml`, else `/etc/mta/mta.yaml`. */
export function findConfigPath(
  explicit: string | undefined,
  env: Record<string, string | undefined> = process.env,
): string {
  if (explicit) return resolve(explicit);
  if (env.MTA_CONFIG) return resolve(env.MTA_CONFIG);
  for (const p of CONFIG_SEARCH_PATH) if (existsSync(p)) return resolve(p);
  throw new ConfigError("(none)", [
    {
      path: "",
      message: `no configuration file: pass --config, set MTA_CONFIG, or create ${CONFIG_SEARCH_PATH.join(" or ")}`,
    },
  ]);
}

type PathKey = string | number;

function formatPath(path: readonly PathKey[]): string {
  let out = "";
  for (const k of path) out += typeof k === "number" ? `[${k}]` : out ? `.${k}` : k;
  return out;
}

/** The YAML node at `path` (the key node when `wantKey`), or the deepest existing ancestor. */
function nodeAt(
  doc: ReturnType<typeof parseDocument>,
  path: readonly PathKey[],
  wantKey: boolean,
): Node | null {
  let node: unknown = doc.contents;
  let last: Node | null = (doc.contents as Node | null) ?? null;
  for (let i = 0; i < path.length; i++) {
    const k = path[i]!;
    const isLast = i === path.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(k));
      if (!pair) return last;
      if (isLast && wantKey) return pair.key as Node;
      node = pair.value;
    } else if (isSeq(node) && typeof k === "number") {
      node = node.items[k];
    } else return last;
    if (node && typeof node === "object" && "range" in node) last = node as Node;
    else return last;
  }
  return last;
}

type Schema = v.GenericSchema;

/** The object schema found by walking `path` through the config schema, for did-you-mean hints. */
function schemaAt(schema: Schema, path: readonly PathKey[]): Schema | undefined {
  let s: Schema | undefined = schema;
  for (const k of path) {
    s = unwrap(s);
    if (!s) return undefined;
    const any = s as unknown as {
      type: string;
      entries?: Record<string, Schema>;
      item?: Schema;
      value?: Schema;
    };
    if ((any.type === "strict_object" || any.type === "object") && any.entries) s = any.entries[String(k)];
    else if (any.type === "array" && any.item) s = any.item;
    else if (any.type === "record" && any.value) s = any.value;
    else return undefined;
  }
  return unwrap(s);
}

/** Strips `optional`/`nullable` wrappers; a valibot pipe already carries its first schema's entries. */
function unwrap(s: Schema | undefined): Schema | undefined {
  let cur = s as unknown as { wrapped?: Schema } | undefined;
  while (cur?.wrapped) cur = cur.wrapped as unknown as { wrapped?: Schema };
  return cur as unknown as Schema | undefined;
}

/** Cross-field checks the schema cannot express; problems are pushed with their paths. */
function semanticChecks(
  raw: RawConfig,
  baseDir: string,
  push: (path: PathKey[], message: string) => void,
): void {
  const seen = new Map<string, number>();
  raw.listen.forEach((l, i) => {
    const prev = seen.get(l.address);
    if (prev !== undefined) push(["listen", i, "address"], `the same address as listen[${prev}]`);
    seen.set(l.address, i);
    if (l.tls) {
      for (const k of ["cert", "key"] as const) {
        const file = resolve(baseDir, l.tls[k]);
        try {
          accessSync(file, constants.R_OK);
        } catch (err) {
          push(
            ["listen", i, "tls", k],
            `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`,
          );
        }
      }
    }
    if (l.auth !== "off" && Object.keys(l.users).length === 0) {
      push(["listen", i, "auth"], `auth is ${l.auth} but listen[${i}].users is empty`);
    }
    if (l.auth === "required" && !l.tls && !l.allow_plaintext_auth) {
      push(
        ["listen", i, "auth"],
        "auth is required but the listener has no tls and allow_plaintext_auth is false",
      );
    }
    for (const [user, hash] of Object.entries(l.users ?? {})) {
      if (!/^\$(argon2(id|i|d)|2[aby])\$/.test(hash)) {
        push(
          ["listen", i, "users", user],
          "expected a password hash (argon2 or bcrypt) from `mta hash-password`, never a plain password",
        );
      }
    }
  });
  feedbackProblems(raw, push);
  for (const [i, f] of raw.bounces.rules_files.entries()) {
    const file = resolve(baseDir, f);
    try {
      accessSync(file, constants.R_OK);
    } catch (err) {
      push(
        ["bounces", "rules_files", i],
        `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`,
      );
    }
  }
  raw.dkim.keys.forEach((k, i) => {
    const file = resolve(baseDir, k.key_file);
    try {
      accessSync(file, constants.R_OK);
    } catch (err) {
      push(
        ["dkim", "keys", i, "key_file"],
        `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`,
      );
    }
  });
}

export interface LoadedConfig {
  config: Config;
  /** The effective configuration as written (defaults filled in), for `mta check-config`. */
  raw: RawConfig;
  /** Where a YAML path is in the file, for problems found after loading (e.g. a malformed DKIM key). */
  problemAt(path: readonly (string | number)[], message: string): ConfigProblem;
}

/** Parses and validates YAML text; throws `ConfigError` listing every problem. */
export function parseConfigText(text: string, file: string): LoadedConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  const problems: ConfigProblem[] = [];
  for (const e of doc.errors) {
    const pos = e.linePos?.[0];
    problems.push({ path: "", line: pos?.line, column: pos?.col, message: e.message.split("\n")[0]! });
  }
  if (problems.length) throw new ConfigError(file, problems);
  const input = doc.toJS() ?? {};
  const push = (path: readonly PathKey[], message: string, key = false) => {
    const node = nodeAt(doc, path, key);
    const pos = node?.range ? lineCounter.linePos(node.range[0]) : undefined;
    problems.push({ path: formatPath(path), line: pos?.line, column: pos?.col, message });
  };
  const result = v.safeParse(ConfigSchema, input, { abortEarly: false });
  if (!result.success) {
    for (const issue of result.issues) {
      const path: PathKey[] = (issue.path ?? []).map((p) => p.key as PathKey);
      if (issue.type === "strict_object" && issue.expected === "never") {
        const key = String(path[path.length - 1]);
        const parent = schemaAt(ConfigSchema as Schema, path.slice(0, -1)) as unknown as {
          entries?: Record<string, unknown>;
        };
        const hint = parent?.entries ? closest(key, Object.keys(parent.entries)) : undefined;
        push(path, `unknown key "${key}"${hint ? ` (did you mean "${hint}"?)` : ""}`, true);
      } else if (issue.type === "strict_object") {
        push(
          path,
          issue.input === undefined ? "missing" : `expected a mapping, got ${JSON.stringify(issue.input)}`,
        );
      } else {
        const message =
          issue.input === undefined && issue.kind === "schema" ? `missing (${issue.message})` : issue.message;
        push(path, tidy(message));
      }
    }
    throw new ConfigError(file, sortByLine(dedupe(problems)));
  }
  const baseDir = dirname(file);
  semanticChecks(result.output, baseDir, push);
  if (problems.length) throw new ConfigError(file, problems);
  const problemAt = (path: readonly PathKey[], message: string): ConfigProblem => {
    const node = nodeAt(doc, path, false);
    const pos = node?.range ? lineCounter.linePos(node.range[0]) : undefined;
    return { path: formatPath(path), line: pos?.line, column: pos?.col, message };
  };
  return { config: buildConfig(result.output, file, baseDir), raw: result.output, problemAt };
}

/** Valibot's built-in messages in the same voice as ours: "expected X, got Y". */
function tidy(message: string): string {
  const m = /^(?:Invalid (?:type|value|length): )?Expected (.+?) but received (.+)$/.exec(message);
  if (!m) return message;
  const what = m[1]!
    .replace(/^Array$/, "a list")
    .replace(/^Object$/, "a mapping")
    .replace(/^>=(\d+)$/, "a value >= $1");
  return `expected ${what.replace(/^(boolean|number|string)$/, "a $1")}, got ${m[2]}`;
}

function sortByLine(problems: ConfigProblem[]): ConfigProblem[] {
  return problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = `${p.path}\0${p.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

export function loadConfig(file: string): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [{ path: "", message: `cannot read: ${(err as Error).message}` }]);
  }
  return parseConfigText(text, resolve(file));
}

export function renderConfigYaml(raw: RawConfig): string {
  return stringify(raw, { lineWidth: 0 });
}
