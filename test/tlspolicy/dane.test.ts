/** DANE matching (RFC 7672 §3) against certificates and digests made by openssl. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { TlsaRecord } from "../../src/dns/index.ts";
import { checkDane, isUsableTlsa, splitTlsa } from "../../src/tlspolicy/index.ts";
import { tempDir } from "../support/mta.ts";
import {
  createTestCa,
  type IssuedCert,
  selfIssuedFor,
  type TestCa,
  tlsaDigest,
  pemToDer,
} from "../support/testCa.ts";

const dir = tempDir("mta-dane-");
let root: TestCa;
let inter: TestCa;
let leaf: IssuedCert; // mx1.dane.test, issued by the intermediate
let expired: IssuedCert; // mx2.dane.test, expired in 2020, issued by the root
let other: IssuedCert;

const now = Date.now() + 60_000; // after every certificate below was issued
const der = pemToDer;
const rec = (usage: number, selector: number, matchingType: number, hex: string): TlsaRecord => ({
  usage,
  selector,
  matchingType,
  data: new Uint8Array(Buffer.from(hex, "hex")),
});

beforeAll(() => {
  root = createTestCa(dir.path);
  inter = root.intermediate("DANE test intermediate");
  leaf = inter.issue("mx1.dane.test");
  expired = root.issue("mx2.dane.test", { expired: true });
  other = root.issue("mx9.dane.test");
});
afterAll(() => dir[Symbol.dispose]());

test("DANE-EE(3) SPKI SHA-256 matches the server's key; the name and the dates do not matter", () => {
  const r = rec(3, 1, 1, tlsaDigest(expired.certPem, 1, 1, dir.path));
  expect(checkDane(der(expired.chainPem), [r], ["elsewhere.test"], now)).toMatchObject({
    ok: true,
    matched: expect.stringMatching(/^3 1 1 /),
  });
});

test("DANE-EE(3) full-certificate SHA-512 and exact match work too", () => {
  const sha512 = rec(3, 0, 2, tlsaDigest(leaf.certPem, 0, 2, dir.path));
  expect(checkDane(der(leaf.chainPem), [sha512], ["mx1.dane.test"], now).ok).toBe(true);
  const exact: TlsaRecord = { usage: 3, selector: 0, matchingType: 0, data: der(leaf.certPem)[0]! };
  expect(checkDane(der(leaf.chainPem), [exact], ["mx1.dane.test"], now).ok).toBe(true);
});

test("a certificate that matches no usable record is tlsa-invalid", () => {
  const r = rec(3, 1, 1, tlsaDigest(other.certPem, 1, 1, dir.path));
  expect(checkDane(der(leaf.chainPem), [r], ["mx1.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
});

test("DANE-TA(2) matches the intermediate the server presents, and the leaf must name the MX host", () => {
  const ta = rec(2, 1, 1, tlsaDigest(inter.certPem, 1, 1, dir.path));
  expect(checkDane(der(leaf.chainPem), [ta], ["mx1.dane.test", "dane.test"], now).ok).toBe(true);
  expect(checkDane(der(leaf.chainPem), [ta], ["mx7.dane.test", "dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "certificate-host-mismatch",
  });
  // The next-hop domain is a reference identifier too (RFC 7672 §3.2.2).
  const nexthop = inter.issue("dane.test");
  expect(checkDane(der(nexthop.chainPem), [ta], ["mx1.dane.test", "dane.test"], now)).toMatchObject({
    ok: true,
  });
});

test("DANE-TA(2) checks the path below the anchor: an expired leaf fails, a leaf the anchor did not sign fails", () => {
  const rootTa = rec(2, 0, 1, tlsaDigest(root.certPem, 0, 1, dir.path));
  // The expired leaf's chain as a server would present it, with the root included.
  const chain = [...der(expired.chainPem), ...der(root.certPem)];
  expect(checkDane(chain, [rootTa], ["mx2.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "certificate-expired",
  });
  // A chain that claims the intermediate but whose leaf was signed by someone else.
  const forged = [...der(other.certPem), ...der(inter.certPem)];
  const interTa = rec(2, 1, 1, tlsaDigest(inter.certPem, 1, 1, dir.path));
  expect(checkDane(forged, [interTa], ["mx9.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "validation-failure",
  });
  // A DANE-TA record never matches the leaf itself.
  const leafAsTa = rec(2, 1, 1, tlsaDigest(leaf.certPem, 1, 1, dir.path));
  expect(checkDane(der(leaf.chainPem), [leafAsTa], ["mx1.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
});

test("DANE-TA 2 1 0 (the anchor's full public key): a chain the server sends without its anchor still verifies", () => {
  const bareKey = rec(2, 1, 0, tlsaDigest(root.certPem, 1, 0, dir.path));
  // The leaf and the intermediate, no root: the intermediate is the topmost, signed by the key.
  expect(checkDane(der(leaf.chainPem), [bareKey], ["mx1.dane.test"], now)).toMatchObject({
    ok: true,
    matched: expect.stringMatching(/^2 1 0 /),
  });
  // A leaf the root signed directly, sent alone.
  const direct = root.issue("mx3.dane.test");
  expect(checkDane(der(direct.chainPem), [bareKey], ["mx3.dane.test"], now).ok).toBe(true);
  // The anchor's certificate in full (2 0 0) works the same way.
  const fullCert = rec(2, 0, 0, tlsaDigest(root.certPem, 0, 0, dir.path));
  expect(checkDane(der(leaf.chainPem), [fullCert], ["mx1.dane.test"], now).ok).toBe(true);
  // The rest of DANE-TA still applies: the name, the dates below the anchor, the signatures.
  expect(checkDane(der(leaf.chainPem), [bareKey], ["mx7.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "certificate-host-mismatch",
  });
  expect(checkDane(der(expired.chainPem), [bareKey], ["mx2.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "certificate-expired",
  });
  // A chain some other key signed matches nothing.
  const stranger = createTestCa(`${dir.path}/stranger`, "another root").issue("mx1.dane.test");
  expect(checkDane(der(stranger.chainPem), [bareKey], ["mx1.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
});

test("DANE-TA digests (2 x 1, 2 x 2) of an anchor the server leaves out cannot be verified", () => {
  for (const [selector, matchingType] of [
    [1, 1],
    [0, 1],
    [1, 2],
    [0, 2],
  ] as const) {
    const digest = rec(2, selector, matchingType, tlsaDigest(root.certPem, selector, matchingType, dir.path));
    expect(checkDane(der(leaf.chainPem), [digest], ["mx1.dane.test"], now)).toMatchObject({
      ok: false,
      resultType: "tlsa-invalid",
    });
    // The same record verifies once the server sends the anchor too.
    const withRoot = [...der(leaf.chainPem), ...der(root.certPem)];
    expect(checkDane(withRoot, [digest], ["mx1.dane.test"], now).ok).toBe(true);
  }
});

test("a self-issued leaf matched by a DANE-TA record is its own trust anchor; its name and dates are checked", () => {
  const self = selfIssuedFor(dir.path, "mx5.dane.test");
  for (const [selector, matchingType] of [
    [0, 1],
    [1, 1],
    [1, 2],
    [1, 0],
  ] as const) {
    const r = rec(2, selector, matchingType, tlsaDigest(self.certPem, selector, matchingType, dir.path));
    expect(checkDane(der(self.certPem), [r], ["mx5.dane.test"], now)).toMatchObject({ ok: true });
    expect(checkDane(der(self.certPem), [r], ["mx6.dane.test"], now)).toMatchObject({
      ok: false,
      resultType: "certificate-host-mismatch",
    });
    // After it expired (it is valid for 30 days).
    expect(checkDane(der(self.certPem), [r], ["mx5.dane.test"], now + 31 * 86_400_000)).toMatchObject({
      ok: false,
      resultType: "certificate-expired",
    });
  }
  // A leaf some CA issued is not an anchor, even if a DANE-TA record names it (see above).
});

test("usable records are DANE-TA/DANE-EE with a known selector, matching type and digest length", () => {
  const h32 = "ab".repeat(32);
  expect(isUsableTlsa(rec(3, 1, 1, h32))).toBe(true);
  expect(isUsableTlsa(rec(2, 0, 2, "ab".repeat(64)))).toBe(true);
  expect(isUsableTlsa(rec(1, 1, 1, h32))).toBe(false); // PKIX-EE: unusable in SMTP (RFC 7672 §3.1.3)
  expect(isUsableTlsa(rec(0, 1, 1, h32))).toBe(false); // PKIX-TA
  expect(isUsableTlsa(rec(3, 2, 1, h32))).toBe(false); // unknown selector
  expect(isUsableTlsa(rec(3, 1, 3, h32))).toBe(false); // unknown matching type
  expect(isUsableTlsa(rec(3, 1, 1, "ab".repeat(20)))).toBe(false); // a SHA-256 of the wrong length
  expect(isUsableTlsa(rec(3, 1, 0, ""))).toBe(false);
  const { usable, unusable } = splitTlsa([rec(3, 1, 1, h32), rec(1, 1, 1, h32)]);
  expect([usable.length, unusable.length]).toEqual([1, 1]);
});

test("an empty or unparsable chain is a validation failure, not a crash", () => {
  const r = rec(3, 1, 1, "ab".repeat(32));
  expect(checkDane([], [r], ["x.test"], now)).toMatchObject({ ok: false, resultType: "validation-failure" });
  expect(checkDane([new Uint8Array([1, 2, 3])], [r], ["x.test"], now)).toMatchObject({
    ok: false,
    resultType: "validation-failure",
  });
});

test("a full-value DANE-TA record whose data is no key or certificate matches nothing (no crash)", () => {
  const junk = rec(2, 1, 0, "30030a0102");
  expect(checkDane(der(leaf.chainPem), [junk], ["mx1.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
  const junkCert = rec(2, 0, 0, "ff".repeat(40));
  expect(checkDane(der(leaf.chainPem), [junkCert], ["mx1.dane.test"], now)).toMatchObject({
    ok: false,
    resultType: "tlsa-invalid",
  });
});
