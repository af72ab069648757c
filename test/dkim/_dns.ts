/**
 * A DNS server on 127.0.0.1 that answers TXT queries from a table, and a `resolver(name, type)` for
 * mailauth's verifier that asks it over UDP, so that public keys travel through real DNS wire format.
 */
import dgram from "node:dgram";
import dnsPacket from "dns-packet";

export interface TxtServer {
  port: number;
  /** Publishes `value` at `name`, split into 255-byte character-strings as a zone file would. */
  set(name: string, value: string): void;
  resolver(name: string, type: string): Promise<string[][]>;
  close(): Promise<void>;
}

export async function startTxtServer(): Promise<TxtServer> {
  const records = new Map<string, string>();
  const server = dgram.createSocket("udp4");
  server.on("message", (msg, rinfo) => {
    const query = dnsPacket.decode(msg);
    const q = query.questions?.[0];
    const value = q ? records.get(q.name.toLowerCase()) : undefined;
    const chunks: Buffer[] = [];
    if (value !== undefined)
      for (let i = 0; i < value.length; i += 255) chunks.push(Buffer.from(value.slice(i, i + 255)));
    const answer = dnsPacket.encode({
      id: query.id,
      type: "response",
      flags: dnsPacket.AUTHORITATIVE_ANSWER | (value === undefined ? 3 : 0), // rcode 3 = NXDOMAIN
      questions: query.questions,
      answers: q && value !== undefined ? [{ type: "TXT", name: q.name, ttl: 60, data: chunks }] : [],
    });
    server.send(answer, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => server.bind(0, "127.0.0.1", resolve));
  const port = server.address().port;

  let nextId = 1;
  const resolver = (name: string, type: string): Promise<string[][]> =>
    new Promise((resolve, reject) => {
      const client = dgram.createSocket("udp4");
      const id = nextId++ & 0xffff;
      const timer = setTimeout(() => {
        client.close();
        reject(Object.assign(new Error(`DNS timeout for ${name}`), { code: "ETIMEOUT" }));
      }, 2000);
      client.on("message", (msg) => {
        clearTimeout(timer);
        client.close();
        const res = dnsPacket.decode(msg);
        const answers = (res.answers ?? []).filter((a) => a.type === "TXT");
        if (answers.length === 0) {
          reject(Object.assign(new Error(`no ${type} for ${name}`), { code: "ENOTFOUND" }));
          return;
        }
        resolve(
          answers.map((a) => {
            const data = a.data as unknown as (Buffer | string)[];
            return data.map((d) => d.toString());
          }),
        );
      });
      client.send(
        dnsPacket.encode({ id, type: "query", questions: [{ type: "TXT", name }] }),
        port,
        "127.0.0.1",
      );
    });

  return {
    port,
    set: (name, value) => records.set(name.toLowerCase(), value),
    resolver,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
