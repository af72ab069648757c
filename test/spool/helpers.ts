import * as fs from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import type { NewMessage } from "../../src/spool/index.ts";

export function tempDir(): { dir: string; [Symbol.dispose](): void } {
  const dir = fs.mkdtempSync(join(os.tmpdir(), "mta-spool-"));
  return { dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export function msg(i: number, recipients = 1, bodyBytes = 64): NewMessage {
  const body = new Uint8Array(bodyBytes).fill(65 + (i % 26));
  return {
    sender: `sender${i}@origin.test`,
    destination: `d${i % 5}.test`,
    recipients: Array.from({ length: recipients }, (_, r) => ({ address: `r${r}.${i}@d${i % 5}.test` })),
    attributes: { n: String(i) },
    body,
  };
}

export function segmentFiles(dir: string): string[] {
  return fs
    .readdirSync(join(dir, "segments"))
    .filter((n) => n.endsWith(".seg"))
    .sort()
    .map((n) => join(dir, "segments", n));
}
