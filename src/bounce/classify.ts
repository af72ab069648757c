/**
 * Bounce classification: every failed or deferred recipient gets one of a fixed set of classes, from its
 * reply (code, enhanced status code, text), by ordered rules read from rules files.
 *
 * Owns: the class names (PowerMTA's bounce categories, with KumoMTA's/Momentum's names as aliases),
 * the rules file format and its parser (problems with line numbers), `Classifier.classify`.
 * Does not own: which classes suppress an address (app/), where the class is written (app/, scheduler/).
 * Invariants: a class is always one of `BOUNCE_CLASSES`, so a metric labelled by class has at most 17
 * values whatever the operator writes; the first matching rule wins and operator rules come before the
 * built-in ones; a reply no rule matches is "other".
 *
 * Rules file format (one rule per line; `#` starts a comment line; blank lines are ignored):
 *
 *   <class> <condition> [<condition> ...]
 *
 *   code=550 | code=55x | code=5xx        the basic reply code; x is any digit
 *   status=5.1.1 | status=x.1.1 | status=5.7.* | status=5.7.6xx   the enhanced status code
 *                                         (RFC 3463): x in the class is 4 or 5, in the detail any
 *                                         digit; * any number; status=none when the reply has none
 *   kind=permanent | kind=transient       5xx or 4xx (no reply at all counts as transient)
 *   text=/regular expression/flags        the reply text, lines joined by spaces; flags i, s, u; it
 *                                         must be the last condition (the expression may hold spaces)
 *
 * Every condition on a line must hold. A line that names no condition is an error.
 */
import { BOUNCE_CLASSES, type BounceClass, MtaError } from "../lib/index.ts";
import builtinRulesText from "./rules.txt" with { type: "text" };

/** PowerMTA's bounce categories (lib/bounceClasses.ts): the values of `class` in the delivery log. */
export { BOUNCE_CLASSES, type BounceClass };

/**
 * KumoMTA's predefined classes (Momentum's names) and the PowerMTA category each maps to, so that a
 * KumoMTA rules file's class names can be used as they are.
 */
export const KUMO_CLASS_NAMES: Readonly<Record<string, BounceClass>> = {
  InvalidRecipient: "bad-mailbox",
  BadDomain: "bad-domain",
  InactiveMailbox: "inactive-mailbox",
  InvalidSender: "invalid-sender",
  QuotaIssues: "quota-issues",
  NoAnswerFromHost: "no-answer-from-host",
  BadConnection: "bad-connection",
  DNSFailure: "routing-errors",
  RoutingErrors: "routing-errors",
  MessageExpired: "message-expired",
  ProtocolErrors: "protocol-errors",
  TooManyRecipients: "protocol-errors",
  ContentRelated: "content-related",
  ProhibitedAttachment: "content-related",
  SpamBlock: "spam-related",
  SpamContent: "spam-related",
  SpamRelated: "spam-related",
  VirusRelated: "virus-related",
  PolicyRelated: "policy-related",
  AuthenticationFailed: "policy-related",
  RelayDenied: "relaying-issues",
  RelayingIssues: "relaying-issues",
  BadConfiguration: "bad-configuration",
  TransientFailure: "other",
  AutoReply: "other",
  ChallengeResponse: "other",
  Subscribe: "other",
  Unsubscribe: "other",
  Uncategorized: "other",
};

const CLASS_SET: ReadonlySet<string> = new Set(BOUNCE_CLASSES);

/** The class a name stands for (either spelling), or undefined. */
export function bounceClassNamed(name: string): BounceClass | undefined {
  if (CLASS_SET.has(name)) return name as BounceClass;
  return KUMO_CLASS_NAMES[name];
}

/** What a rule is matched against. */
export interface ClassifyInput {
  /** Basic reply code; absent when there was no reply at all. */
  code?: number;
  /** Enhanced status code (RFC 3463), when the peer sent one; else it is read from the text's start. */
  enhanced?: string;
  text: string;
}

export interface BounceRule {
  class: BounceClass;
  /** Where the rule was written: `file:line`. */
  source: string;
  code?: RegExp;
  /** undefined: any; null: the reply must have no enhanced status code. */
  status?: RegExp | null;
  kind?: "permanent" | "transient";
  text?: RegExp;
}

export interface RuleProblem {
  file: string;
  line: number;
  message: string;
}

/** Problems in rules files: a configuration error (exit 78), one line per problem. */
export class RulesError extends MtaError {
  override name = "RulesError";
  constructor(readonly problems: RuleProblem[]) {
    super(
      "config",
      problems
        .map((p) => (p.line > 0 ? `${p.file}:${p.line}: ${p.message}` : `${p.file}: ${p.message}`))
        .join("\n"),
    );
  }
}

/** `code=5xx` → /^5\d\d$/. */
function codePattern(v: string): RegExp | undefined {
  if (!/^[2-5][0-9x]{2}$/.test(v)) return undefined;
  return new RegExp(`^${v.replace(/x/g, "\\d")}$`);
}

/** `status=x.1.*` → /^[45]\.1\.\d{1,3}$/; `status=5.7.6xx` → /^5\.7\.6\d\d$/. */
function statusPattern(v: string): RegExp | undefined {
  const m = /^([245x])\.(\d{1,3}|\*)\.([0-9x]{1,3}|\*)$/.exec(v);
  if (!m || (m[3]!.includes("x") && !/^[1-9]/.test(m[3]!))) return undefined;
  const cls = m[1] === "x" ? "[45]" : m[1];
  const part = (p: string) =>
    p === "*" ? "\\d{1,3}" : p.includes("x") ? p.replace(/x/g, "\\d") : String(Number(p));
  return new RegExp(`^${cls}\\.${part(m[2]!)}\\.${part(m[3]!)}$`);
}

/** Parses one rules file; every problem is reported with its line, none stops the others. */
export function parseRules(text: string, file: string): { rules: BounceRule[]; problems: RuleProblem[] } {
  const rules: BounceRule[] = [];
  const problems: RuleProblem[] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    const at = i + 1;
    if (line === "" || line.startsWith("#")) return;
    const problem = (message: string) => problems.push({ file, line: at, message });
    const m = /^(\S+)\s*(.*)$/.exec(line)!;
    const name = m[1]!;
    const cls = bounceClassNamed(name);
    if (!cls) {
      problem(`unknown class "${name}" (expected one of ${BOUNCE_CLASSES.join(", ")})`);
      return;
    }
    const rule: BounceRule = { class: cls, source: `${file}:${at}` };
    let rest = m[2]!;
    let conditions = 0;
    let bad = false;
    while (rest !== "") {
      const c = /^([a-z]+)=(\S*)\s*/.exec(rest);
      if (!c) {
        problem(
          `expected a condition such as code=550, status=5.1.1, kind=permanent or text=/.../, got "${rest}"`,
        );
        bad = true;
        break;
      }
      const [whole, key, value] = c as unknown as [string, string, string];
      conditions++;
      if (key === "text") {
        const t = /^text=\/(.*)\/([a-z]*)$/.exec(rest);
        if (!t) {
          problem("text= takes /regular expression/flags and must be the last condition on the line");
          bad = true;
          break;
        }
        const flags = t[2]!;
        if (/[^isu]/.test(flags) || new Set(flags).size !== flags.length) {
          problem(`text=/.../${flags}: only the flags i, s and u are allowed, each once`);
          bad = true;
          break;
        }
        try {
          rule.text = new RegExp(t[1]!, flags);
        } catch (err) {
          problem(`text=: not a regular expression: ${(err as Error).message}`);
          bad = true;
        }
        rest = "";
        break;
      }
      rest = rest.slice(whole.length);
      if (key === "code") {
        const p = codePattern(value);
        if (!p) {
          problem(`code=${value}: expected three digits such as 550, or with x for any digit such as 55x`);
          bad = true;
        } else rule.code = p;
      } else if (key === "status") {
        if (value === "none") rule.status = null;
        else {
          const p = statusPattern(value);
          if (!p) {
            problem(`status=${value}: expected an enhanced status code such as 5.1.1, x.1.1, 5.7.* or none`);
            bad = true;
          } else rule.status = p;
        }
      } else if (key === "kind") {
        if (value !== "permanent" && value !== "transient") {
          problem(`kind=${value}: expected permanent or transient`);
          bad = true;
        } else rule.kind = value;
      } else {
        problem(`unknown condition "${key}=" (expected code=, status=, kind= or text=)`);
        bad = true;
      }
    }
    if (!bad && conditions === 0) {
      problem(`class "${name}" without a condition would match every reply`);
      bad = true;
    }
    if (!bad) rules.push(rule);
  });
  return { rules, problems };
}

const ENHANCED_RE = /^([245])\.(\d{1,3})\.(\d{1,3})$/;
const ENHANCED_IN_TEXT_RE = /^([245])\.(\d{1,3})\.(\d{1,3})(?=[\s;:,]|$)/;

/** The enhanced status code of a reply ("5.1.1", leading zeros dropped), or undefined. */
export function enhancedOf(input: ClassifyInput): string | undefined {
  const m =
    (input.enhanced !== undefined ? ENHANCED_RE.exec(input.enhanced.trim()) : null) ??
    ENHANCED_IN_TEXT_RE.exec(input.text.trim());
  return m ? `${m[1]}.${Number(m[2])}.${Number(m[3])}` : undefined;
}

/** A reply line as stored or typed ("550 5.1.1 no such user") → the classifier's input. */
export function replyLineInput(line: string): ClassifyInput {
  const m = /^(\d{3})(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?(?:[ -]+(.*))?$/.exec(
    line.replace(/\s+/g, " ").trim(),
  );
  if (!m) return { text: line.trim() };
  return { code: Number(m[1]), ...(m[2] ? { enhanced: m[2] } : {}), text: m[3] ?? "" };
}

export interface Classification {
  class: BounceClass;
  /** `file:line` of the rule that matched; undefined for the fallback "other". */
  rule?: string;
}

export const BUILTIN_RULES_FILE = "(built-in)";

/** The rules that ship with mta, parsed once; a problem in them is a bug (a test parses them). */
let builtin: BounceRule[] | undefined;
export function builtinRules(): BounceRule[] {
  if (!builtin) {
    const { rules, problems } = parseRules(builtinRulesText, BUILTIN_RULES_FILE);
    if (problems.length > 0) throw new RulesError(problems);
    builtin = rules;
  }
  return builtin;
}

export function builtinRulesSource(): string {
  return builtinRulesText;
}

export class Classifier {
  constructor(readonly rules: readonly BounceRule[]) {}

  /**
   * Operator rules files (each read by the caller), in order, then the built-in rules unless
   * `builtin` is false. Throws `RulesError` with every problem of every file.
   */
  static fromFiles(files: { file: string; text: string }[], opts: { builtin?: boolean } = {}): Classifier {
    const rules: BounceRule[] = [];
    const problems: RuleProblem[] = [];
    for (const f of files) {
      const r = parseRules(f.text, f.file);
      rules.push(...r.rules);
      problems.push(...r.problems);
    }
    if (problems.length > 0) throw new RulesError(problems);
    if (opts.builtin !== false) rules.push(...builtinRules());
    return new Classifier(rules);
  }

  static builtin(): Classifier {
    return new Classifier(builtinRules());
  }

  classify(input: ClassifyInput): Classification {
    const status = enhancedOf(input);
    const code = input.code === undefined ? "" : String(input.code);
    const kind = input.code !== undefined && input.code >= 500 ? "permanent" : "transient";
    const text = input.text;
    for (const r of this.rules) {
      if (r.code && !r.code.test(code)) continue;
      if (r.status === null ? status !== undefined : r.status && (!status || !r.status.test(status)))
        continue;
      if (r.kind && r.kind !== kind) continue;
      if (r.text && !r.text.test(text)) continue;
      return { class: r.class, rule: r.source };
    }
    return { class: "other" };
  }
}
