import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  createPublicKey,
  verify as cryptoVerify,
  sign as cryptoSign,
  generateKeyPairSync,
} from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import {
  type DkimCanonicalization,
  DkimKeyError,
  DkimSigner,
  generateKey,
  readKeyFile,
} from "../../src/dkim/index.ts";
import { startTxtServer, type TxtServer } from "./_dns.ts";

const T0_MS = 1_700_000_000_000;
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => Buffer.from(b).toString("latin1");

let dns: TxtServer;
const rsa = generateKey("rsa", 2048);
const ed = generateKey("ed25519");
const rsaOther = generateKey("rsa", 2048);

beforeAll(async () => {
  dns = await startTxtServer();
  dns.set("rsa1._domainkey.example.com", rsa.dnsTxt);
  dns.set("ed1._domainkey.example.com", ed.dnsTxt);
  dns.set("other._domainkey.brand.test", rsaOther.dnsTxt);
});
afterAll(async () => {
  await dns.close();
});

interface Verdict {
  domain: string;
  selector: string | undefined;
  result: string;
  comment: string | undefined;
}

async function verify(message: Uint8Array, nowMs = T0_MS): Promise<Verdict[]> {
  const res = await dkimVerify(Buffer.from(message), {
    resolver: dns.resolver as never,
    curTime: new Date(nowMs),
  } as never);
  return res.results.map((r) => ({
    domain: r.signingDomain,
    selector: r.selector,
    result: r.status.result,
    comment: (r.status as { comment?: string }).comment,
  }));
}

const BASE_HEADERS =
  "From: Joe SixPack <joe@example.com>\r\n" +
  "To: Suzie Q <suzie@shopping.example.net>\r\n" +
  "Subject: Is dinner ready?\r\n" +
  "Date: Fri, 11 Jul 2003 21:00:37 -0700\r\n" +
  "Message-ID: <20030712040037.46341.5F8J@example.com>\r\n";
const BASE_BODY = "Hi.\r\n\r\nWe lost the game. Are you hungry yet?\r\n\r\nJoe.\r\n";

function signer(
  canonicalization?: DkimCanonicalization,
  extra: Partial<Parameters<typeof DkimSigner.create>[0]> = {},
) {
  return DkimSigner.create({
    keys: [{ domain: "example.com", selector: "rsa1", privateKeyPem: rsa.privateKeyPem }],
    canonicalization,
    ...extra,
  });
}

describe("signatures that mailauth verifies through a loopback DNS server", () => {
  test("rsa-sha256 relaxed/relaxed passes", async () => {
    const signed = signer().sign(enc(`${BASE_HEADERS}\r\n${BASE_BODY}`), T0_MS);
    expect(dec(signed)).toStartWith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;");
    expect(await verify(signed)).toEqual([
      { domain: "example.com", selector: "rsa1", result: "pass", comment: undefined },
    ]);
  });

  test("ed25519-sha256 passes (RFC 8463)", async () => {
    const s = DkimSigner.create({
      keys: [{ domain: "example.com", selector: "ed1", privateKeyPem: ed.privateKeyPem }],
    });
    const signed = s.sign(enc(`${BASE_HEADERS}\r\n${BASE_BODY}`), T0_MS);
    expect(dec(signed)).toContain("a=ed25519-sha256");
    expect((await verify(signed)).map((v) => v.result)).toEqual(["pass"]);
  });

  test("two keys for one domain give dual signatures that both pass", async () => {
    const s = DkimSigner.create({
      keys: [
        { domain: "example.com", selector: "rsa1", privateKeyPem: rsa.privateKeyPem },
        {
          domain: "example.com",
          selector: "ed1",
          privateKeyPem: ed.privateKeyPem,
          algorithm: "ed25519-sha256",
        },
      ],
    });
    const signed = s.sign(enc(`${BASE_HEADERS}\r\n${BASE_BODY}`), T0_MS);
    expect(dec(signed).match(/^DKIM-Signature:/gm)?.length).toBe(2);
    const verdicts = await verify(signed);
    expect(verdicts.map((v) => `${v.selector}:${v.result}`).sort()).toEqual(["ed1:pass", "rsa1:pass"]);
  });

  test("a changed body or a changed signed header fails", async () => {
    const signed = dec(signer().sign(enc(`${BASE_HEADERS}\r\n${BASE_BODY}`), T0_MS));
    const body = await verify(enc(signed.replace("hungry", "thirsty")));
    expect(body.map((v) => `${v.result}:${v.comment}`)).toEqual(["neutral:body hash did not verify"]);
    const header = await verify(enc(signed.replace("Is dinner ready?", "Is lunch ready?")));
    expect(header.map((v) => v.result)).toEqual(["fail"]);
  });

  test("x= expires the signature after expireAfterMs", async () => {
    const signed = signer(undefined, { expireAfterMs: 3_600_000 }).sign(
      enc(`${BASE_HEADERS}\r\n${BASE_BODY}`),
      T0_MS,
    );
    const t = T0_MS / 1000;
    expect(dec(signed)).toContain(`t=${t}; x=${t + 3600}`);
    expect((await verify(signed, T0_MS + 60_000)).map((v) => v.result)).toEqual(["pass"]);
    expect((await verify(signed, T0_MS + 2 * 3_600_000)).map((v) => `${v.result}:${v.comment}`)).toEqual([
      "neutral:expired",
    ]);
  });

  test("oversigned Subject: a Subject added later breaks the signature; without oversigning it does not", async () => {
    const message = enc(`${BASE_HEADERS}\r\n${BASE_BODY}`);
    const addSubject = (m: Uint8Array) =>
      enc(dec(m).replace("From: Joe", "Subject: FREE MONEY\r\nFrom: Joe"));
    const over = signer(undefined, { oversign: ["From", "Subject", "To"] }).sign(message, T0_MS);
    expect(dec(over)).toMatch(/h=From:From:Subject:Subject:Date:Message-ID:To:To/);
    expect((await verify(over)).map((v) => v.result)).toEqual(["pass"]);
    expect((await verify(addSubject(over))).map((v) => v.result)).toEqual(["fail"]);
    const plain = signer().sign(message, T0_MS);
    expect((await verify(addSubject(plain))).map((v) => v.result)).toEqual(["pass"]);
  });
});

// RFC 6376 §3.4 edge cases, each signed with every canonicalization and checked by mailauth.
const CANONS: DkimCanonicalization[] = [
  "relaxed/relaxed",
  "relaxed/simple",
  "simple/simple",
  "simple/relaxed",
];
const VECTORS: Record<string, string> = {
  "trailing whitespace on lines": `${BASE_HEADERS}\r\nHi. \t \r\nWe  lost\t\tthe game.\t\r\n`,
  "empty body": `${BASE_HEADERS}\r\n`,
  "no body and no separator line": BASE_HEADERS,
  "body of only empty lines": `${BASE_HEADERS}\r\n\r\n\r\n\r\n`,
  "trailing empty lines": `${BASE_HEADERS}\r\n${BASE_BODY}\r\n\r\n \r\n\t\r\n`,
  "no CRLF at the end": `${BASE_HEADERS}\r\nHi.\r\n\r\nJoe.`,
  "long lines": `${BASE_HEADERS}\r\n${"x".repeat(998)}\r\n${"word ".repeat(3000)}\r\n${"y  ".repeat(5000)}\r\n`,
  "folded headers": `From: "Joe,\r\n SixPack" <joe@example.com>\r\nSubject: a subject\r\n  that is\r\n\tfolded   twice  \r\nTo: a@b.test,\r\n c@d.test\r\n\r\n${BASE_BODY}`,
  "header names in odd case and spacing": `FROM :joe@example.com\r\nsubject:   spaced\t \r\nTO: x@y.test\r\n\r\nbody\r\n`,
  "8-bit header and body": `From: =?utf-8?q?J=C3=B6?= <joe@example.com>\r\nSubject: caf\u00c3\u00a9\r\n\r\ncaf\u00c3\u00a9 \u00ff\r\n`,
  "bare LF line ends": `${BASE_HEADERS.replaceAll("\r\n", "\n")}\nHi. \nJoe.\n\n`,
};

describe("canonicalization edge cases verify under every canonicalization", () => {
  for (const [name, text] of Object.entries(VECTORS)) {
    for (const canon of CANONS) {
      test(`${name} (${canon})`, async () => {
        const message = new Uint8Array(Buffer.from(text, "latin1"));
        const signed = signer(canon).sign(message, T0_MS);
        expect(dec(signed)).toContain(`c=${canon};`);
        // mailauth finds the end of the header only at an empty line; with no body, adding that line
        // leaves every canonical form unchanged (the body is empty either way).
        const shown = text.includes("\r\n\r\n") || text.includes("\n\n") ? signed : enc(`${dec(signed)}\r\n`);
        expect((await verify(shown)).map((v) => `${v.result}:${v.comment ?? ""}`)).toEqual(["pass:"]);
      });
    }
  }
});

describe("body hashes against known values", () => {
  const bh = (text: string, canon: DkimCanonicalization) =>
    /bh=([^;]+);/.exec(dec(signer(canon).sign(enc(text), T0_MS)))?.[1];
  test("RFC 6376 Appendix A body hashes to 2jUSOH9...", () => {
    for (const canon of CANONS)
      expect(bh(`${BASE_HEADERS}\r\n${BASE_BODY}`, canon)).toBe(
        "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=",
      );
  });
  test("relaxed ignores trailing whitespace, WSP runs and trailing empty lines; simple does not", () => {
    const noisy = `${BASE_HEADERS}\r\nHi.  \r\n\r\nWe  lost the\tgame. Are you hungry yet?\t\r\n\r\nJoe.\r\n\r\n\r\n`;
    expect(bh(noisy, "relaxed/relaxed")).toBe("2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    expect(bh(noisy, "relaxed/simple")).not.toBe("2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    expect(bh(`${BASE_HEADERS}\r\n${BASE_BODY}\r\n\r\n`, "simple/simple")).toBe(
      "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=",
    );
  });
  test("an empty body hashes as CRLF under simple and as nothing under relaxed (RFC 6376 §3.4.3, §3.4.4)", () => {
    expect(bh(`${BASE_HEADERS}\r\n`, "simple/simple")).toBe("frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    expect(bh(`${BASE_HEADERS}\r\n`, "relaxed/relaxed")).toBe("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
  });
});

describe("which domain signs", () => {
  test("a From: in a subdomain is signed by the parent domain's key", async () => {
    const signed = signer().sign(
      enc(`${BASE_HEADERS.replace("joe@example.com", "joe@news.mail.example.com")}\r\nhi\r\n`),
      T0_MS,
    );
    expect((await verify(signed)).map((v) => `${v.domain}:${v.result}`)).toEqual(["example.com:pass"]);
  });

  test("a message with no matching key is returned as the same bytes", () => {
    const message = enc(`${BASE_HEADERS.replace("joe@example.com", "joe@elsewhere.test")}\r\nhi\r\n`);
    expect(signer().sign(message, T0_MS)).toBe(message);
    const noFrom = enc("To: a@b.test\r\n\r\nhi\r\n");
    expect(signer().sign(noFrom, T0_MS)).toBe(noFrom);
    // "example.com" must not match "badexample.com", and a bare TLD key never matches.
    const lookalike = enc(`${BASE_HEADERS.replace("joe@example.com", "joe@badexample.com")}\r\nhi\r\n`);
    expect(signer().sign(lookalike, T0_MS)).toBe(lookalike);
  });

  test("two From: fields are left unsigned", () => {
    const message = enc(`From: a@example.com\r\n${BASE_HEADERS}\r\nhi\r\n`);
    expect(signer().sign(message, T0_MS)).toBe(message);
  });

  test("domainMap sends a From-domain to another signing domain", async () => {
    const s = DkimSigner.create({
      keys: [
        { domain: "example.com", selector: "rsa1", privateKeyPem: rsa.privateKeyPem },
        { domain: "brand.test", selector: "other", privateKeyPem: rsaOther.privateKeyPem },
      ],
      domainMap: { "customer.test": "brand.test" },
    });
    const signed = s.sign(
      enc(`${BASE_HEADERS.replace("joe@example.com", "joe@shop.customer.test")}\r\nhi\r\n`),
      T0_MS,
    );
    expect((await verify(signed)).map((v) => `${v.domain}:${v.result}`)).toEqual(["brand.test:pass"]);
  });

  test("an '@' inside a quoted display name or comment does not pick the domain", async () => {
    const from = `From: "ceo@elsewhere.test" (really@other.test) <joe@example.com>\r\n`;
    const signed = signer().sign(enc(`${from}Subject: x\r\n\r\nhi\r\n`), T0_MS);
    expect((await verify(signed)).map((v) => `${v.domain}:${v.result}`)).toEqual(["example.com:pass"]);
  });
});

describe("keys", () => {
  test("an RSA key under 2048 bits is refused with a clear message", () => {
    const small = generateKeyPairSync("rsa", { modulusLength: 1024 })
      .privateKey.export({ type: "pkcs8", format: "pem" })
      .toString();
    expect(() =>
      DkimSigner.create({ keys: [{ domain: "example.com", selector: "s", privateKeyPem: small }] }),
    ).toThrow(
      new DkimKeyError(
        "DKIM key s._domainkey.example.com: RSA key has 1024 bits, at least 2048 are required",
      ),
    );
  });

  test("a malformed PEM is a DkimKeyError naming the key", () => {
    let caught: unknown;
    try {
      DkimSigner.create({
        keys: [
          { domain: "example.com", selector: "s", privateKeyPem: "-----BEGIN PRIVATE KEY-----\nnope\n" },
        ],
      });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(DkimKeyError);
    expect((caught as DkimKeyError).code).toBe("config");
    expect((caught as Error).message).toStartWith(
      "DKIM key s._domainkey.example.com: not a readable PEM private key",
    );
  });

  test("a declared algorithm that does not match the key is refused", () => {
    expect(() =>
      DkimSigner.create({
        keys: [
          { domain: "example.com", selector: "s", privateKeyPem: ed.privateKeyPem, algorithm: "rsa-sha256" },
        ],
      }),
    ).toThrow("algorithm rsa-sha256 does not match the ed25519-sha256 key");
  });

  test("an unreadable key file is a DkimKeyError naming the path", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dkim-"));
    try {
      const file = path.join(dir, "missing.pem");
      expect(() => readKeyFile(file)).toThrow(`DKIM key file ${file}: cannot be read`);
      fs.writeFileSync(file, ed.privateKeyPem);
      expect(readKeyFile(file)).toBe(ed.privateKeyPem);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("generated keys publish the public key in p=: SPKI for RSA, 32 raw bytes for Ed25519", () => {
    expect(rsa.dnsTxt).toMatch(/^v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+$/);
    const rsaP = rsa.dnsTxt.split("p=")[1]!;
    expect(
      createPublicKey({ key: Buffer.from(rsaP, "base64"), format: "der", type: "spki" }).asymmetricKeyDetails
        ?.modulusLength,
    ).toBe(2048);
    const edP = Buffer.from(ed.dnsTxt.split("p=")[1]!, "base64");
    expect(ed.dnsTxt).toStartWith("v=DKIM1; k=ed25519; p=");
    expect(edP.length).toBe(32);
    // The raw key verifies an Ed25519 signature made with the private key.
    const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), edP]);
    const sig = cryptoSign(null, Buffer.from("x"), ed.privateKeyPem);
    expect(cryptoVerify(null, Buffer.from("x"), { key: spki, format: "der", type: "spki" }, sig)).toBe(true);
  });
});
