/**
 * The typed, frozen configuration the rest of the program reads.
 *
 * Owns: `Config` and its parts (camelCase, units in names), `buildConfig` from the validated raw YAML.
 * Invariant: every value here was validated by schema.ts; relative paths are resolved against the
 * directory of the configuration file.
 */
import { hostname as osHostname } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import type { Cidr, HostPort } from "../lib/index.ts";
import {
  parseAddressValue,
  parseCidrValue,
  parseDuration,
  parseRate,
  parseSizeValue,
  type Rate,
} from "./_values.ts";
import {
  type BouncesConfig,
  buildFeedback,
  type SuppressionConfig,
  type WebhookConfig,
} from "./_feedback.ts";
import { DEFAULT_POLICY, type RawConfig } from "./schema.ts";

export type { BouncesConfig, SuppressionConfig, WebhookConfig } from "./_feedback.ts";

export type TlsMode = "off" | "opportunistic" | "required";
/** A destination's TLS: `auto` applies DANE, else MTA-STS, else opportunistic (see tls_policy). */
export type DomainTlsMode = "auto" | "dane" | "sts" | TlsMode;

export interface ListenerConfig {
  name: string;
  address: HostPort;
  relayFrom: Cidr[];
  tls?: { certFile: string; keyFile: string; implicit: boolean };
  auth: "off" | "optional" | "required";
  /** Inline `users` merged with `users_file` (empty when the secrets were not read). */
  users: Record<string, string>;
  usersFile?: string;
  allowPlaintextAuth: boolean;
  submission: boolean;
  maxMessageBytes: number;
  maxRecipients: number;
  maxLineBytes: number;
  maxErrors: number;
  maxJunkCommands: number;
  commandTimeoutMs: number;
  dataTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerIp: number;
  rejectBareNewlines: boolean;
  /** relay: mail to deliver; bounces: only mail to the bounce domain (asynchronous bounces, complaints). */
  role: "relay" | "bounces";
}

export interface RouteConfig {
  hosts: HostPort[];
  /** `password` is "" when the secrets were not read (clients such as `mta send` to a daemon). */
  auth?: { username: string; password: string; passwordFile?: string };
  tls?: TlsMode;
}

export interface DomainPolicy {
  maxConnections?: number;
  maxMessagesPerConnection?: number;
  messageRate?: Rate;
  connectionRate?: Rate;
  tls?: DomainTlsMode;
  tlsVerify?: boolean;
  retryMs?: number[];
  /** MX rollup: host names or `*.suffix` patterns; lower case, no trailing dot. */
  mx?: string[];
  /** Egress pool name (in `DeliveryConfig.pools`). */
  pool?: string;
}

export interface SourceConfig {
  address: string;
  ehloName?: string;
}

export interface DeliveryConfig {
  routes: Record<string, RouteConfig>;
  retryMs: number[];
  maxAgeMs: number;
  /** Suspension of a destination after whole-site failures in a row: 1st, 2nd, ...; the last repeats. */
  siteBackoffMs: number[];
  /** TCP port of the remote mail exchangers found through MX (25; other values only for test setups). */
  port: number;
  delayWarningMs: number;
  maxConnections: number;
  idleTimeoutMs: number;
  timeouts: {
    connectMs: number;
    greetingMs: number;
    ehloMs: number;
    mailMs: number;
    rcptMs: number;
    dataInitMs: number;
    dataBlockMs: number;
    dataDoneMs: number;
    rsetMs: number;
    quitMs: number;
  };
  /** Per-domain policies; `default` always present with every field set. */
  domains: Record<string, DomainPolicy> & {
    default: Required<Omit<DomainPolicy, "messageRate" | "connectionRate" | "retryMs" | "mx" | "pool">> &
      DomainPolicy;
  };
  /** Egress sources by name. */
  sources: Record<string, SourceConfig>;
  /** Egress pools by name: sources with weights. */
  pools: Record<string, { source: string; weight: number }[]>;
  maxConnectionsPerSource: number;
  maxReadyPerSite: number;
}

export interface TlsPolicyConfig {
  /** PEM CA bundle; "" = the system store. */
  caFile: string;
  rememberBrokenTlsMs: number;
  mtaSts: { enabled: boolean; port: number; fetchTimeoutMs: number; maxPolicyBytes: number };
  dane: { enabled: boolean };
  /** organization/contact/from: "" = derived from the hostname. */
  tlsRpt: { enabled: boolean; intervalMs: number; organization: string; contact: string; from: string };
}

export interface Config {
  /** Absolute path of the file this was loaded from ("" for built-in). */
  source: string;
  hostname: string;
  /** How long a stopping daemon lets sessions in DATA and deliveries in flight finish. */
  shutdownGraceMs: number;
  spool: {
    dir: string;
    /** Where users who may not touch the spool drop mail (`mta send` as them); "" for none. */
    maildrop: string;
    sync: boolean;
    segmentSizeBytes: number;
    compactBelowLiveRatio: number;
    bodyCacheBytes: number;
  };
  listen: ListenerConfig[];
  control: {
    address?: HostPort;
    /** Inline, or read from `tokenFile` when the secrets were read. */
    token?: string;
    tokenFile?: string;
    /** The local control socket (Unix domain); undefined: none. Default `<spool.dir>/control.sock`. */
    socketPath?: string;
    /** Host names a request may give besides the bound address. */
    hostNames: string[];
  };
  dns: { servers: HostPort[]; timeoutMs: number; attempts: number; prefer: "ipv4" | "ipv6"; dnssec: boolean };
  tlsPolicy: TlsPolicyConfig;
  delivery: DeliveryConfig;
  dkim: {
    keys: { domain: string; selector: string; keyFile: string }[];
    headers?: string[];
    oversign: string[];
    canonicalization: "relaxed/relaxed" | "relaxed/simple" | "simple/simple" | "simple/relaxed";
    expireAfterMs: number;
    domainMap: Record<string, string>;
  };
  bounces: BouncesConfig;
  suppression: SuppressionConfig;
  webhooks: WebhookConfig[];
  /** `mta send`: `origin` is appended to bare local parts of addresses (default: hostname). */
  send: { origin: string };
  log: {
    level: "silent" | "error" | "warn" | "info" | "debug" | "trace";
    format: "pretty" | "json";
    deliveriesFile: string;
  };
}

const dur = (x: string | number) => parseDuration(x)!;

function policy(p: NonNullable<RawConfig["delivery"]["domains"]>[string]): DomainPolicy {
  const out: DomainPolicy = {};
  if (p.max_connections !== undefined) out.maxConnections = p.max_connections;
  if (p.max_messages_per_connection !== undefined)
    out.maxMessagesPerConnection = p.max_messages_per_connection;
  if (p.message_rate !== undefined) out.messageRate = parseRate(p.message_rate)!;
  if (p.connection_rate !== undefined) out.connectionRate = parseRate(p.connection_rate)!;
  if (p.tls !== undefined) out.tls = p.tls;
  if (p.tls_verify !== undefined) out.tlsVerify = p.tls_verify;
  if (p.retry !== undefined) out.retryMs = p.retry.map(dur);
  if (p.mx !== undefined) out.mx = p.mx.map((x) => x.toLowerCase().replace(/\.$/, ""));
  if (p.pool !== undefined) out.pool = p.pool;
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object" && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

export function buildConfig(raw: RawConfig, source: string, baseDir: string): Config {
  const path = (p: string) => (p === "" || isAbsolute(p) ? p : resolve(baseDir, p));
  const d = raw.delivery;
  const routes: Record<string, RouteConfig> = {};
  for (const [domain, r] of Object.entries(d.routes)) {
    const hosts = typeof r === "string" ? [r] : Array.isArray(r) ? r : r.hosts;
    const route: RouteConfig = { hosts: hosts.map((h) => parseAddressValue(h, 25)!) };
    if (typeof r === "object" && !Array.isArray(r)) {
      if (r.auth) {
        route.auth = { username: r.auth.username, password: r.auth.password ?? "" };
        if (r.auth.password_file !== undefined) route.auth.passwordFile = path(r.auth.password_file);
      }
      if (r.tls) route.tls = r.tls;
    }
    routes[domain.toLowerCase()] = route;
  }
  const domains: Record<string, DomainPolicy> = {};
  for (const [k, p] of Object.entries(d.domains)) domains[k.toLowerCase()] = policy(p);
  const def = { ...policy(DEFAULT_POLICY), ...(domains.default ?? {}) };
  domains.default = def;

  const hostname = raw.hostname ?? osHostname();
  const config: Config = {
    source,
    hostname,
    shutdownGraceMs: dur(raw.shutdown_grace),
    spool: {
      dir: path(raw.spool.dir),
      maildrop: path(raw.spool.maildrop),
      sync: raw.spool.sync,
      segmentSizeBytes: parseSizeValue(raw.spool.segment_size)!,
      compactBelowLiveRatio: raw.spool.compact_below,
      bodyCacheBytes: parseSizeValue(raw.spool.body_cache)!,
    },
    listen: raw.listen.map((l) => {
      const out: ListenerConfig = {
        name: l.name ?? l.address,
        address: parseAddressValue(l.address)!,
        relayFrom: l.relay_from.map((c) => parseCidrValue(c)!),
        auth: l.auth,
        users: { ...l.users },
        allowPlaintextAuth: l.allow_plaintext_auth,
        submission: l.submission,
        maxMessageBytes: parseSizeValue(l.max_message_size)!,
        maxRecipients: l.max_recipients,
        maxLineBytes: l.max_line_length,
        maxErrors: l.max_errors,
        maxJunkCommands: l.max_junk_commands,
        commandTimeoutMs: dur(l.command_timeout),
        dataTimeoutMs: dur(l.data_timeout),
        maxConnections: l.max_connections,
        maxConnectionsPerIp: l.max_connections_per_ip,
        rejectBareNewlines: l.reject_bare_newlines,
        role: l.role,
      };
      if (l.tls) out.tls = { certFile: path(l.tls.cert), keyFile: path(l.tls.key), implicit: l.tls.implicit };
      if (l.users_file !== undefined) out.usersFile = path(l.users_file);
      return out;
    }),
    control: { hostNames: raw.control.hosts.map((h) => h.toLowerCase().replace(/\.$/, "")) },
    dns: {
      servers: raw.dns.servers.map((s) => parseAddressValue(s, 53)!),
      timeoutMs: dur(raw.dns.timeout),
      attempts: raw.dns.attempts,
      prefer: raw.dns.prefer,
      dnssec: raw.dns.dnssec,
    },
    tlsPolicy: {
      caFile: path(raw.tls_policy.ca_file),
      rememberBrokenTlsMs: dur(raw.tls_policy.remember_broken_tls),
      mtaSts: {
        enabled: raw.tls_policy.mta_sts.enabled,
        port: raw.tls_policy.mta_sts.port,
        fetchTimeoutMs: dur(raw.tls_policy.mta_sts.fetch_timeout),
        maxPolicyBytes: parseSizeValue(raw.tls_policy.mta_sts.max_policy_size)!,
      },
      dane: { enabled: raw.tls_policy.dane.enabled },
      tlsRpt: {
        enabled: raw.tls_policy.tls_rpt.enabled,
        intervalMs: dur(raw.tls_policy.tls_rpt.interval),
        organization: raw.tls_policy.tls_rpt.organization ?? "",
        contact: raw.tls_policy.tls_rpt.contact ?? "",
        from: raw.tls_policy.tls_rpt.from ?? "",
      },
    },
    delivery: {
      routes,
      retryMs: d.retry.map(dur),
      maxAgeMs: dur(d.max_age),
      siteBackoffMs: d.site_backoff.map(dur),
      port: d.port,
      delayWarningMs: dur(d.delay_warning),
      maxConnections: d.max_connections,
      idleTimeoutMs: dur(d.idle_timeout),
      timeouts: {
        connectMs: dur(d.timeouts.connect),
        greetingMs: dur(d.timeouts.greeting),
        ehloMs: dur(d.timeouts.ehlo),
        mailMs: dur(d.timeouts.mail),
        rcptMs: dur(d.timeouts.rcpt),
        dataInitMs: dur(d.timeouts.data_init),
        dataBlockMs: dur(d.timeouts.data_block),
        dataDoneMs: dur(d.timeouts.data_done),
        rsetMs: dur(d.timeouts.rset),
        quitMs: dur(d.timeouts.quit),
      },
      domains: domains as DeliveryConfig["domains"],
      sources: Object.fromEntries(
        Object.entries(d.sources).map(([name, x]) => [
          name,
          x.ehlo === undefined ? { address: x.address } : { address: x.address, ehloName: x.ehlo },
        ]),
      ),
      pools: Object.fromEntries(
        Object.entries(d.pools).map(([name, members]) => [
          name,
          members.map((m) =>
            typeof m === "string" ? { source: m, weight: 1 } : { source: m.source, weight: m.weight },
          ),
        ]),
      ),
      maxConnectionsPerSource: d.max_connections_per_source,
      maxReadyPerSite: d.max_ready_per_site,
    },
    dkim: {
      keys: raw.dkim.keys.map((k) => ({
        domain: k.domain.toLowerCase(),
        selector: k.selector,
        keyFile: path(k.key_file),
      })),
      oversign: raw.dkim.oversign,
      canonicalization: raw.dkim.canonicalization,
      expireAfterMs: dur(raw.dkim.expire),
      domainMap: { ...raw.dkim.domain_map },
    },
    ...buildFeedback(raw, baseDir),
    send: { origin: (raw.send.origin ?? hostname).toLowerCase().replace(/\.$/, "") },
    log: { level: raw.log.level, format: raw.log.format, deliveriesFile: path(raw.log.deliveries) },
  };
  if (raw.dkim.headers) config.dkim.headers = raw.dkim.headers;
  if (raw.control.address) config.control.address = parseAddressValue(raw.control.address)!;
  if (raw.control.token) config.control.token = raw.control.token;
  if (raw.control.token_file !== undefined) config.control.tokenFile = path(raw.control.token_file);
  const socket = raw.control.socket ?? join(config.spool.dir, "control.sock");
  if (socket !== "") config.control.socketPath = path(socket);
  return deepFreeze(config);
}
