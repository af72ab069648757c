import { expect, test } from "bun:test";
import { spawnSync } from "bun";
import { runMta, startMta, tempDir, testConfig } from "../support/mta.ts";
import { lacking } from "../support/peers.ts";

test.skipIf(lacking("swaks"))(
  "a hash from `mta hash-password` lets a user relay with AUTH; a wrong password and an unauthenticated relay are refused",
  async () => {
    using dir = tempDir();
    const hashed = runMta(["hash-password"], { stdin: "s3cret\n" });
    expect(hashed.code).toBe(0);
    const hash = hashed.stdout.trim();
    expect(hash).toStartWith("$argon2id$");
    // relay_from is empty: only AUTH lets a client relay. Plain-text AUTH is allowed for loopback clients.
    const config = testConfig(dir.path).replace(
      "listen: [{ address: 127.0.0.1:0 }]",
      `listen: [{ address: 127.0.0.1:0, relay_from: [], auth: optional, allow_plaintext_auth: true, users: { app: '${hash}' } }]`,
    );
    await using mta = await startMta({ dir: dir.path, config });
    const port = String(mta.smtpPorts[0]);
    const swaks = (...args: string[]) =>
      spawnSync(
        ["swaks", "--server", `127.0.0.1:${port}`, "--from", "a@app.test", "--to", "b@example.net", ...args],
        {
          stdout: "pipe",
        },
      ).stdout.toString();
    expect(swaks("--auth", "PLAIN", "--auth-user", "app", "--auth-password", "s3cret")).toMatch(
      /250 2\.0\.0 Ok: queued as/,
    );
    expect(swaks("--auth", "LOGIN", "--auth-user", "app", "--auth-password", "s3cret")).toMatch(
      /250 2\.0\.0 Ok: queued as/,
    );
    expect(swaks("--auth", "PLAIN", "--auth-user", "app", "--auth-password", "wrong")).toMatch(/535 5\.7\.8/);
    expect(swaks()).toMatch(/554 5\.7\.1/);
  },
  30_000,
);
