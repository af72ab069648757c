/**
 * A test DNS server on loopback: UDP and TCP on the same port, answers built with dns-packet.
 *
 * Owns: a tiny authoritative zone given as data, per-name failure modes, a log of the questions asked.
 * Names not in the zone are NXDOMAIN; a name without records of the asked type is NODATA (with a SOA
 * whose minimum sets the negative TTL). `truncate` answers UDP with TC set and no records, so the
 * client must repeat the question over TCP.
 */
import dgram from "node:dgram";
import net from "node:net";
import dnsPacket from "dns-packet";

export interface NameSpec {
  mode?: "answer" | "nxdomain" | "servfail" | "refused" | "silent";
  ttlS?: number;
  mx?: { exchange: string; preference: number }[];
  a?: string[];
  aaaa?: string[];
  /** Answer UDP with the TC bit and no records; TCP gets the full answer. */
  truncate?: boolean;
}

export interface DnsServer {
  host: string;
  port: number;
  /** Every question received, in order. */
  queries: { name: string; type: string; transport: "udp" | "tcp" }[];
  set(name: string, spec: NameSpec | undefined): void;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const NEGATIVE_TTL_S = 30;
const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

export async function startDnsServer(zone: Record<string, NameSpec> = {}): Promise<DnsServer> {
  const names = new Map<string, NameSpec>();
  for (const [k, v] of Object.entries(zone)) names.set(k.toLowerCase(), v);
  const queries: DnsServer["queries"] = [];

  function answer(query: dnsPacket.DecodedPacket, transport: "udp" | "tcp"): Buffer | undefined {
    const q = query.questions?.[0];
    if (!q) return undefined;
    const name = q.name.toLowerCase();
    queries.push({ name, type: q.type, transport });
    const spec = names.get(name);
    const base = { type: "response" as const, id: query.id, questions: [q] };
    const flags =
      dnsPacket.RECURSION_AVAILABLE | dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED;
    const soa: dnsPacket.Answer = {
      type: "SOA",
      name,
      ttl: NEGATIVE_TTL_S,
      data: { mname: "ns.test", rname: "hostmaster.test", serial: 1, minimum: NEGATIVE_TTL_S },
    };
    if (spec?.mode === "silent") return undefined;
    if (!spec || spec.mode === "nxdomain")
      return dnsPacket.encode({ ...base, flags: flags | RCODE.NXDOMAIN, authorities: [soa] });
    if (spec.mode === "servfail") return dnsPacket.encode({ ...base, flags: flags | RCODE.SERVFAIL });
    if (spec.mode === "refused") return dnsPacket.encode({ ...base, flags: flags | RCODE.REFUSED });
    const ttl = spec.ttlS ?? 300;
    const answers: dnsPacket.Answer[] = [];
    if (q.type === "MX") for (const m of spec.mx ?? []) answers.push({ type: "MX", name, ttl, data: m });
    if (q.type === "A") for (const ip of spec.a ?? []) answers.push({ type: "A", name, ttl, data: ip });
    if (q.type === "AAAA")
      for (const ip of spec.aaaa ?? []) answers.push({ type: "AAAA", name, ttl, data: ip });
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
