import { afterAll, beforeAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { dkimVerify } from "mailauth/lib/dkim/verify.js";
import { DkimSigner, readKeyFile } from "../../src/dkim/index.ts";
import { MTA } from "../support/mta.ts";
import { startTxtServer, type TxtServer } from "./_dns.ts";

let dir: string;
let dns: TxtServer;
beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "dkim-cli-"));
  dns = await startTxtServer();
});
afterAll(async () => {
  fs.rmSync(dir, { recursive: true, force: true });
  await dns.close();
});

function keygen(...args: string[]) {
  const proc = Bun.spawnSync([MTA, "dkim", "keygen", ...args], { cwd: dir });
  return { code: proc.exitCode, stdout: proc.stdout.toString(), stderr: proc.stderr.toString() };
}

/** Reads a zone-file TXT line back: the concatenation of its quoted strings. */
function txtValue(line: string): { name: string; value: string } {
  const name = line.split(" ")[0]!;
  const value = [...line.matchAll(/"([^"]*)"/g)].map((m) => m[1]).join("");
  return { name, value };
}

for (const type of ["rsa", "ed25519"] as const) {
  test(`keygen --type ${type} writes a 0600 key whose printed TXT record verifies its signatures`, async () => {
    const out = path.join(dir, `${type}.pem`);
    const r = keygen("--domain", "Example.com", "--selector", `s-${type}`, "--type", type, "--out", out);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`wrote ${type} private key to ${out} (mode 0600)`);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
    const line = r.stdout.trim();
    expect(line).toMatch(
      new RegExp(`^s-${type}\\._domainkey\\.example\\.com IN TXT "v=DKIM1; k=${type}; p=`),
    );
    // A TXT character-string holds at most 255 bytes.
    for (const m of line.matchAll(/"([^"]*)"/g)) expect(m[1]!.length).toBeLessThanOrEqual(255);
    const { name, value } = txtValue(line);
    dns.set(name, value);
    const signer = DkimSigner.create({
      keys: [{ domain: "example.com", selector: `s-${type}`, privateKeyPem: readKeyFile(out) }],
    });
    const signed = signer.sign(
      new TextEncoder().encode("From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"),
    );
    const res = await dkimVerify(Buffer.from(signed), { resolver: dns.resolver as never } as never);
    expect(res.results.map((x) => x.status.result)).toEqual(["pass"]);
  });
}

test("keygen refuses to overwrite a key, a bad type, and a short RSA key", () => {
  const out = path.join(dir, "exists.pem");
  fs.writeFileSync(out, "precious");
  const r1 = keygen("--domain", "example.com", "--selector", "s", "--type", "ed25519", "--out", out);
  expect(r1.code).toBe(73);
  expect(r1.stderr).toBe(`mta: ${out} exists; not overwriting a key\n`);
  expect(fs.readFileSync(out, "utf8")).toBe("precious");
  const r2 = keygen("--domain", "example.com", "--selector", "s", "--type", "dsa");
  expect(r2.code).toBe(64);
  expect(r2.stderr).toContain('--type must be rsa or ed25519, not "dsa"');
  const r3 = keygen("--domain", "example.com", "--selector", "s", "--bits", "1024");
  expect(r3.code).toBe(64);
  expect(r3.stderr).toContain("RSA key size 1024: use 2048 to 8192 bits");
  const r4 = keygen("--selector", "s");
  expect(r4.code).toBe(64);
  expect(r4.stderr).toBe("mta: dkim keygen: missing option --domain (see mta dkim keygen --help)\n");
  const r5 = keygen(
    "--domain",
    "example.com",
    "--selector",
    "s",
    "--out",
    path.join(dir, "no/such/dir/k.pem"),
  );
  expect(r5.code).toBe(73);
  expect(r5.stderr).toBe(`mta: --out ${path.join(dir, "no/such/dir/k.pem")}: no such file or directory\n`);
});

test("keygen without --out writes <selector>.<domain>.pem in the working directory", () => {
  const r = keygen("--domain", "example.org", "--selector", "mail", "--type", "ed25519");
  expect(r.code).toBe(0);
  expect(fs.readFileSync(path.join(dir, "mail.example.org.pem"), "utf8")).toStartWith(
    "-----BEGIN PRIVATE KEY-----",
  );
});
