/**
 * A test DNS server on loopback: UDP and TCP on the same port, answers built with dns-packet.
 *
 * Owns: a tiny authoritative zone given as data, per-name failure modes, a log of the questions asked.
 * Names not in the zone are NXDOMAIN; a name without records of the asked type is NODATA (with a SOA
 * whose minimum sets the negative TTL). `truncate` answers UDP with TC set and no records, so the
 * client must repeat the question over TCP.
 *
 * DNSSEC as a validating resolver would show it, without signatures: `ad` sets the AD bit in answers
 * to queries that asked for it (AD or DO set), `mode: "bogus"` answers SERVFAIL (with the Extended DNS
 * Error `ede` when given) unless the query set CD, which gets the records: what unbound does for data
 * whose signatures fail. `cname` makes a name an alias, followed the way a recursive resolver does. The real thing (unbound over a signed zone) is in test/support/unbound.ts.
 */
import dgram from "node:dgram";
import net from "node:net";
import dnsPacket from "dns-packet";

export interface NameSpec {
  mode?: "answer" | "nxdomain" | "servfail" | "refused" | "silent" | "bogus";
  ttlS?: number;
  mx?: { exchange: string; preference: number }[];
  a?: string[];
  aaaa?: string[];
  /** Each record a list of character-strings (a string is one string of at most 255 bytes). */
  txt?: (string | string[])[];
  tlsa?: { usage: number; selector: number; matchingType: number; data: Buffer }[];
  /** Answers (and denials) for this name are "authenticated": AD set when the query asked. */
  ad?: boolean;
  /** RFC 8914 info code in the OPT record of a SERVFAIL/bogus answer. */
  ede?: number;
  /** Answer UDP with the TC bit and no records; TCP gets the full answer. */
  truncate?: boolean;
  /**
   * The name is an alias of this one: a question of any other type gets the CNAME record followed by
   * the target's records (as a recursive resolver answers), AD only when every name on the way has
   * `ad`; a CNAME question gets the CNAME record alone, AD by this name's `ad`.
   */
  cname?: string;
}

export interface DnsServer {
  host: string;
  port: number;
  /** Every question received, in order. */
  queries: { name: string; type: string; transport: "udp" | "tcp"; do: boolean; ad: boolean; cd: boolean }[];
  set(name: string, spec: NameSpec | undefined): void;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const NEGATIVE_TTL_S = 30;

function tlsaAnswer(name: string, ttl: number, r: NonNullable<NameSpec["tlsa"]>[number]): dnsPacket.Answer {
  return {
    type: "TLSA",
    name,
    ttl,
    data: { usage: r.usage, selector: r.selector, matchingType: r.matchingType, certificate: r.data },
  } as unknown as dnsPacket.Answer;
}
const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

export async function startDnsServer(zone: Record<string, NameSpec> = {}): Promise<DnsServer> {
  const names = new Map<string, NameSpec>();
  for (const [k, v] of Object.entries(zone)) names.set(k.toLowerCase(), v);
  const queries: DnsServer["queries"] = [];

  function answer(query: dnsPacket.DecodedPacket, transport: "udp" | "tcp"): Buffer | undefined {
    const q = query.questions?.[0];
    if (!q) return undefined;
    const name = q.name.toLowerCase();
    const opt = (query.additionals ?? []).find((a) => a.type === "OPT") as
      | (dnsPacket.OptAnswer & { flag_do?: boolean })
      | undefined;
    const asked = {
      do: opt?.flag_do === true,
      ad: (query as { flag_ad?: boolean }).flag_ad === true,
      cd: (query as { flag_cd?: boolean }).flag_cd === true,
    };
    queries.push({ name, type: q.type, transport, ...asked });
    const spec = names.get(name);
    const base = {
      type: "response" as const,
      id: query.id,
      questions: [q],
      ...(spec?.ede !== undefined
        ? {
            additionals: [
              {
                type: "OPT",
                name: ".",
                udpPayloadSize: 1232,
                options: [{ code: 15, data: Buffer.from([spec.ede >> 8, spec.ede & 255]) }],
              } as unknown as dnsPacket.OptAnswer,
            ],
          }
        : {}),
    };
    const flags =
      dnsPacket.RECURSION_AVAILABLE |
      dnsPacket.AUTHORITATIVE_ANSWER |
      dnsPacket.RECURSION_DESIRED |
      (spec?.ad && (asked.do || asked.ad) ? dnsPacket.AUTHENTIC_DATA : 0) |
      (asked.cd ? 1 << 4 : 0);
    const soa: dnsPacket.Answer = {
      type: "SOA",
      name,
      ttl: NEGATIVE_TTL_S,
      data: { mname: "ns.test", rname: "hostmaster.test", serial: 1, minimum: NEGATIVE_TTL_S },
    };
    if (spec?.mode === "silent") return undefined;
    if (!spec || spec.mode === "nxdomain")
      return dnsPacket.encode({ ...base, flags: flags | RCODE.NXDOMAIN, authorities: [soa] });
    if (spec.mode === "servfail" || (spec.mode === "bogus" && !asked.cd))
      return dnsPacket.encode({ ...base, flags: flags | RCODE.SERVFAIL });
    if (spec.mode === "refused") return dnsPacket.encode({ ...base, flags: flags | RCODE.REFUSED });
    const ttl = spec.ttlS ?? 300;
    const answers: dnsPacket.Answer[] = [];
    if (spec.cname !== undefined) {
      if (q.type === "CNAME")
        return dnsPacket.encode({
          ...base,
          flags,
          answers: [{ type: "CNAME", name, ttl, data: spec.cname }],
        });
      // Follow the chain (at most 8 links); the answer is authenticated only if every link is.
      let owner = name;
      let ad = spec.ad === true;
      let at: NameSpec | undefined = spec;
      for (let i = 0; at?.cname !== undefined && i < 8; i++) {
        answers.push({ type: "CNAME", name: owner, ttl, data: at.cname });
        owner = at.cname.toLowerCase();
        at = names.get(owner);
        ad = ad && at?.ad === true;
      }
      const chained = flags & ~(ad ? 0 : dnsPacket.AUTHENTIC_DATA);
      if (at && q.type === "A")
        for (const ip of at.a ?? []) answers.push({ type: "A", name: owner, ttl, data: ip });
      if (at && q.type === "AAAA")
        for (const ip of at.aaaa ?? []) answers.push({ type: "AAAA", name: owner, ttl, data: ip });
      if (at && q.type === "TLSA") for (const r of at.tlsa ?? []) answers.push(tlsaAnswer(owner, ttl, r));
      return dnsPacket.encode({ ...base, flags: chained, answers });
    }
    if (q.type === "MX") for (const m of spec.mx ?? []) answers.push({ type: "MX", name, ttl, data: m });
    if (q.type === "A") for (const ip of spec.a ?? []) answers.push({ type: "A", name, ttl, data: ip });
    if (q.type === "AAAA")
      for (const ip of spec.aaaa ?? []) answers.push({ type: "AAAA", name, ttl, data: ip });
    if (q.type === "TXT")
      for (const t of spec.txt ?? [])
        answers.push({
          type: "TXT",
          name,
          ttl,
          data: (Array.isArray(t) ? t : [t]).map((x) => Buffer.from(x)),
        });
    if (q.type === "TLSA") for (const r of spec.tlsa ?? []) answers.push(tlsaAnswer(name, ttl, r));
    if (spec.truncate && transport === "udp")
      return dnsPacket.encode({ ...base, flags: flags | dnsPacket.TRUNCATED_RESPONSE });
    if (answers.length === 0) return dnsPacket.encode({ ...base, flags, authorities: [soa] });
    return dnsPacket.encode({ ...base, flags, answers });
  }

  for (let tries = 0; ; tries++) {
    const udp = dgram.createSocket("udp4");
    await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", resolve));
    const port = udp.address().port;
    const tcp = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on("data", (d) => {
        buf = Buffer.concat([buf, Buffer.from(d)]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const len = buf.readUInt16BE(0);
          const msg = buf.subarray(2, 2 + len);
          buf = buf.subarray(2 + len);
          const out = answer(dnsPacket.decode(msg), "tcp");
          if (!out) continue;
          const prefix = Buffer.alloc(2);
          prefix.writeUInt16BE(out.length);
          sock.write(Buffer.concat([prefix, out]));
        }
      });
      sock.on("error", () => {});
    });
    const listened = await new Promise<boolean>((resolve) => {
      tcp.once("error", () => resolve(false));
      tcp.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (!listened) {
      udp.close();
      if (tries > 20) throw new Error("could not bind a TCP port next to the UDP one");
      continue;
    }
    udp.on("message", (msg, rinfo) => {
      let query: dnsPacket.DecodedPacket;
      try {
        query = dnsPacket.decode(msg);
      } catch {
        return;
      }
      const out = answer(query, "udp");
      if (out) udp.send(out, rinfo.port, rinfo.address);
    });
    const close = async () => {
      udp.close();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    };
    return {
      host: "127.0.0.1",
      port,
      queries,
      set(name, spec) {
        if (spec) names.set(name.toLowerCase(), spec);
        else names.delete(name.toLowerCase());
      },
      close,
      [Symbol.asyncDispose]: close,
    };
  }
}
