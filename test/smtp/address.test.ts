import { describe, expect, test } from "bun:test";
import { domainOf, parseMailbox, parsePath } from "../../src/smtp/index.ts";

const S = { allowNull: true, role: "sender" } as const;
const R = { allowNull: false, role: "recipient" } as const;

describe("addresses", () => {
  test.each([
    "user@example.com",
    "first.last+tag@sub.example.co",
    '"john doe"@example.com',
    '"a\\"b"@example.com',
    "user@[192.0.2.1]",
    "user@[IPv6:::1]",
    "用户@例子.广告",
    "δοκιμή@παράδειγμα.δοκιμή",
    "x@a-b.c",
  ])("valid mailbox %s", (text) => {
    expect(parseMailbox(text)?.address).toBe(text);
  });
  test.each([
    "",
    "user",
    "@example.com",
    "user@",
    "a..b@example.com",
    ".a@example.com",
    "user@-example.com",
    "user@example..com",
    "us er@example.com",
    "user@[300.1.1.1]",
    "user@[IPv6:zz]",
    '"unterminated@example.com',
    "a\u0000b@example.com",
    "<a>@example.com",
  ])("invalid mailbox %p", (text) => {
    expect(parseMailbox(text)).toBeUndefined();
  });
  test("non-ASCII mailboxes are flagged utf8", () => {
    expect(parseMailbox("用户@example.com")?.utf8).toBe(true);
    expect(parseMailbox("user@example.com")?.utf8).toBe(false);
  });
  test("parsePath accepts <>, a source route, a space after the colon, and returns the parameters", () => {
    expect(parsePath("<>", S)).toEqual({ ok: true, address: "", mailbox: undefined, rest: "" });
    const r = parsePath(" <@relay.test,@b.test:user@example.com> SIZE=10 BODY=8BITMIME", S);
    expect(r.ok && r.address).toBe("user@example.com");
    expect(r.ok && r.rest).toBe("SIZE=10 BODY=8BITMIME");
    const q = parsePath('<"a>b"@example.com> NOTIFY=NEVER', R);
    expect(q.ok && q.address).toBe('"a>b"@example.com');
  });
  test("parsePath rejects the null path for recipients, missing brackets, and junk after >", () => {
    const n = parsePath("<>", R);
    expect(!n.ok && n.reply.code).toBe(501);
    const nb = parsePath("user@example.com", R);
    expect(!nb.ok && nb.reply.code).toBe(501);
    const j = parsePath("<a@b.c>x", R);
    expect(!j.ok && j.reply.code).toBe(501);
    const bad = parsePath("<a@@b>", S);
    expect(!bad.ok && bad.reply.enhanced).toBe("5.1.7");
  });
  test("domainOf lowercases the domain and gives '' for the null sender", () => {
    expect(domainOf("User@EXAMPLE.Com")).toBe("example.com");
    expect(domainOf('"a@b"@Example.ORG')).toBe("example.org");
    expect(domainOf("")).toBe("");
  });
});
