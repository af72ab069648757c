/**
 * Loading the configuration: find the file, parse YAML with positions, validate, report every problem at once.
 *
 * Owns: `findConfigPath`, `loadConfig`, `parseConfigText`, `ConfigError` with its problem list.
 * Every problem names its YAML path and `line:column`; unknown keys get a did-you-mean.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import * as v from "valibot";
import { isMap, isPair, isScalar, isSeq, LineCounter, type Node, parseDocument, stringify } from "yaml";
import { errnoText, MtaError } from "../lib/index.ts";
import { feedbackProblems } from "./_feedback.ts";
import { closest, parseDuration } from "./_values.ts";
import { ConfigSchema, type RawConfig, show } from "./schema.ts";
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
    return `  ${at}  ${printable(p.path || "(file)")}: ${printable(p.message)}`;
  });
  return [head, ...lines].join("\n");
}

/** Control characters (from a binary file, an odd key) shown as \xNN, never sent to a terminal raw. */
export function printable(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
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

/** The YAML path of the mapping key that starts at `offset`. */
function keyPathAt(node: unknown, offset: number, path: PathKey[]): PathKey[] | undefined {
  if (isMap(node)) {
    for (const pair of node.items) {
      const key = pair.key as Node | null;
      const name = isScalar(key) ? String(key.value) : "?";
      if (key?.range?.[0] === offset) return [...path, name];
      const found = keyPathAt(pair.value, offset, [...path, name]);
      if (found) return found;
    }
  } else if (isSeq(node)) {
    for (const [i, item] of node.items.entries()) {
      const found = keyPathAt(item, offset, [...path, i]);
      if (found) return found;
    }
  }
  return undefined;
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

/**
 * Cross-field checks the schema cannot express; problems are pushed with their paths. Files the
 * configuration names (TLS, DKIM keys, spool, log) are checked by app/preflight.ts, for the commands
 * that use them (`serve`, `check-config`), not here: `mta send` run by any user must load this file.
 */
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
    if (l.auth !== "off" && Object.keys(l.users).length === 0 && l.users_file === undefined) {
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
  if (raw.control.token !== undefined && raw.control.token_file !== undefined)
    push(["control", "token_file"], "give control.token or control.token_file, not both");
  const spoolDir = resolve(baseDir, raw.spool.dir);
  const drop = raw.spool.maildrop === "" ? "" : resolve(baseDir, raw.spool.maildrop);
  if (drop && (drop === spoolDir || drop.startsWith(`${spoolDir}/`) || spoolDir.startsWith(`${drop}/`)))
    push(
      ["spool", "maildrop"],
      "must be outside spool.dir, and not hold it: the spool is private (0700), the maildrop open to every local user",
    );
  const socket = raw.control.socket ?? join(spoolDir, "control.sock");
  if (socket !== "" && Buffer.byteLength(resolve(baseDir, socket)) > 107)
    push(
      raw.control.socket === undefined ? ["spool", "dir"] : ["control", "socket"],
      `the control socket ${resolve(baseDir, socket)} is longer than a Unix socket path may be (107 bytes): set control.socket to a shorter path, or "" for none`,
    );
  // Longer than any service manager waits, and past what a timer can hold.
  if ((parseDuration(raw.shutdown_grace) ?? 0) > 3_600_000)
    push(["shutdown_grace"], `expected at most 1h, got ${show(raw.shutdown_grace)}`);
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
  // A duplicate key leaves a usable document: report it with everything else. Any other YAML error
  // (bad syntax) leaves nothing to validate.
  let fatal = false;
  for (const e of doc.errors) {
    const pos = e.linePos?.[0];
    if (e.code === "DUPLICATE_KEY") {
      const path = keyPathAt(doc.contents, e.pos[0], []);
      problems.push({
        path: path ? formatPath(path) : "",
        line: pos?.line,
        column: pos?.col,
        message: "appears twice in the same mapping (the second would win): remove one",
      });
      continue;
    }
    fatal = true;
    const message = e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
    problems.push({ path: "", line: pos?.line, column: pos?.col, message });
  }
  if (fatal) throw new ConfigError(file, problems);
  let input: unknown;
  try {
    // maxAliasCount: a "billion laughs" file of nested aliases is refused, not expanded.
    input = doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    throw new ConfigError(file, [
      ...problems,
      { path: "", message: `cannot expand the YAML: ${(err as Error).message.split("\n")[0]}` },
    ]);
  }
  if (typeof input !== "object" || input === null || Array.isArray(input))
    throw new ConfigError(file, [
      {
        path: "",
        line: 1,
        column: 1,
        message: `expected a mapping of keys at the top level (hostname:, spool:, listen:, ...), got ${show(input)}`,
      },
    ]);
  // A section whose keys are all commented out (`send:` alone) is its defaults, as if absent.
  for (const [k, val] of Object.entries(input))
    if (val === null) delete (input as Record<string, unknown>)[k];
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
        push(path, issue.input === undefined ? "missing" : `expected a mapping, got ${show(issue.input)}`);
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
  if (problems.length) throw new ConfigError(file, sortByLine(problems));
  const problemAt = (path: readonly PathKey[], message: string): ConfigProblem => {
    // A key the file does not set has no line of its own: its default is what is wrong.
    if (!doc.hasIn(path as PathKey[]))
      return {
        path: formatPath(path),
        message: `${message} (the default: set ${formatPath(path)} to change it)`,
      };
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
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new ConfigError(file, [{ path: "", message: `cannot read: ${errnoText(err)}` }]);
  }
  return parseConfigText(configText(bytes, file), resolve(file));
}

/** The file as text: UTF-8 without NUL bytes, else it is not a YAML file (and is never printed). */
function configText(bytes: Uint8Array, file: string): string {
  const nul = bytes.indexOf(0);
  let text: string | undefined;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    text = undefined;
  }
  if (nul >= 0 || text === undefined)
    throw new ConfigError(file, [
      {
        path: "",
        message: `not a YAML text file: ${nul >= 0 ? `a NUL byte at offset ${nul}` : "it is not UTF-8"} (is this the right file?)`,
      },
    ]);
  return text;
}

export function renderConfigYaml(raw: RawConfig): string {
  return stringify(raw, { lineWidth: 0 });
}
