import { describe, expect, test } from "bun:test";
import { parseCommand, parseEsmtpParams, xtextDecode, xtextEncode } from "../../src/smtp/index.ts";

describe("ESMTP parameters", () => {
  test("MAIL parameters: SIZE BODY SMTPUTF8 RET ENVID AUTH", () => {
    const r = parseEsmtpParams("size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=abc+2Bdef AUTH=<>", "MAIL");
    expect(r).toEqual({
      ok: true,
      params: {
        sizeBytes: 1000,
        body: "8BITMIME",
        smtputf8: true,
        ret: "HDRS",
        envId: "abc+def",
        auth: "<>",
      },
    });
  });
  test("RCPT parameters: NOTIFY and ORCPT (xtext-decoded)", () => {
    const r = parseEsmtpParams("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.com", "RCPT");
    expect(r).toEqual({
      ok: true,
      params: { notify: ["SUCCESS", "FAILURE"], orcpt: "rfc822;a+b@example.com" },
    });
  });
  test("unknown, misplaced or unoffered parameters give 555 5.5.4; bad values 501", () => {
    const codes = (t: string, c: "MAIL" | "RCPT") => {
      const r = parseEsmtpParams(t, c, { dsn: false, smtputf8: true, binarymime: false });
      return r.ok ? 250 : r.reply.code;
    };
    expect(codes("FOO=1", "MAIL")).toBe(555);
    expect(codes("NOTIFY=NEVER", "MAIL")).toBe(555);
    expect(codes("SIZE=10", "RCPT")).toBe(555);
    expect(codes("RET=FULL", "MAIL")).toBe(555);
    expect(codes("SIZE=abc", "MAIL")).toBe(501);
    expect(codes("SIZE=1 SIZE=2", "MAIL")).toBe(501);
    expect(codes("BODY=BINARYMIME", "MAIL")).toBe(501);
    expect(parseEsmtpParams("NOTIFY=NEVER,DELAY", "RCPT").ok).toBe(false);
    expect(parseEsmtpParams("ENVID=a+zz", "MAIL").ok).toBe(false);
  });
  test("xtext round-trips ASCII specials and UTF-8", () => {
    for (const s of ["plain", "a+b=c", "sp ace", "用户@例子", "\u0001\u007f"]) {
      const e = xtextEncode(s);
      expect(e).toMatch(/^[\x21-\x7e]*$/);
      expect(e).not.toContain("=");
      expect(xtextDecode(e)).toBe(s);
    }
    expect(xtextEncode("a+b")).toBe("a+2Bb");
  });
  test("parseCommand splits verb and argument", () => {
    expect(parseCommand("mail FROM:<a@b.c> SIZE=1  ")).toEqual({ verb: "MAIL", arg: "FROM:<a@b.c> SIZE=1" });
    expect(parseCommand("QUIT")).toEqual({ verb: "QUIT", arg: "" });
    expect(parseCommand("").verb).toBe("");
    expect(parseCommand("\u0000\u0001").verb).toBe("");
  });
});
