/**
 * Network address values: `host:port` addresses and CIDR ranges, parsed into typed values.
 *
 * Owns: `parseHostPort`, `parseCidr`, `cidrContains`, `isLoopback`, `normalizeIp`.
 * IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) match IPv4 ranges, since dual-stack sockets report them.
 */
import { isIP } from "node:net";

export interface HostPort {
  host: string;
  port: number;
}

/** Parses `127.0.0.1:25`, `[::1]:25`, `mx.example.com:2525`; `defaultPort` when the port is left out. */
export function parseHostPort(text: string, defaultPort?: number): HostPort | undefined {
  const t = text.trim();
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(t);
  if (v6) {
    host = v6[1]!;
    portText = v6[2];
    if (isIP(host) !== 6) return undefined;
  } else {
    const i = t.lastIndexOf(":");
    if (i >= 0 && t.indexOf(":") !== i) return undefined; // bare IPv6 needs brackets
    host = i >= 0 ? t.slice(0, i) : t;
    portText = i >= 0 ? t.slice(i + 1) : undefined;
    if (!host || !(isIP(host) === 4 || /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)))
      return undefined;
  }
  let port: number;
  if (portText === undefined) {
    if (defaultPort === undefined) return undefined;
    port = defaultPort;
  } else {
    if (!/^\d{1,5}$/.test(portText)) return undefined;
    port = Number(portText);
  }
  if (port < 0 || port > 65535) return undefined;
  return { host, port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

export interface Cidr {
  family: 4 | 6;
  /** Network address as a bigint (32 or 128 bits). */
  network: bigint;
  prefix: number;
  text: string;
}

function ipv4ToBigInt(ip: string): bigint {
  let v = 0n;
  for (const part of ip.split(".")) v = (v << 8n) | BigInt(Number(part));
  return v;
}

function ipv6ToBigInt(ip: string): bigint {
  let text = ip;
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  // Embedded IPv4 tail, e.g. ::ffff:1.2.3.4
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = ipv4ToBigInt(v4[1]!);
    text = `${text.slice(0, -v4[1]!.length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill("0"), ...t];
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(Number.parseInt(g || "0", 16));
  return v;
}

export function parseCidr(text: string): Cidr | undefined {
  const t = text.trim();
  const slash = t.indexOf("/");
  const ip = slash >= 0 ? t.slice(0, slash) : t;
  const family = isIP(ip);
  if (family === 0) return undefined;
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = t.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p)) return undefined;
    prefix = Number(p);
    if (prefix > max) return undefined;
  }
  const value = family === 4 ? ipv4ToBigInt(ip) : ipv6ToBigInt(ip);
  const bits = BigInt(max);
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << (bits - BigInt(prefix));
  return { family: family as 4 | 6, network: value & mask, prefix, text: t };
}

/** Whether `ip` lies in `cidr`. */
export function cidrContains(cidr: Cidr, ip: string): boolean {
  let family = isIP(ip);
  let addr = ip;
  if (family === 6 && cidr.family === 4) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (!mapped) return false;
    addr = mapped[1]!;
    family = 4;
  }
  if (family !== cidr.family) return false;
  const max = family === 4 ? 32 : 128;
  const value = family === 4 ? ipv4ToBigInt(addr) : ipv6ToBigInt(addr);
  const bits = BigInt(max);
  const mask = cidr.prefix === 0 ? 0n : ((1n << BigInt(cidr.prefix)) - 1n) << (bits - BigInt(cidr.prefix));
  return (value & mask) === cidr.network;
}

export function anyCidrContains(list: readonly Cidr[], ip: string): boolean {
  for (const c of list) if (cidrContains(c, ip)) return true;
  return false;
}

const LOOPBACK = [parseCidr("127.0.0.0/8")!, parseCidr("::1/128")!];

export function isLoopback(ip: string): boolean {
  return anyCidrContains(LOOPBACK, ip);
}
