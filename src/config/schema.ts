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
import { parseAddressValue, parseCidrValue, parseDuration, parseRate, parseSizeValue } from "./_values.ts";

function show(x: unknown): string {
  return typeof x === "string" ? JSON.stringify(x) : String(x);
}

export const Duration = v.custom<string>(
  (x) => parseDuration(x) !== undefined,
  (i) => `expected a duration such as "30s", "5m", "4h" or "5d", got ${show(i.input)}`,
);
export const Size = v.custom<string | number>(
  (x) => parseSizeValue(x) !== undefined,
  (i) => `expected a size such as "25MB", "64MiB" or a number of bytes, got ${show(i.input)}`,
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
const Positive = v.pipe(v.number("expected a number"), v.integer("expected a whole number"), v.minValue(1));
const Ratio = v.pipe(v.number("expected a number between 0 and 1"), v.minValue(0), v.maxValue(1));
const Bool = v.boolean("expected true or false");
const TlsMode = v.picklist(
  ["off", "opportunistic", "required"],
  (i) => `expected off, opportunistic or required, got ${show(i.input)}`,
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
  name: v.optional(v.string()),
  relay_from: v.optional(v.array(CidrText), ["127.0.0.0/8", "::1/128"]),
  tls: v.optional(
    v.strictObject({
      cert: v.string("expected the path of a PEM certificate"),
      key: v.string("expected the path of a PEM private key"),
      implicit: v.optional(Bool, false),
    }),
  ),
  auth: v.optional(AuthMode, "off"),
  users: v.optional(v.record(v.string(), v.string("expected a password hash from `mta hash-password`")), {}),
  allow_plaintext_auth: v.optional(Bool, false),
  submission: v.optional(Bool, false),
  max_message_size: v.optional(Size, "25MB"),
  max_recipients: v.optional(Positive, 1000),
  max_line_length: v.optional(Positive, 4096),
  max_errors: v.optional(Positive, 10),
  max_junk_commands: v.optional(Positive, 100),
  command_timeout: v.optional(Duration, "5m"),
  data_timeout: v.optional(Duration, "10m"),
  max_connections: v.optional(Positive, 10000),
  max_connections_per_ip: v.optional(Positive, 2000),
  reject_bare_newlines: v.optional(Bool, true),
});

const RouteObject = v.strictObject({
  hosts: v.array(HostText),
  auth: v.optional(v.strictObject({ username: v.string(), password: v.string() })),
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
  tls: v.optional(TlsMode),
  tls_verify: v.optional(Bool),
  retry: v.optional(v.array(Duration)),
  /** MX rollup: an entry with `mx` is a site shared by every domain whose MX host matches a pattern. */
  mx: v.optional(
    v.array(
      v.pipe(
        v.string(),
        v.regex(/^(\*\.)?[A-Za-z0-9.-]+\.?$/, 'expected an MX host name or pattern such as "*.google.com"'),
      ),
    ),
  ),
  pool: v.optional(v.string("expected the name of a pool in delivery.pools")),
});

const IpText = v.pipe(
  v.string(),
  v.check(
    (x) => isIP(x) !== 0,
    (i) => `expected a local IP address such as "192.0.2.10", got ${show(i.input)}`,
  ),
);
export const SourceSchema = v.strictObject({
  address: IpText,
  ehlo: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9.-]+$/, "expected a host name"))),
});
const PoolMemberSchema = v.union(
  [v.string(), v.strictObject({ source: v.string(), weight: v.optional(Positive, 1) })],
  (i) => `expected a source name or { source, weight }, got ${show(i.input)}`,
);

const DEFAULT_POLICY = {
  max_connections: 20,
  max_messages_per_connection: 100,
  tls: "opportunistic" as const,
  tls_verify: false,
};

export const ConfigSchema = v.strictObject({
  hostname: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9.-]+$/, "expected a host name"))),
  spool: v.optional(
    v.strictObject({
      dir: v.optional(v.string(), "./spool"),
      sync: v.optional(Bool, true),
      segment_size: v.optional(Size, "64MiB"),
      compact_below: v.optional(Ratio, 0.3),
      body_cache: v.optional(Size, "64MiB"),
    }),
    {},
  ),
  listen: v.optional(v.array(ListenerSchema), [{ address: "127.0.0.1:2525" }]),
  control: v.optional(
    v.strictObject({
      address: v.optional(v.union([AddressText, v.literal("")]), "127.0.0.1:8025"),
      token: v.optional(v.string()),
    }),
    {},
  ),
  dns: v.optional(
    v.strictObject({
      servers: v.optional(v.array(HostText), []),
      timeout: v.optional(Duration, "5s"),
      attempts: v.optional(Positive, 2),
      prefer: v.optional(v.picklist(["ipv4", "ipv6"], "expected ipv4 or ipv6"), "ipv4"),
    }),
    {},
  ),
  delivery: v.optional(
    v.pipe(
      v.strictObject({
        routes: v.optional(v.record(v.string(), Route), {}),
        retry: v.optional(v.pipe(v.array(Duration), v.minLength(1, "expected at least one duration")), [
          "5m",
          "10m",
          "30m",
          "1h",
          "2h",
          "4h",
        ]),
        max_age: v.optional(Duration, "5d"),
        site_backoff: v.optional(
          v.pipe(v.array(Duration), v.minLength(1, "expected at least one duration")),
          ["1m", "5m", "15m", "30m"],
        ),
        port: v.optional(
          v.pipe(v.number("expected a port number"), v.integer(), v.minValue(1), v.maxValue(65535)),
          25,
        ),
        delay_warning: v.optional(Duration, "0"),
        max_connections: v.optional(Positive, 10000),
        idle_timeout: v.optional(Duration, "5s"),
        timeouts: v.optional(
          v.strictObject({
            connect: v.optional(Duration, "30s"),
            greeting: v.optional(Duration, "5m"),
            ehlo: v.optional(Duration, "5m"),
            mail: v.optional(Duration, "5m"),
            rcpt: v.optional(Duration, "5m"),
            data_init: v.optional(Duration, "2m"),
            data_block: v.optional(Duration, "3m"),
            data_done: v.optional(Duration, "10m"),
            rset: v.optional(Duration, "1m"),
            quit: v.optional(Duration, "10s"),
          }),
          {},
        ),
        domains: v.optional(v.record(v.string(), DomainPolicySchema), { default: DEFAULT_POLICY }),
        sources: v.optional(v.record(v.string(), SourceSchema), {}),
        pools: v.optional(v.record(v.string(), v.array(PoolMemberSchema)), {}),
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
        v.array(
          v.strictObject({
            domain: v.pipe(v.string(), v.regex(/^[A-Za-z0-9.-]+$/, "expected a domain name")),
            selector: v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]+$/, "expected a selector")),
            key_file: v.string("expected the path of a PEM private key (RSA 2048+ or Ed25519)"),
          }),
        ),
        [],
      ),
      headers: v.optional(v.array(v.string())),
      oversign: v.optional(v.array(v.string()), []),
      canonicalization: v.optional(
        v.picklist(["relaxed/relaxed", "relaxed/simple", "simple/simple", "simple/relaxed"]),
        "relaxed/relaxed",
      ),
      expire: v.optional(Duration, "0"),
      domain_map: v.optional(v.record(v.string(), v.string()), {}),
    }),
    {},
  ),
  log: v.optional(
    v.strictObject({
      level: v.optional(v.picklist(["silent", "error", "warn", "info", "debug", "trace"]), "info"),
      format: v.optional(v.picklist(["pretty", "json"], "expected pretty or json"), "pretty"),
      deliveries: v.optional(v.string(), "./log/deliveries.jsonl"),
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
