import { describe, expect, test } from "bun:test";
import { DotUnstuffer, dotStuff, findBareNewline } from "../../src/smtp/index.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

function unstuffWhole(wire: string, strict = true, maxBytes = 1 << 20) {
  const u = new DotUnstuffer({ maxBytes, rejectBareNewlines: strict });
  const bytes = enc(wire);
  const used = u.push(bytes);
  return { u, used, body: u.done ? dec(u.take()) : undefined };
}

describe("dot transparency", () => {
  test("dotStuff doubles leading dots, adds CRLF and the terminator", () => {
    expect(dec(dotStuff(enc(".a\r\nb\r\n..c")))).toBe("..a\r\nb\r\n...c\r\n.\r\n");
    expect(dec(dotStuff(enc("")))).toBe(".\r\n");
    expect(dec(dotStuff(enc("x\r\n")))).toBe("x\r\n.\r\n");
  });
  test("dotStuff also doubles a dot after a bare CR or a bare LF: no next hop can read <CR>.<CR> as the end", () => {
    expect(dec(dotStuff(enc("a\r.\rb\r.\nc\n.x\r\n")))).toBe("a\r..\rb\r..\nc\n..x\r\n.\r\n");
    // A CRLF is one line end: the dot after it is doubled once.
    expect(dec(dotStuff(enc("a\r\n.\r\n")))).toBe("a\r\n..\r\n.\r\n");
  });
  test("findBareNewline follows a CR across pieces", () => {
    expect(findBareNewline(enc("ab\r"), false)).toEqual({ endsWithCr: true });
    expect(findBareNewline(enc("\ncd\r\n"), true)).toEqual({ endsWithCr: false });
    expect(findBareNewline(enc("x"), true)).toEqual({ kind: "CR", endsWithCr: false });
    expect(findBareNewline(enc("a\nb"), false)).toEqual({ kind: "LF", endsWithCr: false });
    expect(findBareNewline(enc("\n"), false)).toEqual({ kind: "LF", endsWithCr: false });
  });
  test("DotUnstuffer removes transparency dots and stops at CRLF.CRLF, leaving pipelined bytes", () => {
    const wire = "..a\r\nb\r\n...c\r\n.\r\nQUIT\r\n";
    const { u, used, body } = unstuffWhole(wire);
    expect(u.done).toBe(true);
    expect(body).toBe(".a\r\nb\r\n..c\r\n");
    expect(wire.slice(used)).toBe("QUIT\r\n");
  });
  test("an empty message is a lone .CRLF", () => {
    expect(unstuffWhole(".\r\n").body).toBe("");
  });
  test("split at every byte gives the same result", () => {
    const wire = enc("Subject: x\r\n\r\n..dot\r\n.\r\r\n\r\nline\r\n.\r\nNOOP\r\n");
    const lenient = { maxBytes: 1 << 20, rejectBareNewlines: false };
    const whole = new DotUnstuffer(lenient);
    const usedWhole = whole.push(wire);
    const expected = dec(whole.take());
    for (let cut = 0; cut <= wire.length; cut++) {
      const u = new DotUnstuffer(lenient);
      let used = u.push(wire.subarray(0, cut));
      if (!u.done) used = cut + u.push(wire.subarray(cut));
      expect(u.done).toBe(true);
      expect(used).toBe(usedWhole);
      expect(dec(u.take())).toBe(expected);
    }
  });
  test.each([
    ["bare LF then dot", "a\n.\nb\r\n.\r\n", "LF"],
    ["LF.CRLF smuggling", "a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", "LF"],
    ["bare CR", "a\rb\r\n.\r\n", "CR"],
    ["CR.CR", "a\r.\r\n.\r\n", "CR"],
    [".CR without LF", ".\rx\r\n.\r\n", "CR"],
  ])("strict mode stops at a bare newline: %s", (_name, wire, kind) => {
    const { u } = unstuffWhole(wire);
    expect(u.done).toBe(false);
    expect(u.bareNewline).toBe(kind as "CR" | "LF");
  });
  test("lenient mode keeps bare newlines as content but only CRLF.CRLF ends the data", () => {
    const { u, body } = unstuffWhole("a\n.\nb\r\nx\n.\r\nc\r\n.\r\n", false);
    expect(u.done).toBe(true);
    expect(body).toBe("a\n.\nb\r\nx\n.\r\nc\r\n");
  });
  test("content beyond maxBytes sets overflow, keeps nothing, and still finds the end", () => {
    const { u, used } = unstuffWhole(`${"x".repeat(100)}\r\n.\r\nRSET\r\n`, true, 50);
    expect(u.done).toBe(true);
    expect(u.overflow).toBe(true);
    expect(u.bytes).toBe(102);
    expect(u.take().length).toBe(0);
    expect(used).toBe(105);
  });
  test("random bodies survive dotStuff then DotUnstuffer byte-exact (CRLF-normalized)", () => {
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    const alphabet = [".", "a", "\r\n", " ", "..", "\u00e9"];
    for (let n = 0; n < 300; n++) {
      let s = "";
      const len = Math.floor(rnd() * 40);
      for (let i = 0; i < len; i++) s += alphabet[Math.floor(rnd() * alphabet.length)];
      if (!s.endsWith("\r\n") && s.length > 0) s += "\r\n";
      const wire = dotStuff(enc(s));
      const u = new DotUnstuffer({ maxBytes: 1 << 20, rejectBareNewlines: true });
      expect(u.push(wire)).toBe(wire.length);
      expect(u.done).toBe(true);
      expect(dec(u.take())).toBe(s);
    }
  });
});
