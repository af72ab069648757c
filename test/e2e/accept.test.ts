/**
 * What a client is told when accepting fails: 452 4.3.1 only when the spool could not write (the
 * disk; see the torture suite's disk-full scenario), 451 4.3.0 and an error log line for anything
 * else, so a programming error does not look like a full disk to the client or the operator.
 *
 * The error is a real one in the product's code path, raised by src/lib/fault.ts when MTA_TEST_FAULT
 * names the point; the daemon runs from source for that. The executable cannot reach it: build.ts
 * defines the variable away, which the second test checks on dist/mta itself.
 */
import { expect, test } from "bun:test";
import { spawnSync } from "bun";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { controlFetch, MTA, startMta, tempDir, testConfig } from "../support/mta.ts";
import { lacking } from "../support/peers.ts";
import { startScriptedPeer } from "../support/scriptedPeer.ts";

const MAIN = resolve(import.meta.dir, "../../src/cli/main.ts");

/** One SMTP transaction with swaks; returns swaks's output (it exits non-zero on a 4xx). */
function swaks(port: number, to: string): string {
  const r = spawnSync(
    ["swaks", "--server", `127.0.0.1:${port}`, "--helo", "client.test", "-f", "a@app.test", "-t", to],
    { stdout: "pipe", stderr: "pipe" },
  );
  return r.stdout.toString() + r.stderr.toString();
}

test.skipIf(lacking("swaks"))(
  "a programming error in accept answers 451 4.3.0 (not 452) and logs the cause; nothing is queued",
  async () => {
    using dir = tempDir();
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path),
      command: [process.execPath, MAIN],
      env: { MTA_TEST_FAULT: "accept" },
    });
    const out = swaks(mta.smtpPorts[0]!, "b@example.net");
    expect(out).toMatch(/<\*\* 451 4\.3\.0 Local error in processing/);
    expect(out).not.toContain("452");
    const line = await mta.waitForLog((r) => r.msg === "accept failed inside the MTA; answering 451");
    expect(line).toMatchObject({ level: "error", error: "injected test fault at accept" });
    expect(String(line.stack)).toContain("accept/_pipeline.ts");
    const summary = (await (await controlFetch(dir.path, "/api/v1/queue/summary")).json()) as {
      totals: { messages: number };
    };
    expect(summary.totals.messages).toBe(0);
  },
  30_000,
);

test.skipIf(lacking("swaks"))(
  "the executable cannot reach the fault hook: dist/mta ignores MTA_TEST_FAULT and does not contain it",
  async () => {
    const binary = readFileSync(MTA);
    expect(binary.includes("MTA_TEST_FAULT")).toBe(false);
    expect(binary.includes("injected test fault")).toBe(false);
    using dir = tempDir();
    await using peer = await startScriptedPeer();
    await using mta = await startMta({
      dir: dir.path,
      config: testConfig(dir.path, `delivery: { routes: { example.net: "127.0.0.1:${peer.port}" } }`),
      env: { MTA_TEST_FAULT: "accept" },
    });
    expect(swaks(mta.smtpPorts[0]!, "b@example.net")).toMatch(/<- {2}250 2\.0\.0 Ok: queued as/);
  },
  30_000,
);
