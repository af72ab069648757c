import { expect, test } from "bun:test";
import { parseStsPolicy, parseStsRecord, stsMxMatches } from "../../src/tlspolicy/index.ts";

test("a _mta-sts TXT record gives its id; other records are discarded; two STSv1 records mean none", () => {
  expect(parseStsRecord(["v=STSv1; id=20160831085700Z;"])).toEqual({ id: "20160831085700Z" });
  expect(parseStsRecord(["v=STSv1;id=abc"])).toEqual({ id: "abc" });
  expect(parseStsRecord(["google-site-verification=x", "v=STSv1; id=a1; ext=val"])).toEqual({ id: "a1" });
  expect(parseStsRecord(["v=STSv1; id=a", "v=STSv1; id=b"])).toHaveProperty("error");
  expect(parseStsRecord(["v=spf1 -all"])).toHaveProperty("error");
  expect(parseStsRecord([])).toHaveProperty("error");
});

test("a malformed _mta-sts record is no policy: no id, bad id, bad field", () => {
  expect(parseStsRecord(["v=STSv1;"])).toEqual({ error: "no id field" });
  expect(parseStsRecord(["v=STSv1; id=has-dash"])).toHaveProperty("error");
  expect(parseStsRecord([`v=STSv1; id=${"a".repeat(33)}`])).toHaveProperty("error");
  expect(parseStsRecord(["v=STSv1; id=ok; =novalue"])).toHaveProperty("error");
  expect(parseStsRecord(["v=STSv2; id=ok"])).toHaveProperty("error");
  expect(parseStsRecord(["v=STSv1 id=ok"])).toHaveProperty("error");
});

test("a policy file: mode, max_age, mx patterns (lower case, trailing dot dropped), LF or CRLF", () => {
  const text =
    "version: STSv1\r\nmode: enforce\r\nmx: mail.Example.com\r\nmx: *.example.net.\r\nmax_age: 604800\r\n";
  expect(parseStsPolicy(text)).toEqual({
    mode: "enforce",
    mx: ["mail.example.com", "*.example.net"],
    maxAgeS: 604800,
    lines: [
      "version: STSv1",
      "mode: enforce",
      "mx: mail.Example.com",
      "mx: *.example.net.",
      "max_age: 604800",
    ],
  });
  expect(
    parseStsPolicy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400\nfuture_key: x\n"),
  ).toMatchObject({
    mode: "testing",
    maxAgeS: 86400,
  });
  expect(parseStsPolicy("version: STSv1\nmode: none\nmax_age: 86400")).toMatchObject({
    mode: "none",
    mx: [],
  });
});

test("a policy is refused, not guessed at: missing fields, bad values, over-long max_age", () => {
  const bad = [
    "mode: enforce\nmx: a.test\nmax_age: 1",
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1",
    "version: STSv1\nmode: enforce\nmax_age: 1",
    "version: STSv1\nmode: enforce\nmx: a.test",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601",
    "version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 1",
    "version: STSv1\nmode: enforce\nmx: mail.test\nmax_age: 1\nthis line has no colon",
    "<html>not a policy</html>",
    "",
  ];
  for (const t of bad) expect(parseStsPolicy(t)).toHaveProperty("error");
});

test("MX patterns: exact names, and a wildcard stands for exactly one leftmost label", () => {
  expect(stsMxMatches("mail.example.com", "MAIL.example.com.")).toBe(true);
  expect(stsMxMatches("mail.example.com", "mx.example.com")).toBe(false);
  expect(stsMxMatches("*.example.com", "mx1.example.com")).toBe(true);
  expect(stsMxMatches("*.example.com", "example.com")).toBe(false);
  expect(stsMxMatches("*.example.com", "a.b.example.com")).toBe(false);
  expect(stsMxMatches("*.example.com", "mx1.example.com.evil.test")).toBe(false);
  expect(stsMxMatches("*.example.com", "xexample.com")).toBe(false);
});
