import { expect, test } from "bun:test";
import { spawnSync } from "bun";
import { join } from "node:path";
import { selfSignedCert } from "../support/scriptedPeer.ts";
import { startMta, tempDir, testConfig } from "../support/mta.ts";
import { startSink } from "../support/sink.ts";
import { lacking } from "../support/peers.ts";

test.skipIf(lacking("swaks-tls", "openssl", "smtp-sink"))(
  "mta serve with a TLS listener: STARTTLS (swaks, openssl s_client) and implicit TLS, then delivery",
  async () => {
    using dir = tempDir();
    const { cert, key } = selfSignedCert(dir.path);
    const certFile = join(dir.path, "cert.pem");
    const keyFile = join(dir.path, "key.pem");
    await Bun.write(certFile, cert);
    await Bun.write(keyFile, key);
    await using sink = await startSink({ dir: dir.path });
    const config = testConfig(
      dir.path,
      `delivery: { routes: { example.net: "127.0.0.1:${sink.port}" } }`,
    ).replace(
      "listen: [{ address: 127.0.0.1:0 }]",
      `listen: [{ address: 127.0.0.1:0, tls: { cert: ${certFile}, key: ${keyFile} } }, { address: 127.0.0.2:0, tls: { cert: ${certFile}, key: ${keyFile}, implicit: true } }]`,
    );
    await using mta = await startMta({ dir: dir.path, config });
    const [starttls, implicit] = mta.smtpPorts;
    const swaks = (...args: string[]) =>
      spawnSync(["swaks", "--from", "a@app.test", "--to", "b@example.net", ...args], {
        stdout: "pipe",
      }).stdout.toString();
    const viaStarttls = swaks("--server", `127.0.0.1:${starttls}`, "--tls");
    expect(viaStarttls).toContain("TLS started");
    expect(viaStarttls).toMatch(/250 2\.0\.0 Ok: queued as/);
    const viaImplicit = swaks("--server", `127.0.0.2:${implicit}`, "--tls-on-connect");
    expect(viaImplicit).toMatch(/250 2\.0\.0 Ok: queued as/);
    const s = spawnSync(
      ["openssl", "s_client", "-starttls", "smtp", "-connect", `127.0.0.1:${starttls}`, "-quiet"],
      {
        stdin: Buffer.from("EHLO openssl.test\r\nQUIT\r\n"),
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    expect(s.stdout.toString()).toContain("250-");
    expect(s.stdout.toString()).toContain("221");
    const dumps = await sink.waitFor(2);
    expect(dumps.some((d) => /with ESMTPS/.test(d))).toBe(true);
  },
  30_000,
);
