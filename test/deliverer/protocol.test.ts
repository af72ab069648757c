import { expect, test } from "bun:test";
import { classifyReply, dotStuff, parseEhlo, parseReplyLines } from "../../src/deliverer/index.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

test("dot-stuffing doubles leading dots only and terminates the data", () => {
  expect(text(dotStuff(bytes(".a\r\nb.c\r\n..\r\n.\r\n")))).toBe("..a\r\nb.c\r\n...\r\n..\r\n.\r\n");
  expect(text(dotStuff(bytes("no final newline")))).toBe("no final newline\r\n.\r\n");
  expect(text(dotStuff(bytes("")))).toBe(".\r\n");
  expect(text(dotStuff(bytes("x\r\n.")))).toBe("x\r\n..\r\n.\r\n");
});

test("replies: multi-line text, enhanced codes only when their class matches", () => {
  expect(parseReplyLines(["250-first", "250 2.1.0 second"])).toEqual({
    code: 250,
    lines: ["first", "2.1.0 second"],
  });
  expect(parseReplyLines(["550 5.1.1 no such user"])).toEqual({
    code: 550,
    enhanced: "5.1.1",
    lines: ["no such user"],
  });
  expect(parseReplyLines(["451 5.1.1 mismatched"])).toEqual({ code: 451, lines: ["5.1.1 mismatched"] });
  expect(parseReplyLines(["250"])).toEqual({ code: 250, lines: [""] });
});

test("classification: 2xx/3xx success, 4xx transient, 5xx permanent, anything else transient", () => {
  expect(classifyReply({ code: 250, lines: [] })).toBe("success");
  expect(classifyReply({ code: 354, lines: [] })).toBe("success");
  expect(classifyReply({ code: 421, lines: [] })).toBe("transient");
  expect(classifyReply({ code: 554, lines: [] })).toBe("permanent");
  expect(classifyReply({ code: 700, lines: [] })).toBe("transient");
});

test("EHLO keywords are read case-insensitively with their parameters", () => {
  const caps = parseEhlo({
    code: 250,
    lines: [
      "mx.test hi",
      "pipelining",
      "SIZE 1000",
      "8BITMIME",
      "SMTPUTF8",
      "DSN",
      "STARTTLS",
      "CHUNKING",
      "AUTH PLAIN login",
      "",
    ],
  });
  expect(caps).toMatchObject({
    pipelining: true,
    size: true,
    sizeBytes: 1000,
    eightBitMime: true,
    smtputf8: true,
    dsn: true,
    starttls: true,
    chunking: true,
    auth: ["PLAIN", "LOGIN"],
  });
  expect(parseEhlo({ code: 250, lines: ["x", "SIZE"] })).toMatchObject({ size: true, sizeBytes: 0 });
});
