/**
 * The configuration schema: what `mta.yaml` may contain, each key's default, and what each value must look like.
 *
 * Owns: the valibot schema over the raw YAML (snake_case keys, values as written). Defaults are filled in
 * here so that `mta check-config` can print the effective configuration in the same form a user writes.
 * Does not own: conversion into typed values (build.ts), YAML positions (load.ts).
 * Keep `mta.example.yaml` in step: a test loads it and checks that it names every key.
 */
import { isIP } from "node:net";
import * as v from "valibot";
import { DURATION_HINT } from "../lib/index.ts";
import { BouncesSchema, SuppressionSchema, WebhooksSchema } from "./_feedback.ts";
import { parseAddressValue, parseCidrValue, parseDuration, parseRate, parseSizeValue } from "./_values.ts";

/** A value as the user wrote it, for "got ..." in messages: a list or mapping by its kind, not its text. */
export function show(x: unknown): string {
  if (Array.isArray(x)) return "a list";
  if (x === null) return "nothing (null)";
  if (typeof x === "object") return "a mapping";
  return typeof x === "string" ? JSON.stringify(x) : String(x);
}

/** Every value written as a string, with our own words when it is something else. */
const str = (what: string) => v.string((i) => `expected ${what}, got ${show(i.input)}`);
const list = <T extends v.GenericSchema>(item: T, what: string) =>
  v.array(item, (i) => `expected a list of ${what}, got ${show(i.input)}`);
const mapping = <T extends v.GenericSchema>(value: T, what: string) =>
  v.record(v.string(), value, (i) => `expected a mapping of ${what}, got ${show(i.input)}`);

export const Duration = v.custom<string | number>(
  (x) => parseDuration(x) !== undefined,
  (i) => `expected ${DURATION_HINT}, got ${show(i.input)}`,
);
/** A duration where zero makes no sense (a timeout, a retry interval, the queue lifetime): 0 is refused. */
const positiveDuration = (zero = "expected a duration greater than 0") =>
  v.custom<string | number>(
    (x) => (parseDuration(x) ?? 0) > 0,
    (i) => (parseDuration(i.input) === 0 ? zero : `expected ${DURATION_HINT}, got ${show(i.input)}`),
  );
export const PositiveDuration = positiveDuration();
export const Size = v.custom<string | number>(
  (x) => parseSizeValue(x) !== undefined,
  (i) => `expected a size such as "25MB", "64MiB" or a number of bytes, got ${show(i.input)}`,
);
/** A size where zero makes no sense: 0 is refused, never read as "no limit". */
export const PositiveSize = v.custom<string | number>(
  (x) => (parseSizeValue(x) ?? 0) > 0,
  (i) =>
    parseSizeValue(i.input) === 0
      ? 'expected a size greater than 0 (0 is not read as "no limit": a message is held in memory while it is received)'
      : `expected a size such as "25MB", "64MiB" or a number of bytes, got ${show(i.input)}`,
);
export const Rate = v.custom<string>(
  (x) => parseRate(x) !== undefined,
  (i) => `expected a rate such as "100/s", "5000/h" or "10/30s", got ${show(i.input)}`,
);
export const CidrText = v.custom<string>(
  (x) => parseCidrValue(x) !== undefined,
  (i) => `expected a CIDR range such as "10.0.0.0/8" or "::1/128", got ${show(i.input)}`,
);
export const AddressText = v.custom<string>(
  (x) => parseAddressValue(x) !== undefined,
  (i) => `expected "host:port" such as "127.0.0.1:2525" or "[::1]:25", got ${show(i.input)}`,
);
/** host or host:port (port 25 when left out). */
export const HostText = v.custom<string>(
  (x) => parseAddressValue(x, 25) !== undefined,
  (i) => `expected "host" or "host:port" such as "smtp.example.com:587", got ${show(i.input)}`,
);
const Positive = v.pipe(
  v.number((i) => `expected a whole number of at least 1, got ${show(i.input)}`),
  v.integer((i) => `expected a whole number of at least 1, got ${show(i.input)}`),
  v.minValue(1, (i) => `expected a whole number of at least 1, got ${show(i.input)}`),
);
const ratioMessage = (i: { input: unknown }) => `expected a number between 0 and 1, got ${show(i.input)}`;
const Ratio = v.pipe(v.number(ratioMessage), v.minValue(0, ratioMessage), v.maxValue(1, ratioMessage));
const Bool = v.boolean((i) => `expected true or false, got ${show(i.input)}`);
const HostName = v.pipe(
  str("a host name"),
  v.regex(/^[A-Za-z0-9.-]+$/, (i) => `expected a host name, got ${show(i.input)}`),
);
const TlsMode = v.picklist(
  ["off", "opportunistic", "required"],
  (i) => `expected off, opportunistic or required, got ${show(i.input)}`,
);

/** A destination's outbound TLS (tls_policy: block): auto = DANE, else MTA-STS, else opportunistic. */
const DomainTlsMode = v.picklist(
  ["auto", "dane", "sts", "required", "opportunistic", "off"],
  (i) => `expected auto, dane, sts, required, opportunistic or off, got ${show(i.input)}`,
);

const AuthMode = v.pipe(
  v.union(
    [v.literal(false), v.picklist(["off", "optional", "required"])],
    (i) => `expected off, optional or required, got ${show(i.input)}`,
  ),
  v.transform((x) => (x === false ? "off" : x)),
);

export const ListenerSchema = v.strictObject({
  address: AddressText,
  name: v.optional(str("a name")),
  relay_from: v.optional(list(CidrText, 'CIDR ranges such as "10.0.0.0/8"'), ["127.0.0.0/8", "::1/128"]),
  tls: v.optional(
    v.strictObject({
      cert: str("the path of a PEM certificate"),
      key: str("the path of a PEM private key"),
      implicit: v.optional(Bool, false),
    }),
  ),
  auth: v.optional(AuthMode, "off"),
  users: v.optional(
    mapping(str("a password hash from `mta hash-password`"), "user names to password hashes"),
    {},
  ),
  users_file: v.optional(str("the path of a file of `user:hash` lines")),
  allow_plaintext_auth: v.optional(Bool, false),
  submission: v.optional(Bool, false),
  max_message_size: v.optional(PositiveSize, "25MB"),
  max_recipients: v.optional(Positive, 1000),
  max_line_length: v.optional(Positive, 4096),
  max_errors: v.optional(Positive, 10),
  max_junk_commands: v.optional(Positive, 100),
  command_timeout: v.optional(PositiveDuration, "5m"),
  data_timeout: v.optional(PositiveDuration, "10m"),
  max_connections: v.optional(Positive, 10000),
  max_connections_per_ip: v.optional(Positive, 2000),
  reject_bare_newlines: v.optional(Bool, true),
  role: v.optional(
    v.picklist(["relay", "bounces"], (i) => `expected relay or bounces, got ${show(i.input)}`),
    "relay",
  ),
});

const RouteObject = v.strictObject({
  hosts: list(HostText, '"host:port" addresses'),
  auth: v.optional(
    v.pipe(
      v.strictObject({
        username: str("a user name"),
        password: v.optional(str("a password")),
        password_file: v.optional(str("the path of a file holding the password")),
      }),
      v.check(
        (a) => (a.password === undefined) !== (a.password_file === undefined),
        "expected exactly one of password and password_file",
      ),
    ),
  ),
  tls: v.optional(TlsMode),
});
const Route = v.union(
  [HostText, v.array(HostText), RouteObject],
  (i) => `expected "host:port", a list of them, or { hosts, auth, tls }, got ${show(i.input)}`,
);

export const DomainPolicySchema = v.strictObject({
  max_connections: v.optional(Positive),
  max_messages_per_connection: v.optional(Positive),
  message_rate: v.optional(Rate),
  connection_rate: v.optional(Rate),
  tls: v.optional(DomainTlsMode),
  tls_verify: v.optional(Bool),
  retry: v.optional(list(PositiveDuration, "durations")),
  /** MX rollup: an entry with `mx` is a site shared by every domain whose MX host matches a pattern. */
  mx: v.optional(
    list(
      v.pipe(
        str('an MX host name or pattern such as "*.google.com"'),
        v.regex(/^(\*\.)?[A-Za-z0-9.-]+\.?$/, 'expected an MX host name or pattern such as "*.google.com"'),
      ),
      "MX host names or patterns",
    ),
  ),
  pool: v.optional(str("the name of a pool in delivery.pools")),
});

/** Outbound TLS policy (MTA-STS, DANE, TLS-RPT, remembered broken TLS): one self-contained block. */
const AtLeastOneSecond = v.custom<string>(
  (x) => (parseDuration(x) ?? 0) >= 1000,
  (i) => `expected a duration of at least 1s such as "1d", got ${show(i.input)}`,
);
const TlsPolicySchema = v.strictObject({
  ca_file: v.optional(v.string("expected the path of a PEM CA bundle"), ""),
  remember_broken_tls: v.optional(Duration, "0"),
  mta_sts: v.optional(
    v.strictObject({
      enabled: v.optional(Bool, true),
      port: v.optional(
        v.pipe(v.number("expected a port number"), v.integer(), v.minValue(1), v.maxValue(65535)),
        443,
      ),
      fetch_timeout: v.optional(AtLeastOneSecond, "10s"),
      max_policy_size: v.optional(
        v.pipe(
          Size,
          v.check(
            (x) => (parseSizeValue(x) ?? 0) >= 1024,
            "expected at least 1KB (RFC 8461 §3.2 policies are small, but not that small)",
          ),
        ),
        "64KB",
      ),
    }),
    {},
  ),
  dane: v.optional(v.strictObject({ enabled: v.optional(Bool, true) }), {}),
  tls_rpt: v.optional(
    v.strictObject({
      enabled: v.optional(Bool, true),
      interval: v.optional(AtLeastOneSecond, "1d"),
      organization: v.optional(v.string()),
      contact: v.optional(v.string()),
      from: v.optional(v.string()),
    }),
    {},
  ),
});

const IpText = v.pipe(
  str("a local IP address"),
  v.check(
    (x) => isIP(x) !== 0,
    (i) => `expected a local IP address such as "192.0.2.10", got ${show(i.input)}`,
  ),
);
export const SourceSchema = v.strictObject({
  address: IpText,
  ehlo: v.optional(HostName),
});
const PoolMemberSchema = v.union(
  [v.string(), v.strictObject({ source: str("the name of a source"), weight: v.optional(Positive, 1) })],
  (i) => `expected a source name or { source, weight }, got ${show(i.input)}`,
);

const portMessage = (i: { input: unknown }) => `expected a port number (1-65535), got ${show(i.input)}`;

const DEFAULT_POLICY = {
  max_connections: 20,
  max_messages_per_connection: 100,
  tls: "auto" as const,
  tls_verify: false,
};

export const ConfigSchema = v.strictObject({
  hostname: v.optional(HostName),
  shutdown_grace: v.optional(Duration, "30s"),
  spool: v.optional(
    v.strictObject({
      dir: v.optional(str("the path of a directory"), "./spool"),
      maildrop: v.optional(str('the path of a directory, or "" for none'), "./maildrop"),
      sync: v.optional(Bool, true),
      segment_size: v.optional(PositiveSize, "64MiB"),
      compact_below: v.optional(Ratio, 0.3),
      body_cache: v.optional(Size, "64MiB"),
    }),
    {},
  ),
  listen: v.optional(list(ListenerSchema, "listeners ({ address: ... })"), [{ address: "127.0.0.1:2525" }]),
  control: v.optional(
    v.strictObject({
      address: v.optional(
        v.union(
          [AddressText, v.literal("")],
          (i) => `expected "host:port" such as "127.0.0.1:8025", or "" for none, got ${show(i.input)}`,
        ),
        "127.0.0.1:8025",
      ),
      token: v.optional(str("a bearer token")),
      token_file: v.optional(str("the path of a file holding the token")),
      socket: v.optional(str('the path of the control socket, or "" for none')),
      hosts: v.optional(list(HostName, "host names such as mta.example.com"), []),
    }),
    {},
  ),
  dns: v.optional(
    v.strictObject({
      servers: v.optional(list(HostText, '"host:port" addresses'), []),
      timeout: v.optional(PositiveDuration, "5s"),
      attempts: v.optional(Positive, 2),
      prefer: v.optional(
        v.picklist(["ipv4", "ipv6"], (i) => `expected ipv4 or ipv6, got ${show(i.input)}`),
        "ipv4",
      ),
      dnssec: v.optional(Bool, false),
    }),
    {},
  ),
  delivery: v.optional(
    v.pipe(
      v.strictObject({
        routes: v.optional(mapping(Route, 'domains to "host:port"'), {}),
        retry: v.optional(
          v.pipe(list(PositiveDuration, "durations"), v.minLength(1, "expected at least one duration")),
          ["5m", "10m", "30m", "1h", "2h", "4h"],
        ),
        // 0 is refused: it would expire every message (and its DSN) before the first attempt.
        max_age: v.optional(
          positiveDuration(
            "expected a duration greater than 0: 0 would expire every message before its first attempt",
          ),
          "5d",
        ),
        site_backoff: v.optional(
          v.pipe(list(PositiveDuration, "durations"), v.minLength(1, "expected at least one duration")),
          ["1m", "5m", "15m", "30m"],
        ),
        port: v.optional(
          v.pipe(
            v.number(portMessage),
            v.integer(portMessage),
            v.minValue(1, portMessage),
            v.maxValue(65535, portMessage),
          ),
          25,
        ),
        delay_warning: v.optional(Duration, "0"),
        max_connections: v.optional(Positive, 10000),
        idle_timeout: v.optional(Duration, "5s"),
        timeouts: v.optional(
          v.strictObject({
            connect: v.optional(PositiveDuration, "30s"),
            greeting: v.optional(PositiveDuration, "5m"),
            ehlo: v.optional(PositiveDuration, "5m"),
            mail: v.optional(PositiveDuration, "5m"),
            rcpt: v.optional(PositiveDuration, "5m"),
            data_init: v.optional(PositiveDuration, "2m"),
            data_block: v.optional(PositiveDuration, "3m"),
            data_done: v.optional(PositiveDuration, "10m"),
            rset: v.optional(PositiveDuration, "1m"),
            quit: v.optional(PositiveDuration, "10s"),
          }),
          {},
        ),
        domains: v.optional(mapping(DomainPolicySchema, "domains to policies"), { default: DEFAULT_POLICY }),
        sources: v.optional(mapping(SourceSchema, "source names to { address, ehlo }"), {}),
        pools: v.optional(mapping(list(PoolMemberSchema, "sources"), "pool names to lists of sources"), {}),
        max_connections_per_source: v.optional(Positive, 20000),
        max_ready_per_site: v.optional(Positive, 10000),
      }),
      v.check(
        (d) => egressProblems(d).length === 0,
        (i) => egressProblems(i.input as EgressRaw).join("; "),
      ),
    ),
    {},
  ),
  dkim: v.optional(
    v.strictObject({
      keys: v.optional(
        list(
          v.strictObject({
            domain: v.pipe(
              str("a domain name"),
              v.regex(/^[A-Za-z0-9.-]+$/, (i) => `expected a domain name, got ${show(i.input)}`),
            ),
            selector: v.pipe(
              str("a selector"),
              v.regex(/^[A-Za-z0-9._-]+$/, (i) => `expected a selector, got ${show(i.input)}`),
            ),
            key_file: str("the path of a PEM private key (RSA 2048+ or Ed25519)"),
          }),
          "keys ({ domain, selector, key_file })",
        ),
        [],
      ),
      headers: v.optional(list(str("a header field name"), "header field names")),
      oversign: v.optional(list(str("a header field name"), "header field names"), []),
      canonicalization: v.optional(
        v.picklist(
          ["relaxed/relaxed", "relaxed/simple", "simple/simple", "simple/relaxed"],
          (i) =>
            `expected relaxed/relaxed, relaxed/simple, simple/simple or simple/relaxed, got ${show(i.input)}`,
        ),
        "relaxed/relaxed",
      ),
      expire: v.optional(Duration, "0"),
      domain_map: v.optional(mapping(str("a signing domain"), "sender domains to signing domains"), {}),
    }),
    {},
  ),
  send: v.optional(
    v.strictObject({
      // Postfix's myorigin: appended to bare local parts (`root`) in mail submitted with `mta send`.
      origin: v.optional(HostName),
    }),
    {},
  ),
  tls_policy: v.optional(TlsPolicySchema, {}),
  bounces: BouncesSchema,
  suppression: SuppressionSchema,
  webhooks: WebhooksSchema,
  log: v.optional(
    v.strictObject({
      level: v.optional(
        v.picklist(
          ["silent", "error", "warn", "info", "debug", "trace"],
          (i) => `expected silent, error, warn, info, debug or trace, got ${show(i.input)}`,
        ),
        "info",
      ),
      format: v.optional(
        v.picklist(["pretty", "json"], (i) => `expected pretty or json, got ${show(i.input)}`),
        "pretty",
      ),
      deliveries: v.optional(
        str('the path of the delivery log file (or "" for none)'),
        "./log/deliveries.jsonl",
      ),
    }),
    {},
  ),
});

interface EgressRaw {
  sources?: Record<string, unknown>;
  pools?: Record<string, (string | { source: string })[]>;
  domains?: Record<string, { pool?: string }>;
}

/** Pools name existing sources; domain policies name existing pools. */
function egressProblems(d: EgressRaw): string[] {
  const out: string[] = [];
  const sources = d.sources ?? {};
  const pools = d.pools ?? {};
  for (const [name, members] of Object.entries(pools))
    for (const m of members) {
      const src = typeof m === "string" ? m : m.source;
      if (!(src in sources))
        out.push(`delivery.pools.${name}: no source named ${show(src)} in delivery.sources`);
    }
  for (const [name, p] of Object.entries(d.domains ?? {}))
    if (p.pool !== undefined && !(p.pool in pools))
      out.push(`delivery.domains.${name}.pool: no pool named ${show(p.pool)} in delivery.pools`);
  return out;
}

export type RawConfig = v.InferOutput<typeof ConfigSchema>;
export { DEFAULT_POLICY };
