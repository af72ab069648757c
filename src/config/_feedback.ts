/**
 * The configuration of the sender's feedback loop: `bounces:` (classification rules, the bounce domain
 * for VERP return paths), `suppression:` and `webhooks:`.
 *
 * Owns: their schema (raw YAML, defaults), their typed form, and building one from the other.
 * Kept apart from schema.ts/types.ts so that the feedback loop's keys change in one place.
 * Invariant: class names are checked here against lib's list (the one bounce/ classifies into), so
 * that a typo is a config error with its line, never a silently dead setting.
 */
import { isAbsolute, resolve } from "node:path";
import * as v from "valibot";
import { BOUNCE_CLASSES, isLoopback } from "../lib/index.ts";
import { parseDuration } from "./_values.ts";

function show(x: unknown): string {
  return typeof x === "string" ? JSON.stringify(x) : String(x);
}

/** The events a webhook can carry: the delivery log's event types. */
export const WEBHOOK_EVENTS = [
  "reception",
  "delivery",
  "transient-failure",
  "bounce",
  "expiration",
  "async-bounce",
  "complaint",
  "suppressed",
  "dsn",
  "delay-warning",
  "admin-bounce",
  "admin-delete",
  "suspension",
  "resumption",
  "rule",
] as const;
/** The default: the first eight, the events of a message's recipients (the rest are extra detail). */
export const DEFAULT_WEBHOOK_EVENTS = WEBHOOK_EVENTS.slice(0, 8);

/** "never", "0" or a duration. */
const Expiry = v.custom<string>(
  (x) => x === "never" || parseDuration(x) !== undefined,
  (i) => `expected "never" or a duration such as "7d", got ${show(i.input)}`,
);
const Duration = v.custom<string>(
  (x) => parseDuration(x) !== undefined,
  (i) => `expected a duration such as "10s" or "5m", got ${show(i.input)}`,
);
const Secret = v.pipe(
  v.string("expected a secret string"),
  v.minLength(16, "expected a secret of at least 16 characters"),
);
const DomainName = v.pipe(
  v.string(),
  v.regex(
    /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+\.?$/,
    "expected a domain name",
  ),
);

function webhookUrlProblem(x: unknown): string | undefined {
  if (typeof x !== "string") return "expected a URL";
  let u: URL;
  try {
    u = new URL(x);
  } catch {
    return `expected an https:// URL, got ${show(x)}`;
  }
  if (u.protocol === "https:") return undefined;
  const host = u.hostname.replace(/^\[|\]$/g, "");
  if (u.protocol === "http:" && (host === "localhost" || isLoopback(host))) return undefined;
  if (u.protocol === "http:")
    return `http:// is only allowed to a loopback address; use https:// for ${u.host}`;
  return `expected an https:// URL, got ${show(x)}`;
}
const WebhookUrl = v.custom<string>(
  (x) => webhookUrlProblem(x) === undefined,
  (i) => webhookUrlProblem(i.input) ?? "expected a URL",
);

const Reason = v.picklist(
  [...BOUNCE_CLASSES, "complaint"],
  (i) => `expected a bounce class (${BOUNCE_CLASSES.join(", ")}) or complaint, got ${show(i.input)}`,
);

export const BouncesSchema = v.optional(
  v.strictObject({
    rules_files: v.optional(v.array(v.string("expected the path of a rules file")), []),
    builtin_rules: v.optional(v.boolean("expected true or false"), true),
    domain: v.optional(v.union([DomainName, v.literal("")]), ""),
    secret: v.optional(Secret),
    senders: v.optional(v.array(DomainName), []),
  }),
  {},
);

export const SuppressionSchema = v.optional(
  v.strictObject({
    enabled: v.optional(v.boolean("expected true or false"), true),
    answer: v.optional(
      v.picklist(["refuse", "record"], (i) => `expected refuse or record, got ${show(i.input)}`),
      "refuse",
    ),
    scope: v.optional(
      v.picklist(
        ["global", "sender-domain"],
        (i) => `expected global or sender-domain, got ${show(i.input)}`,
      ),
      "global",
    ),
    auto: v.optional(v.record(Reason, Expiry), {
      "bad-mailbox": "never",
      "bad-domain": "never",
      "inactive-mailbox": "never",
      complaint: "never",
    }),
  }),
  {},
);

export const WebhookSchema = v.strictObject({
  name: v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]{1,64}$/, "expected a name of letters, digits, - and _")),
  url: WebhookUrl,
  secret: Secret,
  events: v.optional(
    v.array(
      v.picklist(
        [...WEBHOOK_EVENTS, "*"],
        (i) => `expected an event type (${WEBHOOK_EVENTS.join(", ")}) or "*", got ${show(i.input)}`,
      ),
    ),
    [...DEFAULT_WEBHOOK_EVENTS],
  ),
  batch_size: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(10_000)), 500),
  timeout: v.optional(Duration, "10s"),
  max_retry_delay: v.optional(Duration, "5m"),
  tls_verify: v.optional(v.boolean("expected true or false"), true),
  ca_file: v.optional(v.string("expected the path of a PEM CA certificate")),
});
export const WebhooksSchema = v.optional(v.array(WebhookSchema), []);

type RawBounces = v.InferOutput<typeof BouncesSchema>;
type RawSuppression = v.InferOutput<typeof SuppressionSchema>;
type RawWebhooks = v.InferOutput<typeof WebhooksSchema>;

export interface BouncesConfig {
  rulesFiles: string[];
  builtinRules: boolean;
  /** The bounce domain of VERP return paths; "" = off. */
  domain: string;
  secret?: string;
  /** Sender domains whose mail gets a VERP return path; empty = every sender. */
  senders: string[];
}

export interface SuppressionConfig {
  enabled: boolean;
  answer: "refuse" | "record";
  scope: "global" | "sender-domain";
  /** Reasons that add an address automatically, each with its expiry (0 = never). */
  auto: Record<string, number>;
}

export interface WebhookConfig {
  name: string;
  url: string;
  secret: string;
  /** Event types sent; ["*"] = every type. */
  events: string[];
  batchSize: number;
  timeoutMs: number;
  maxRetryDelayMs: number;
  tlsVerify: boolean;
  caFile?: string;
}

export function buildFeedback(
  raw: { bounces: RawBounces; suppression: RawSuppression; webhooks: RawWebhooks },
  baseDir: string,
): { bounces: BouncesConfig; suppression: SuppressionConfig; webhooks: WebhookConfig[] } {
  const path = (p: string) => (p === "" || isAbsolute(p) ? p : resolve(baseDir, p));
  const b = raw.bounces;
  const bounces: BouncesConfig = {
    rulesFiles: b.rules_files.map(path),
    builtinRules: b.builtin_rules,
    domain: b.domain.toLowerCase().replace(/\.$/, ""),
    senders: b.senders.map((s) => s.toLowerCase().replace(/\.$/, "")),
  };
  if (b.secret !== undefined) bounces.secret = b.secret;
  const s = raw.suppression;
  const suppression: SuppressionConfig = {
    enabled: s.enabled,
    answer: s.answer,
    scope: s.scope,
    auto: Object.fromEntries(
      Object.entries(s.auto).map(([k, x]) => [k, x === "never" ? 0 : parseDuration(x)!]),
    ),
  };
  const webhooks = raw.webhooks.map((w) => {
    const out: WebhookConfig = {
      name: w.name,
      url: w.url,
      secret: w.secret,
      events: w.events.includes("*") ? ["*"] : [...new Set(w.events)],
      batchSize: w.batch_size,
      timeoutMs: parseDuration(w.timeout)!,
      maxRetryDelayMs: parseDuration(w.max_retry_delay)!,
      tlsVerify: w.tls_verify,
    };
    if (w.ca_file !== undefined) out.caFile = path(w.ca_file);
    return out;
  });
  return { bounces, suppression, webhooks };
}

/** Cross-field checks: the bounce domain needs a secret; webhook names are unique. */
export function feedbackProblems(
  raw: {
    bounces: RawBounces;
    webhooks: RawWebhooks;
    listen: { role?: string }[];
    log: { deliveries: string };
  },
  push: (path: (string | number)[], message: string) => void,
): void {
  if (raw.bounces.domain !== "" && raw.bounces.secret === undefined)
    push(["bounces", "domain"], "a bounce domain needs bounces.secret (the key of the return-path tags)");
  if (raw.bounces.senders.length > 0 && raw.bounces.domain === "")
    push(["bounces", "senders"], "bounces.senders without bounces.domain does nothing");
  raw.listen.forEach((l, i) => {
    if (l.role === "bounces" && raw.bounces.domain === "")
      push(["listen", i, "role"], "a bounces listener needs bounces.domain");
  });
  const seen = new Map<string, number>();
  raw.webhooks.forEach((w, i) => {
    const prev = seen.get(w.name);
    if (prev !== undefined) push(["webhooks", i, "name"], `the same name as webhooks[${prev}]`);
    seen.set(w.name, i);
  });
  if (raw.webhooks.length > 0 && raw.log.deliveries === "")
    push(["webhooks"], "webhooks read the delivery log: log.deliveries must name a file");
}
