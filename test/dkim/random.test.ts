import { afterAll, beforeAll, expect, test } from "bun:test";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { bodyHash } from "../../src/dkim/_canon.ts";
import { type DkimCanonicalization, DkimSigner, generateKey } from "../../src/dkim/index.ts";
import { startTxtServer, type TxtServer } from "./_dns.ts";

// Random bodies built from the pieces that canonicalization treats specially, signed by us and
// verified by mailauth: any disagreement in the line-run bookkeeping of the relaxed body shows here.
// Bodies are what SMTP can carry: CRLF line ends only, ending in CRLF (RFC 5321 §2.3.8, §4.1.1.4).
// Outside that, mailauth itself departs from RFC 6376: it keeps trailing WSP on a last line with no
// CRLF under relaxed, and treats a bare LF as plain data under simple.
const PIECES = ["a", "bc", " ", "  ", "\t", " \t ", "\r\n", "\r\n", "\r\n\r\n", "x".repeat(40), "é"];

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

let dns: TxtServer;
const key = generateKey("ed25519");
beforeAll(async () => {
  dns = await startTxtServer();
  dns.set("r._domainkey.example.com", key.dnsTxt);
});
afterAll(async () => {
  await dns.close();
});

for (const canonicalization of ["relaxed/relaxed", "simple/simple"] as DkimCanonicalization[]) {
  test(`150 random bodies all verify (${canonicalization})`, async () => {
    const signer = DkimSigner.create({
      keys: [{ domain: "example.com", selector: "r", privateKeyPem: key.privateKeyPem }],
      canonicalization,
    });
    const random = rng(canonicalization === "simple/simple" ? 7 : 42);
    const failures: string[] = [];
    for (let i = 0; i < 150; i++) {
      let body = "";
      const n = Math.floor(random() * 60);
      for (let j = 0; j < n; j++) body += PIECES[Math.floor(random() * PIECES.length)];
      if (body !== "" && !body.endsWith("\r\n")) body += "\r\n";
      const message = Buffer.from(`From: a@example.com\r\nSubject: r${i}\r\n\r\n${body}`, "utf8");
      const signed = signer.sign(new Uint8Array(message), 1_700_000_000_000);
      const res = await dkimVerify(Buffer.from(signed), {
        resolver: dns.resolver as never,
        curTime: new Date(1_700_000_000_000),
      } as never);
      const result = res.results[0]?.status.result;
      if (result !== "pass") failures.push(`${JSON.stringify(body)}: ${result}`);
    }
    expect(failures).toEqual([]);
  });
}

test("body hashes equal mailauth's for every CRLF-terminated body of up to 6 pieces of a, SP, HTAB, CRLF", () => {
  const { RelaxedHash } = require("mailauth/lib/dkim/body/relaxed.js") as {
    RelaxedHash: new (alg: string) => { update(b: Buffer): void; digest(e: string): string };
  };
  const { SimpleHash } = require("mailauth/lib/dkim/body/simple.js") as {
    SimpleHash: new (alg: string) => { update(b: Buffer): void; digest(e: string): string };
  };
  const alphabet = ["a", " ", "\t", "\r\n"];
  const bodies: string[] = [""];
  let level = [""];
  for (let len = 1; len <= 6; len++) {
    level = level.flatMap((b) => alphabet.map((p) => b + p));
    for (const b of level) bodies.push(b.endsWith("\r\n") ? b : `${b}\r\n`);
  }
  const mismatches: string[] = [];
  for (const body of bodies) {
    const bytes = Buffer.from(body);
    for (const [canon, Hash] of [
      ["relaxed", RelaxedHash],
      ["simple", SimpleHash],
    ] as const) {
      const theirs = new Hash("sha256");
      theirs.update(bytes);
      if (bodyHash(bytes, canon) !== theirs.digest("base64"))
        mismatches.push(`${canon} ${JSON.stringify(body)}`);
    }
  }
  expect(bodies.length).toBe(5461);
  expect(mismatches).toEqual([]);
});
