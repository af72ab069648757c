/**
 * DKIM signing throughput: signatures/s and CPU µs per signature for RSA-2048 and Ed25519 on 1 KB
 * and 100 KB messages, per canonicalization, on one thread. Prints a table; never passes or fails.
 *
 *   npx bun bench/dkim.ts [secondsPerCase=1.5]
 */
import os from "node:os";
import { type DkimCanonicalization, DkimSigner, generateKey } from "../src/dkim/index.ts";

const secondsPerCase = Number(process.argv[2] ?? 1.5);

function makeMessage(bytes: number): Uint8Array {
  const head =
    "From: Shop <news@example.com>\r\nTo: someone@example.net\r\nSubject: Your weekly offers\r\n" +
    "Date: Mon, 15 Jan 2024 10:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n" +
    "Content-Type: text/plain; charset=utf-8\r\n\r\n";
  // Typical prose: ~70-byte lines, single spaces, some trailing whitespace and a tab now and then.
  const lines = [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod ",
    "tempor incididunt ut labore et dolore magna aliqua.\tUt enim ad minim",
    "veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea",
  ];
  let body = "";
  for (let i = 0; head.length + body.length < bytes; i++) body += `${lines[i % lines.length]}\r\n`;
  return new TextEncoder().encode(head + body);
}

const keys = { rsa: generateKey("rsa", 2048), ed25519: generateKey("ed25519") };
const messages = { "1 KB": makeMessage(1024), "100 KB": makeMessage(100 * 1024) };
const canons: DkimCanonicalization[] = ["relaxed/relaxed", "simple/simple"];

console.log(
  `# DKIM signing, one thread, ${os.cpus()[0]?.model ?? "cpu"} (${os.cpus().length} cores), Bun ${Bun.version}`,
);
console.log(`# ${secondsPerCase}s per case after a warm-up; CPU = user+sys of this process per signature`);
console.log(
  "# body: 72-byte prose lines, one in three with an HTAB (rewritten under relaxed); output copy included",
);
console.log("| key | message | canonicalization | signatures/s | CPU µs/signature | wall µs/signature |");
console.log("|---|---|---|---:|---:|---:|");
for (const [type, key] of Object.entries(keys)) {
  for (const [size, message] of Object.entries(messages)) {
    for (const canonicalization of canons) {
      const signer = DkimSigner.create({
        keys: [{ domain: "example.com", selector: "bench", privateKeyPem: key.privateKeyPem }],
        canonicalization,
      });
      for (let i = 0; i < 20; i++) signer.sign(message);
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      let n = 0;
      while (performance.now() - t0 < secondsPerCase * 1000) {
        for (let i = 0; i < 10; i++) signer.sign(message);
        n += 10;
      }
      const wallMs = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      const cpuUs = (cpu.user + cpu.system) / n;
      console.log(
        `| ${type === "rsa" ? "RSA-2048" : "Ed25519"} | ${size} | ${canonicalization} | ${Math.round((n / wallMs) * 1000)} | ${cpuUs.toFixed(1)} | ${((wallMs * 1000) / n).toFixed(1)} |`,
      );
    }
  }
}
