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

/** A segment file's records, walked by their length fields (the file must be intact). */
export function segmentRecords(bytes: Uint8Array): { offset: number; end: number; type: number }[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: { offset: number; end: number; type: number }[] = [];
  for (let off = 16; off + 16 <= bytes.length; ) {
    const end = off + 16 + dv.getUint32(off + 8, true);
    out.push({ offset: off, end, type: bytes[off + 12]! });
    off = end;
  }
  return out;
}
