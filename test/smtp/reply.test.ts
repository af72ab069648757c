import { describe, expect, test } from "bun:test";
import {
  classifyReply,
  formatReply,
  parseReplyLines,
  reply,
  replyText,
  SmtpError,
} from "../../src/smtp/index.ts";

describe("replies", () => {
  test("formatReply writes multi-line replies with - on all but the last line", () => {
    expect(formatReply(reply(250, undefined, "mx.test", "PIPELINING", "SIZE 10"))).toBe(
      "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
    );
  });
  test("formatReply repeats the enhanced code on every line and strips CR/LF from texts", () => {
    expect(formatReply(reply(550, "5.1.1", "No such\r\nuser", "bye"))).toBe(
      "550-5.1.1 No such user\r\n550 5.1.1 bye\r\n",
    );
  });
  test("parseReplyLines takes the enhanced code from the first line when its class matches", () => {
    expect(parseReplyLines(["250-2.1.0 first", "250 2.1.0 second"])).toEqual({
      code: 250,
      enhanced: "2.1.0",
      lines: ["first", "second"],
    });
    expect(parseReplyLines(["450 5.1.1 mismatched"])).toEqual({ code: 450, lines: ["5.1.1 mismatched"] });
    expect(parseReplyLines(["garbage"]).code).toBe(0);
  });
  test("formatReply and parseReplyLines round-trip", () => {
    const r = reply(451, "4.3.0", "a", "b", "c");
    const lines = formatReply(r).split("\r\n").slice(0, -1);
    expect(parseReplyLines(lines)).toEqual(r);
  });
  test("classifyReply: 2xx/3xx success, 4xx transient, 5xx permanent, unknown transient", () => {
    expect(classifyReply(reply(250, undefined, "ok"))).toBe("success");
    expect(classifyReply(reply(354, undefined, "go"))).toBe("success");
    expect(classifyReply(reply(421, "4.7.0", "later"))).toBe("transient");
    expect(classifyReply(reply(554, "5.7.1", "no"))).toBe("permanent");
    expect(classifyReply({ code: 0, lines: [] })).toBe("transient");
    expect(classifyReply({ code: 999, lines: [] })).toBe("transient");
  });
  test("SmtpError keeps the peer's bland reply apart from the logged reason", () => {
    const e = new SmtpError(reply(451, "4.3.0", "Local error"), "disk on fire");
    expect(e.reply.code).toBe(451);
    expect(e.reason).toBe("disk on fire");
    expect(replyText(e.reply)).toBe("451 4.3.0 Local error");
  });
});
