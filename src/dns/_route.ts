/**
 * From a destination domain to an ordered list of (MX host, IP, port) to try.
 *
 * Owns: `resolveDestination`: MX preference order with a random order among equal preferences
 * (RFC 5321 §5.1), implicit MX when there is no MX (RFC 5321 §5.1), null MX (RFC 7505), address family
 * preference, and which DNS outcomes are permanent and which are transient.
 * Does not own: the DNS transport or cache (resolver.ts), static routes (the scheduler/app decide those).
 * Invariants: only NXDOMAIN of the domain, a null MX, and MX/implicit hosts that all provably have no
 * address are permanent; anything that might be a passing DNS problem is transient.
 */
import net from "node:net";
import type { AddressLookup, Resolver } from "./_resolver.ts";

export interface RouteHost {
  name: string;
  ip: string;
  port: number;
  preference: number;
}

export type RouteResult =
  | { kind: "hosts"; hosts: RouteHost[] }
  | { kind: "permanent"; enhanced: "5.1.2" | "5.1.10" | string; reason: string }
  | { kind: "transient"; reason: string };

export interface RouteOptions {
  port?: number;
  prefer: "ipv4" | "ipv6";
  /** Families to use at all; default both. */
  families?: (4 | 6)[];
  /** At most this many MX hosts are looked up (cost bound against huge MX sets); default 10. */
  maxMxHosts?: number;
  random?: () => number;
}

function shuffle<T>(items: T[], random: () => number): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
}

/** Sorts MX hosts by preference and shuffles each group of equal preference. */
export function orderMxHosts<T extends { preference: number }>(
  hosts: readonly T[],
  random = Math.random,
): T[] {
  const byPref = new Map<number, T[]>();
  for (const h of hosts) {
    const g = byPref.get(h.preference);
    if (g) g.push(h);
    else byPref.set(h.preference, [h]);
  }
  const out: T[] = [];
  for (const pref of [...byPref.keys()].sort((a, b) => a - b)) {
    const g = byPref.get(pref)!;
    shuffle(g, random);
    out.push(...g);
  }
  return out;
}

export async function resolveDestination(
  resolver: Resolver,
  domain: string,
  opts: RouteOptions,
): Promise<RouteResult> {
  const port = opts.port ?? 25;
  const families = orderFamilies(opts);
  const name = domain.toLowerCase().replace(/\.$/, "");

  // An address literal (RFC 5321 §4.1.3): no DNS at all.
  const literal = /^\[(?:ipv6:)?([^\]]+)\]$/i.exec(name);
  if (literal) {
    const ip = literal[1]!;
    const fam = net.isIP(ip);
    if (fam === 0 || !families.includes(fam as 4 | 6))
      return { kind: "permanent", enhanced: "5.1.2", reason: `unusable address literal ${domain}` };
    return { kind: "hosts", hosts: [{ name: ip, ip, port, preference: 0 }] };
  }

  const mx = await resolver.mx(name);
  let mxHosts: { exchange: string; preference: number }[];
  let implicit = false;
  switch (mx.kind) {
    case "nxdomain":
      return { kind: "permanent", enhanced: "5.1.2", reason: `domain ${name} does not exist (NXDOMAIN)` };
    case "nullmx":
      // RFC 7505 §4.2 / RFC 7504: "5.1.10 Recipient address has null MX".
      return { kind: "permanent", enhanced: "5.1.10", reason: `domain ${name} accepts no mail (null MX)` };
    case "error":
      return { kind: "transient", reason: `MX lookup for ${name} failed: ${mx.error} (${mx.detail})` };
    case "nodata":
      implicit = true;
      mxHosts = [{ exchange: name, preference: 0 }];
      break;
    case "mx":
      mxHosts = orderMxHosts(mx.hosts, opts.random).slice(0, opts.maxMxHosts ?? 10);
      break;
  }

  const lookups = await Promise.all(
    mxHosts.map((h) => Promise.all(families.map((f) => resolver.addresses(h.exchange, f)))),
  );
  const hosts: RouteHost[] = [];
  const problems: string[] = [];
  let anyError = false;
  mxHosts.forEach((h, i) => {
    const results = lookups[i]!;
    results.forEach((r: AddressLookup, k) => {
      if (r.kind === "ok") {
        for (const ip of r.addresses) hosts.push({ name: h.exchange, ip, port, preference: h.preference });
      } else if (r.kind === "error") {
        anyError = true;
        problems.push(`${h.exchange}/${families[k] === 4 ? "A" : "AAAA"}: ${r.error}`);
      } else problems.push(`${h.exchange}/${families[k] === 4 ? "A" : "AAAA"}: ${r.kind}`);
    });
  });
  if (hosts.length > 0) return { kind: "hosts", hosts };
  if (anyError) return { kind: "transient", reason: `no address for ${name}: ${problems.join(", ")}` };
  if (implicit)
    return { kind: "permanent", enhanced: "5.1.2", reason: `${name} has neither MX nor address records` };
  // Every MX host provably has no address: a broken destination, like Postfix's "Host not found" (5.4.4).
  return {
    kind: "permanent",
    enhanced: "5.4.4",
    reason: `no MX host of ${name} has an address: ${problems.join(", ")}`,
  };
}

function orderFamilies(opts: RouteOptions): (4 | 6)[] {
  const allowed = opts.families ?? [4, 6];
  const first: 4 | 6 = opts.prefer === "ipv6" ? 6 : 4;
  const second: 4 | 6 = first === 4 ? 6 : 4;
  return [first, second].filter((f) => allowed.includes(f));
}
