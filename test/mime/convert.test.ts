import { describe, expect, test } from "bun:test";
import { spawnSync } from "bun";
import { join } from "node:path";
import {
  MAX_LINE_OCTETS,
  prepareForStorage,
  prepareForTransport,
  scanContent,
} from "../../src/mime/index.ts";

const PY = "/usr/bin/python3";
const LEAVES = join(import.meta.dir, "_leaves.py");

const bytes = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const utf8 = (s: string) => Buffer.from(s, "utf8").toString("latin1");
const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");

interface Leaves {
  leaves: { type: string; payload: string }[];
  headers: Record<string, string>;
}

/** How Python's email package (a third-party MIME reader) decodes the message. */
function pyLeaves(m: Uint8Array): Leaves {
  const r = spawnSync([PY, LEAVES], { stdin: Buffer.from(m) });
  if (r.exitCode !== 0) throw new Error(r.stderr.toString());
  const out = JSON.parse(r.stdout.toString()) as Leaves;
  // Text is compared line by line (a decoder may give LF or CRLF for a hard line break).
  for (const l of out.leaves)
    if (l.type.startsWith("text/"))
      l.payload = Buffer.from(l.payload, "base64")
        .toString("latin1")
        .replace(/\r\n/g, "\n")
        .replace(/\n$/, "");
  return out;
}

function longestLine(m: Uint8Array): number {
  return Math.max(
    ...text(m)
      .split("\r\n")
      .map((l) => l.length),
  );
}

function expectFits(m: Uint8Array, sevenBit: boolean): void {
  expect(longestLine(m)).toBeLessThanOrEqual(MAX_LINE_OCTETS);
  const s = scanContent(m);
  expect(s.bareNewline).toBe(false);
  if (sevenBit) expect(s.eightBit).toBe(false);
}

const LONG = "x".repeat(5000);
const HTML = `<html><body>${Array.from({ length: 3000 }, (_, i) => `<a href="https://e.test/${i}">${i}</a>`).join("")}</body></html>`;

describe("prepareForStorage", () => {
  test("a message that fits is returned as the very same bytes", () => {
    const m = bytes("From: a@b.test\r\nSubject: hi\r\n\r\nshort line\r\n");
    const p = prepareForStorage(m, { binary: false });
    expect(p.ok && p.message).toBe(m);
    expect(p.ok && p.changed).toBe(false);
  });

  test("a plain message with a 5,000-octet line becomes quoted-printable MIME that decodes to the same text", () => {
    const m = bytes(`From: a@b.test\r\nSubject: long\r\n\r\nfirst\r\n${LONG}\r\nlast\r\n`);
    const p = prepareForStorage(m, { binary: false });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, false);
    expect(text(p.message)).toContain("MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n");
    expect(pyLeaves(p.message)).toEqual(pyLeaves(m));
  });

  test("in a multipart message only the part with long lines is re-encoded; an attachment with long base64 lines is re-wrapped", () => {
    const pdf = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256)).toString("base64");
    const m = bytes(
      [
        "From: a@b.test",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b1"',
        "",
        "preamble",
        "--b1",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "short text",
        "--b1",
        'Content-Type: multipart/alternative; boundary="b2"',
        "",
        "--b2",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        utf8(`${HTML} ünïcödé`),
        "--b2--",
        "--b1",
        "Content-Type: application/pdf",
        "Content-Transfer-Encoding: base64",
        "",
        pdf,
        "--b1--",
        "epilogue",
        "",
      ].join("\r\n"),
    );
    const p = prepareForStorage(m, { binary: false });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, false);
    const out = text(p.message);
    expect(out).toContain(
      "preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nshort text\r\n--b1",
    );
    expect(out).toContain(
      "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
    );
    expect(pyLeaves(p.message)).toEqual(pyLeaves(m));
  });

  test("a long header line is folded at whitespace; the unfolded value is unchanged", () => {
    const refs = Array.from({ length: 100 }, (_, i) => `<id${i}.${"r".repeat(20)}@host.test>`).join(" ");
    const m = bytes(`From: a@b.test\r\nReferences: ${refs}\r\nSubject: s\r\n\r\nbody\r\n`);
    const p = prepareForStorage(m, { binary: false });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, false);
    expect(text(p.message).endsWith("Subject: s\r\n\r\nbody\r\n")).toBe(true);
    expect(pyLeaves(p.message).headers.references).toBe(refs);
  });

  test("an address list or msg-id list without whitespace is folded after a comma or between ids; the addresses are the same", () => {
    const to = Array.from({ length: 80 }, (_, i) => `user${i}@d${i}.example`).join(",");
    const refs = Array.from({ length: 60 }, (_, i) => `<id${i}.${"r".repeat(20)}@h.test>`).join("");
    const m = bytes(`From: a@b.test\r\nTo: ${to}\r\nReferences: ${refs}\r\n\r\nbody\r\n`);
    const p = prepareForStorage(m, { binary: false });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, false);
    const r = spawnSync(
      [
        PY,
        "-c",
        "import sys,email,json; from email.utils import getaddresses; m=email.message_from_bytes(sys.stdin.buffer.read()); print(json.dumps([a for _, a in getaddresses(m.get_all('To'))]+[''.join(m['References'].split())]))",
      ],
      { stdin: Buffer.from(p.message) },
    );
    expect(JSON.parse(r.stdout.toString())).toEqual([...to.split(","), refs]);
  });

  test("a header line that cannot be folded, NUL, and re-encoding a DKIM-signed message are refused", () => {
    const noSpace = prepareForStorage(bytes(`X-Long: ${"y".repeat(1200)}\r\n\r\nb\r\n`), { binary: false });
    expect(noSpace.ok || noSpace.problem).toBe("unfoldable-header");
    const nul = prepareForStorage(bytes("Subject: n\r\n\r\na\x00b\r\n"), { binary: false });
    expect(nul.ok || nul.problem).toBe("nul");
    const signed = prepareForStorage(
      bytes(`DKIM-Signature: v=1; d=b.test\r\nFrom: a@b.test\r\n\r\n${LONG}\r\n`),
      {
        binary: false,
      },
    );
    expect(signed.ok || signed.problem).toBe("signed");
  });

  test("bare CR and bare LF become CRLF (also in a signed message: that is not a re-encoding)", () => {
    const p = prepareForStorage(bytes("Subject: b\n\nline\rnext\r.\rdot\n"), { binary: false });
    if (!p.ok) throw new Error(p.reason);
    expect(text(p.message)).toBe("Subject: b\r\n\r\nline\r\nnext\r\n.\r\ndot\r\n");
  });

  test("BINARYMIME content is left exactly as it is, NUL and bare CR included", () => {
    const m = bytes(`Subject: bin\r\n\r\n\x00\r\x01\n${LONG}`);
    const p = prepareForStorage(m, { binary: true });
    expect(p.ok && p.message).toBe(m);
  });
});

describe("prepareForTransport", () => {
  test("8-bit text for a 7-bit next hop becomes quoted-printable; headers and the decoded content are the same", () => {
    const m = bytes(
      utf8(
        "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n.\r\n用户\r\n",
      ),
    );
    const p = prepareForTransport(m, { sevenBit: true });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, true);
    expect(text(p.message)).toContain("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe");
    expect(pyLeaves(p.message)).toEqual(pyLeaves(m));
  });

  test("a non-MIME 8-bit message gets MIME headers with the charset it has", () => {
    const m = bytes(utf8("Subject: x\r\n\r\nÄrger\r\n"));
    const p = prepareForTransport(m, { sevenBit: true });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, true);
    expect(text(p.message)).toContain("Content-Type: text/plain; charset=utf-8");
    expect(pyLeaves(p.message)).toEqual(pyLeaves(m));
  });

  test("an 8-bit attachment becomes base64; a nested message/rfc822 is converted inside and marked 7bit", () => {
    const m = bytes(
      [
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="x"',
        "",
        "--x",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: 8bit",
        "",
        "\xff\xfe\x80 binary-ish",
        "--x",
        "Content-Type: message/rfc822",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Subject: inner",
        "Content-Type: text/plain; charset=iso-8859-1",
        "",
        "caf\xe9",
        "--x--",
        "",
      ].join("\r\n"),
    );
    const p = prepareForTransport(m, { sevenBit: true });
    if (!p.ok) throw new Error(p.reason);
    expectFits(p.message, true);
    const out = text(p.message);
    expect(out).toContain("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64");
    expect(out).toContain("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit");
    expect(out).toContain("caf=E9");
    expect(pyLeaves(p.message)).toEqual(pyLeaves(m));
  });

  test("8-bit header fields and signed messages cannot be converted to 7-bit", () => {
    const header = prepareForTransport(bytes(utf8("Subject: Grüße\r\n\r\nok\r\n")), { sevenBit: true });
    expect(header.ok || header.problem).toBe("eight-bit-header");
    const signed = prepareForTransport(bytes(utf8("DKIM-Signature: v=1\r\n\r\nGrüße\r\n")), {
      sevenBit: true,
    });
    expect(signed.ok || signed.problem).toBe("signed");
    // The same signed message goes as it is to a next hop with 8BITMIME.
    const m = bytes(utf8("DKIM-Signature: v=1\r\n\r\nGrüße\r\n"));
    const as8 = prepareForTransport(m, { sevenBit: false });
    expect(as8.ok && as8.message).toBe(m);
  });

  test("random multipart messages keep their decoded content through both conversions", () => {
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const line = () => {
      const len = [10, 80, 997, 998, 999, 1500, 20000][rnd(7)]!;
      let s = "";
      for (let i = 0; i < len; i++) {
        const c = rnd(20) === 0 ? 0x80 + rnd(128) : 0x20 + rnd(95);
        s += String.fromCharCode(c);
      }
      return s;
    };
    for (let round = 0; round < 8; round++) {
      const parts: string[] = [];
      const n = 1 + rnd(3);
      for (let i = 0; i < n; i++) {
        const type = ["text/plain", "text/html", "application/octet-stream"][rnd(3)]!;
        const cte = ["8bit", "7bit", ""][rnd(3)]!;
        const body = Array.from({ length: 1 + rnd(4) }, line).join("\r\n");
        parts.push(
          `--B\r\nContent-Type: ${type}; charset=iso-8859-1\r\n${cte ? `Content-Transfer-Encoding: ${cte}\r\n` : ""}\r\n${body}`,
        );
      }
      const m = bytes(
        `MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n${parts.join("\r\n")}\r\n--B--\r\n`,
      );
      const stored = prepareForStorage(m, { binary: false });
      if (!stored.ok) throw new Error(stored.reason);
      expectFits(stored.message, false);
      const sent = prepareForTransport(stored.message, { sevenBit: true });
      if (!sent.ok) throw new Error(sent.reason);
      expectFits(sent.message, true);
      const want = pyLeaves(m);
      expect(pyLeaves(stored.message)).toEqual(want);
      expect(pyLeaves(sent.message)).toEqual(want);
    }
  }, 60_000);
});
