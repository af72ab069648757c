/**
 * A caching stub resolver: the servers asked in turn, the answers' meaning, built on dns-packet; the
 * questions themselves travel on the wire of wire.ts (UDP, TCP on truncation).
 *
 * Owns: `createResolver`, the order of servers and rounds, the TTL cache (positive and negative),
 * in-flight dedup, MX / A / AAAA / TXT / TLSA answers, and what the DNSSEC bits of an answer mean.
 * Does not own: MX ordering, implicit MX and routing decisions (route.ts), what a TXT or TLSA record
 * says (tlspolicy/).
 * Invariants: NXDOMAIN, NODATA, SERVFAIL, REFUSED and timeouts stay distinct all the way to the caller;
 * errors are never cached (a SERVFAIL must be retried next attempt); a cached answer lives exactly its TTL
 * (negative answers: the SOA minimum of RFC 2308 §5, else `defaultNegativeTtlS`).
 *
 * DNSSEC (`dnssec: true`, for a local validating resolver such as unbound on loopback): queries carry
 * the DO bit (RFC 3225) and the AD bit (RFC 6840 §5.7), and an answer is `authenticated` only when the
 * resolver set AD in its reply. We validate nothing ourselves, as Postfix does: the resolver must be one
 * we trust and reach over a path nobody can tamper with (loopback). A SERVFAIL that the resolver
 * explains as a DNSSEC failure (Extended DNS Error 6-12, RFC 8914), or one that turns into an answer
 * when the question is repeated with CD (checking disabled, RFC 4035 §3.2.2), is `bogus`: the data
 * exists but its signatures do not validate. With `dnssec: false`, nothing is ever `authenticated`.
 *
 * Why not node:dns: under Bun it reports NODATA as ENOTFOUND, gives no TTL and waits 26 s on a silent server.
 * Why Bun.udpSocket over node:dgram (wire.ts): about 30 µs less CPU per question (measured: 44 against
 * 74 µs for a question and its answer on loopback), and a new destination costs two to four questions.
 */
import fs from "node:fs";
import net from "node:net";
import type dnsPacket from "dns-packet";
import { type Clock, parseHostPort, systemClock } from "../lib/index.ts";
import type { Counter, Metrics } from "../observe/index.ts";
import { DnsWire, normalizeName, type QType, type RawAnswer } from "./_wire.ts";

/** Why a question got no usable answer; `bogus`: DNSSEC validation failed (only with `dnssec: true`). */
export type DnsError = "servfail" | "timeout" | "refused" | "bogus" | "other";

/**
 * `authenticated` is present (true) only when a validating resolver vouched for the answer (AD bit):
 * for a positive answer its records, for NXDOMAIN/NODATA the proof that nothing exists.
 */
export type MxLookup =
  | { kind: "mx"; hosts: { exchange: string; preference: number }[]; ttlS: number; authenticated?: true }
  | { kind: "nullmx"; authenticated?: true }
  | { kind: "nxdomain"; authenticated?: true }
  | { kind: "nodata"; authenticated?: true }
  | { kind: "error"; error: DnsError; detail: string };

/**
 * One link of a CNAME chain (RFC 1034 §3.6.2): `owner` is an alias of `target`. `authenticated`: a
 * validating resolver vouched for this CNAME record itself. A link after an unauthenticated one is
 * never authenticated (RFC 7672 §2.1.3: an insecure CNAME makes everything after it insecure).
 */
export interface CnameLink {
  owner: string;
  target: string;
  authenticated: boolean;
}

/**
 * `canonicalName` and `aliases` are present only when the queried name is an alias: the final owner
 * of the records, and the chain that led there, in order. `authenticated` covers the whole answer,
 * every link included (the AD bit of the resolver's reply).
 */
export type AddressLookup =
  | {
      kind: "ok";
      addresses: string[];
      ttlS: number;
      authenticated?: true;
      canonicalName?: string;
      aliases?: CnameLink[];
    }
  | { kind: "nxdomain" | "nodata"; authenticated?: true }
  | { kind: "error"; error: DnsError; detail: string };

/** TXT: each record's character-strings joined (RFC 7208 §3.3 / RFC 8461 §3.1 read them so). */
export type TxtLookup =
  | { kind: "txt"; records: string[]; ttlS: number; authenticated?: true }
  | { kind: "nxdomain" | "nodata"; authenticated?: true }
  | { kind: "error"; error: DnsError; detail: string };

/** One TLSA record (RFC 6698 §2.1): certificate usage, selector, matching type, association data. */
export interface TlsaRecord {
  usage: number;
  selector: number;
  matchingType: number;
  data: Uint8Array;
}

export type TlsaLookup =
  | { kind: "tlsa"; records: TlsaRecord[]; ttlS: number; authenticated?: true }
  | { kind: "nxdomain" | "nodata"; authenticated?: true }
  | { kind: "error"; error: DnsError; detail: string };

export interface Resolver {
  mx(domain: string): Promise<MxLookup>;
  addresses(host: string, family: 4 | 6): Promise<AddressLookup>;
  txt(name: string): Promise<TxtLookup>;
  tlsa(name: string): Promise<TlsaLookup>;
  /** Whether answers can be `authenticated` at all (the resolver was configured as validating). */
  readonly dnssec: boolean;
}

export interface ResolverOptions {
  /** Empty: the `nameserver` lines of /etc/resolv.conf (port 53). */
  servers: { host: string; port: number }[];
  /** How long to wait for one server's answer to one query. */
  timeoutMs: number;
  /** Rounds over the server list before giving up with `timeout`. */
  attempts: number;
  clock?: Clock;
  metrics?: Metrics;
  /** Cache time of NXDOMAIN/NODATA when the answer carries no SOA; default 300 s. */
  defaultNegativeTtlS?: number;
  /** Upper bound on any cached TTL; default 1 day. */
  maxTtlS?: number;
  /** Upper bound on cache entries; the oldest are dropped first. Default 100,000. */
  maxCacheEntries?: number;
  /** The servers validate DNSSEC: ask with DO and AD, trust the AD bit of their answers. Default false. */
  dnssec?: boolean;
  /**
   * Questions on the wire at once; more wait their turn. Default 256: a burst of thousands (every
   * destination due after a restart) would otherwise overflow the socket buffers on either side,
   * and a dropped answer costs a whole timeout.
   */
  maxInFlight?: number;
}

type Lookup = MxLookup | AddressLookup | TxtLookup | TlsaLookup;

interface CacheEntry {
  expiresAtMs: number;
  value: Lookup;
}

/** RFC 8914 §4: the Extended DNS Error codes that say DNSSEC validation failed (6 DNSSEC Bogus ... 12). */
const EDE_OPTION = 15;
const EDE_DNSSEC_FAILURES = new Set([6, 7, 8, 9, 10, 11, 12]);

export function readResolvConf(path = "/etc/resolv.conf"): { host: string; port: number }[] {
  let text: string;
  try {
    text = fs.readFileSync(path, "utf8");
  } catch {
    return [];
  }
  const out: { host: string; port: number }[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const host = m[1]!.replace(/%.*$/, "");
    if (net.isIP(host)) out.push({ host, port: 53 });
  }
  return out;
}

const RCODE_ERROR: Record<string, "servfail" | "refused" | "other"> = {
  SERVFAIL: "servfail",
  REFUSED: "refused",
};

/** dns-packet decodes the response code as a string property its type declarations leave out. */
function rcodeOf(packet: dnsPacket.DecodedPacket): string {
  return (packet as { rcode?: string }).rcode ?? "NOERROR";
}

/** The Extended DNS Error info codes (RFC 8914) in the answer's OPT record. */
function edeCodes(packet: dnsPacket.DecodedPacket): number[] {
  const out: number[] = [];
  for (const a of packet.additionals ?? []) {
    if (a.type !== "OPT") continue;
    for (const o of (a as dnsPacket.OptAnswer).options ?? []) {
      const { code, data } = o as unknown as { code: number; data?: Buffer };
      if (code === EDE_OPTION && data && data.length >= 2) out.push(data.readUInt16BE(0));
    }
  }
  return out;
}

/** dns-packet's decoded TLSA data (its type declarations have no TLSA). */
interface TlsaData {
  usage: number;
  selector: number;
  matchingType: number;
  certificate: Buffer;
}

class StubResolver implements Resolver {
  private readonly servers: { host: string; port: number }[];
  private readonly clock: Clock;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<Lookup>>();
  private readonly wire: DnsWire;
  private readonly queries?: Counter;
  private readonly cacheHits?: Counter;

  readonly dnssec: boolean;

  constructor(private readonly opts: ResolverOptions) {
    this.dnssec = opts.dnssec === true;
    this.servers = opts.servers.length > 0 ? opts.servers : readResolvConf();
    this.clock = opts.clock ?? systemClock;
    this.wire = new DnsWire({
      servers: this.servers,
      timeoutMs: opts.timeoutMs,
      dnssec: this.dnssec,
      ...(opts.maxInFlight !== undefined ? { maxInFlight: opts.maxInFlight } : {}),
    });
    this.queries = opts.metrics?.counter("mta_dns_queries_total", "DNS queries sent, by type and outcome");
    this.cacheHits = opts.metrics?.counter("mta_dns_cache_hits_total", "DNS lookups answered from the cache");
  }

  mx(domain: string): Promise<MxLookup> {
    return this.lookup(domain, "MX") as Promise<MxLookup>;
  }

  addresses(host: string, family: 4 | 6): Promise<AddressLookup> {
    return this.lookup(host, family === 4 ? "A" : "AAAA") as Promise<AddressLookup>;
  }

  txt(name: string): Promise<TxtLookup> {
    return this.lookup(name, "TXT") as Promise<TxtLookup>;
  }

  tlsa(name: string): Promise<TlsaLookup> {
    return this.lookup(name, "TLSA") as Promise<TlsaLookup>;
  }

  private lookup(name: string, type: QType): Promise<Lookup> {
    const qname = normalizeName(name);
    const key = `${type} ${qname}`;
    const hit = this.cache.get(key);
    if (hit) {
      if (hit.expiresAtMs > this.clock.now()) {
        this.cacheHits?.inc();
        return Promise.resolve(hit.value);
      }
      this.cache.delete(key);
    }
    const running = this.inflight.get(key);
    if (running) return running;
    const p = this.resolve(qname, type).then(
      ([value, ttlS]) => {
        this.inflight.delete(key);
        if (ttlS > 0) this.remember(key, value, ttlS);
        return value;
      },
      (err: unknown) => {
        this.inflight.delete(key);
        return { kind: "error", error: "other", detail: String(err) } as MxLookup;
      },
    );
    this.inflight.set(key, p);
    return p;
  }

  private remember(key: string, value: Lookup, ttlS: number): void {
    const max = this.opts.maxCacheEntries ?? 100_000;
    if (this.cache.size >= max) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
    const capped = Math.min(ttlS, this.opts.maxTtlS ?? 86_400);
    this.cache.set(key, { expiresAtMs: this.clock.now() + capped * 1000, value });
  }

  /** Interprets one answer; returns the value and how long it may be cached (0 = not at all). */
  private async resolve(qname: string, type: QType): Promise<[Lookup, number]> {
    const raw = await this.query(qname, type, false);
    if (raw.kind === "error") {
      this.queries?.inc({ type, outcome: raw.error });
      return [raw, 0];
    }
    const packet = raw.packet;
    const rcode = rcodeOf(packet);
    // Only a validating resolver's AD bit means anything (RFC 6840 §5.8: a stub that asked for it).
    const auth = this.dnssec && packet.flag_ad ? { authenticated: true as const } : {};
    if (rcode === "SERVFAIL" && this.dnssec && (await this.isBogus(packet, qname, type))) {
      this.queries?.inc({ type, outcome: "bogus" });
      return [{ kind: "error", error: "bogus", detail: `DNSSEC validation failed for ${qname} ${type}` }, 0];
    }
    this.queries?.inc({ type, outcome: rcode.toLowerCase() });
    if (rcode === "NXDOMAIN") return [{ kind: "nxdomain", ...auth }, this.negativeTtlS(packet)];
    if (rcode !== "NOERROR") {
      const error = RCODE_ERROR[rcode] ?? "other";
      return [{ kind: "error", error, detail: `${rcode} for ${qname} ${type}` }, 0];
    }
    const answers = (packet.answers ?? []).filter((a) => a.type === type);
    if (answers.length === 0) return [{ kind: "nodata", ...auth }, this.negativeTtlS(packet)];
    let ttlS = Number.POSITIVE_INFINITY;
    for (const a of answers) ttlS = Math.min(ttlS, (a as { ttl?: number }).ttl ?? 0);
    switch (type) {
      case "MX": {
        const hosts = answers.map((a) => {
          const d = (a as dnsPacket.MxAnswer).data;
          return { exchange: normalizeName(d.exchange), preference: d.preference ?? 0 };
        });
        // RFC 7505 §3: a null MX is a single MX record with preference 0 and the root as exchange.
        if (hosts.length === 1 && hosts[0]!.exchange === "") return [{ kind: "nullmx", ...auth }, ttlS];
        return [{ kind: "mx", hosts, ttlS, ...auth }, ttlS];
      }
      case "TXT": {
        const records = answers.map((a) => {
          const d = (a as dnsPacket.TxtAnswer).data;
          const parts = Array.isArray(d) ? d : [d];
          return parts.map((p) => (typeof p === "string" ? p : Buffer.from(p).toString("utf8"))).join("");
        });
        return [{ kind: "txt", records, ttlS, ...auth }, ttlS];
      }
      case "TLSA": {
        const records = answers.map((a) => {
          const d = (a as unknown as { data: TlsaData }).data;
          return {
            usage: d.usage,
            selector: d.selector,
            matchingType: d.matchingType,
            data: new Uint8Array(d.certificate),
          };
        });
        return [{ kind: "tlsa", records, ttlS, ...auth }, ttlS];
      }
      default: {
        const addresses = answers.map((a) => String((a as dnsPacket.StringAnswer).data));
        const chain = await this.cnameChain(packet, qname, auth.authenticated === true);
        return [{ kind: "ok", addresses, ttlS, ...auth, ...chain }, ttlS];
      }
    }
  }

  /**
   * The CNAME chain of an address answer, from the queried name to the owner of the addresses. When
   * the whole answer is authenticated, so is every link. When it is not (some link, or the target
   * zone, is unsigned), each link is asked about on its own, with the CNAME type, which a validating
   * resolver answers from the alias's zone without following it (Postfix does the same); the first
   * insecure link ends the questions, everything after it is insecure anyway (RFC 7672 §2.1.3).
   */
  private async cnameChain(
    packet: dnsPacket.DecodedPacket,
    qname: string,
    allAuthenticated: boolean,
  ): Promise<{ canonicalName?: string; aliases?: CnameLink[] }> {
    const targets = new Map<string, string>();
    for (const a of packet.answers ?? [])
      if (a.type === "CNAME") targets.set(normalizeName(a.name), normalizeName(String(a.data)));
    const links: CnameLink[] = [];
    let name = qname;
    // RFC 1034 §3.6.2 allows chains; a loop or an absurd length ends the walk (16 links).
    for (let next = targets.get(name); next !== undefined && links.length < 16; next = targets.get(name)) {
      links.push({ owner: name, target: next, authenticated: allAuthenticated });
      name = next;
    }
    if (links.length === 0) return {};
    // A chain that does not end at the owner of the addresses (a loop, or records that do not fit
    // together) names no canonical host: the answer is used as if the name were not an alias.
    const owners = (packet.answers ?? []).filter((a) => a.type === "A" || a.type === "AAAA");
    if (targets.has(name) || owners.some((a) => normalizeName(a.name) !== name)) return {};
    if (!allAuthenticated && this.dnssec) {
      for (const link of links) {
        const r = await this.query(link.owner, "CNAME", false);
        const same =
          r.kind === "answer" &&
          rcodeOf(r.packet) === "NOERROR" &&
          (r.packet.answers ?? []).some(
            (a) =>
              a.type === "CNAME" &&
              normalizeName(a.name) === link.owner &&
              normalizeName(String(a.data)) === link.target,
          );
        if (!(same && r.kind === "answer" && r.packet.flag_ad)) break;
        link.authenticated = true;
      }
    }
    return { canonicalName: name, aliases: links };
  }

  /**
   * Whether a validating resolver's SERVFAIL is a DNSSEC failure: its Extended DNS Error says so, or,
   * without one, the same question with checking disabled gets an answer (the data is there, its
   * signatures are not right). A resolver that is simply broken fails both ways: plain `servfail`.
   */
  private async isBogus(packet: dnsPacket.DecodedPacket, qname: string, type: QType): Promise<boolean> {
    const ede = edeCodes(packet);
    if (ede.some((c) => EDE_DNSSEC_FAILURES.has(c))) return true;
    if (ede.length > 0) return false;
    const unchecked = await this.query(qname, type, true);
    if (unchecked.kind !== "answer") return false;
    const rc = rcodeOf(unchecked.packet);
    return rc === "NOERROR" || rc === "NXDOMAIN";
  }

  /** RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM) from the authority section. */
  private negativeTtlS(packet: dnsPacket.DecodedPacket): number {
    for (const a of packet.authorities ?? []) {
      if (a.type !== "SOA") continue;
      const soa = a.data as dnsPacket.SoaData;
      return Math.min(a.ttl ?? 0, soa.minimum ?? 0);
    }
    return this.opts.defaultNegativeTtlS ?? 300;
  }

  private async query(qname: string, type: QType, checkingDisabled: boolean): Promise<RawAnswer> {
    if (this.servers.length === 0)
      return { kind: "error", error: "other", detail: "no DNS servers configured" };
    let last: RawAnswer = { kind: "error", error: "timeout", detail: `no answer for ${qname} ${type}` };
    for (let round = 0; round < Math.max(1, this.opts.attempts); round++) {
      for (const server of this.servers) {
        const r = await this.wire.ask(server, qname, type, checkingDisabled);
        if (r.kind === "answer") {
          // SERVFAIL / REFUSED from one server: another may do better.
          const rc = rcodeOf(r.packet);
          if (rc === "SERVFAIL" || rc === "REFUSED") {
            last = r;
            continue;
          }
          return r;
        }
        last = r;
      }
    }
    return last;
  }
}

export function createResolver(opts: ResolverOptions): Resolver {
  return new StubResolver(opts);
}

/** Parses `dns.servers` entries such as `127.0.0.1:5353` or `[::1]:53` (port 53 by default). */
export function parseDnsServers(list: readonly string[]): { host: string; port: number }[] | undefined {
  const out: { host: string; port: number }[] = [];
  for (const s of list) {
    const hp = parseHostPort(s, 53);
    if (!hp || !net.isIP(hp.host)) return undefined;
    out.push(hp);
  }
  return out;
}
