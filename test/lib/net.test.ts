import { describe, expect, test } from "bun:test";
import { cidrContains, isLoopback, parseCidr, parseHostPort } from "../../src/lib/index.ts";

describe("parseHostPort", () => {
  test("parses IPv4, bracketed IPv6 and host names", () => {
    expect(parseHostPort("127.0.0.1:2525")).toEqual({ host: "127.0.0.1", port: 2525 });
    expect(parseHostPort("[::1]:25")).toEqual({ host: "::1", port: 25 });
    expect(parseHostPort("mx.example.test:587")).toEqual({ host: "mx.example.test", port: 587 });
    expect(parseHostPort("mx.example.test", 25)).toEqual({ host: "mx.example.test", port: 25 });
  });
  test("rejects a bad port, a bare IPv6 and a missing port without default", () => {
    expect(parseHostPort("127.0.0.1:99999")).toBeUndefined();
    expect(parseHostPort("::1:25")).toBeUndefined();
    expect(parseHostPort("127.0.0.1")).toBeUndefined();
    expect(parseHostPort("bad host:25")).toBeUndefined();
  });
});

describe("CIDR", () => {
  test("matches IPv4 ranges, IPv4-mapped IPv6 and IPv6 ranges", () => {
    const net = parseCidr("10.1.0.0/16")!;
    expect(cidrContains(net, "10.1.200.3")).toBe(true);
    expect(cidrContains(net, "10.2.0.1")).toBe(false);
    expect(cidrContains(net, "::ffff:10.1.0.9")).toBe(true);
    const v6 = parseCidr("2001:db8::/32")!;
    expect(cidrContains(v6, "2001:db8:1::5")).toBe(true);
    expect(cidrContains(v6, "2001:db9::1")).toBe(false);
    expect(isLoopback("127.9.9.9")).toBe(true);
    expect(isLoopback("::1")).toBe(true);
    expect(isLoopback("192.0.2.1")).toBe(false);
  });
  test("rejects malformed ranges", () => {
    expect(parseCidr("10.0.0.0/33")).toBeUndefined();
    expect(parseCidr("10.0.0/8")).toBeUndefined();
    expect(parseCidr("::1/129")).toBeUndefined();
    expect(parseCidr("nonsense")).toBeUndefined();
  });
});
