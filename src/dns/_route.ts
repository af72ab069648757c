/**
 * From a destination domain to an ordered list of (MX host, IP, port) to try.
 *
 * Owns: `resolveDestination`: MX preference order with a random order among equal preferences
 * (RFC 5321 §5.1), implicit MX when there is no MX (RFC 5321 §5.1), null MX (RFC 7505), address family
 * preference (the other family of a host that has a preferred address is looked up only when
 * needed), and which DNS outcomes are permanent and which are transient.
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
  | {
      kind: "hosts";
      hosts: RouteHost[];
      /**
       * The other address family of hosts that have one of the preferred family, looked up only if
       * called: when none of `hosts` could be reached. Hosts without a preferred address already
       * have their other-family addresses in `hosts`, at their MX position.
       */
      more?: () => Promise<RouteHost[]>;
    }
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

  // The preferred family first; the other family at once only for hosts without a preferred
  // address, else on demand (`more`): one question fewer per destination when the first one works.
  const [first, second] = families as [4 | 6, (4 | 6)?];
  const firsts = await Promise.all(mxHosts.map((h) => resolver.addresses(h.exchange, first)));
  const seconds =
    second === undefined
      ? []
      : await Promise.all(
          mxHosts.map((h, i) =>
            firsts[i]!.kind === "ok" ? undefined : resolver.addresses(h.exchange, second),
          ),
        );
  const hosts: RouteHost[] = [];
  const problems: string[] = [];
  let anyError = false;
  const note = (h: { exchange: string }, family: 4 | 6, r: AddressLookup) => {
    const rr = family === 4 ? "A" : "AAAA";
    if (r.kind === "error") {
      anyError = true;
      problems.push(`${h.exchange}/${rr}: ${r.error}`);
    } else if (r.kind !== "ok") problems.push(`${h.exchange}/${rr}: ${r.kind}`);
  };
  const deferred: { exchange: string; preference: number }[] = [];
  mxHosts.forEach((h, i) => {
    const a = firsts[i]!;
    const b = seconds[i];
    note(h, first, a);
    if (a.kind === "ok") {
      for (const ip of a.addresses) hosts.push({ name: h.exchange, ip, port, preference: h.preference });
      deferred.push(h);
    } else if (b) {
      note(h, second!, b);
      if (b.kind === "ok")
        for (const ip of b.addresses) hosts.push({ name: h.exchange, ip, port, preference: h.preference });
    }
  });
  if (hosts.length > 0) {
    if (second === undefined || deferred.length === 0) return { kind: "hosts", hosts };
    const more = async (): Promise<RouteHost[]> => {
      const found = await Promise.all(deferred.map((h) => resolver.addresses(h.exchange, second)));
      const out: RouteHost[] = [];
      deferred.forEach((h, i) => {
        const r = found[i]!;
        if (r.kind === "ok")
          for (const ip of r.addresses) out.push({ name: h.exchange, ip, port, preference: h.preference });
      });
      return out;
    };
    return { kind: "hosts", hosts, more };
  }
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
