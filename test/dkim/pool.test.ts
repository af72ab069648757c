import { afterAll, beforeAll, expect, test } from "bun:test";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { DkimKeyError, DkimSignerPool, generateKey } from "../../src/dkim/index.ts";
import { startTxtServer, type TxtServer } from "./_dns.ts";

const rsa = generateKey("rsa", 2048);
const ed = generateKey("ed25519");
const KEYS = [
  { domain: "example.com", selector: "rsa1", privateKeyPem: rsa.privateKeyPem },
  { domain: "example.com", selector: "ed1", privateKeyPem: ed.privateKeyPem },
];
const enc = (s: string) => new TextEncoder().encode(s);
const T0_MS = 1_700_000_000_000;

let dns: TxtServer;
beforeAll(async () => {
  dns = await startTxtServer();
  dns.set("rsa1._domainkey.example.com", rsa.dnsTxt);
  dns.set("ed1._domainkey.example.com", ed.dnsTxt);
});
afterAll(() => dns.close());

function message(i: number, from = "news@example.com"): Uint8Array {
  return enc(`From: <${from}>\r\nTo: <u${i}@example.net>\r\nSubject: message ${i}\r\n\r\nbody ${i}\r\n`);
}

test("workers give the same bytes as signing on the calling thread, and mailauth verifies them", async () => {
  const pool = DkimSignerPool.create({ keys: KEYS }, { threads: 2 });
  try {
    expect(await pool.started()).toBe(2);
    const inputs = Array.from({ length: 40 }, (_, i) => message(i));
    const signed = await Promise.all(inputs.map((m) => pool.sign(m, T0_MS)));
    for (const [i, m] of inputs.entries()) expect(signed[i]).toEqual(pool.signer.sign(m, T0_MS));
    const res = await dkimVerify(Buffer.from(signed[7]!), {
      resolver: dns.resolver as never,
      curTime: new Date(T0_MS),
    } as never);
    expect(res.results.map((r) => [r.selector, r.status.result])).toEqual([
      ["rsa1", "pass"],
      ["ed1", "pass"],
    ]);
  } finally {
    pool.close();
  }
});

test("a message that no key signs comes back as the same bytes without a thread hop", async () => {
  const pool = DkimSignerPool.create({ keys: KEYS }, { threads: 1 });
  try {
    await pool.started();
    const m = message(1, "someone@other.test");
    const out = pool.sign(m, T0_MS);
    expect(out).toBe(m); // synchronous, the same object
  } finally {
    pool.close();
  }
});

test("a bad key throws DkimKeyError synchronously, before any thread starts", () => {
  expect(() =>
    DkimSignerPool.create(
      { keys: [{ domain: "example.com", selector: "x", privateKeyPem: "garbage", keyFile: "/k/x.pem" }] },
      { threads: 2 },
    ),
  ).toThrow(DkimKeyError);
  expect(() =>
    DkimSignerPool.create(
      { keys: [{ domain: "example.com", selector: "x", privateKeyPem: "garbage", keyFile: "/k/x.pem" }] },
      { threads: 0 },
    ),
  ).toThrow("DKIM key file /k/x.pem (x._domainkey.example.com): not a readable PEM private key");
});

test("a worker that cannot load is reported and its messages are signed on the calling thread", async () => {
  const errors: string[] = [];
  const pool = DkimSignerPool.create(
    { keys: KEYS },
    {
      threads: 1,
      workerUrl: new URL("./no-such-worker.ts", import.meta.url),
      onWorkerError: (m) => errors.push(m),
    },
  );
  try {
    expect(await pool.started()).toBe(0);
    expect(errors.length).toBe(1);
    expect(errors[0]).toContain("DKIM worker");
    const m = message(3);
    expect(await pool.sign(m, T0_MS)).toEqual(pool.signer.sign(m, T0_MS));
  } finally {
    pool.close();
  }
});
