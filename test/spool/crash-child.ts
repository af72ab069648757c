// Child process for crash.test.ts: appends and records outcomes under load, printing each step
// before it starts ("D"/"F") and after it is acknowledged ("A"/"d"/"f"), until it is killed.
import { Spool } from "../../src/spool/index.ts";

const dir = process.argv[2]!;
const spool = await Spool.open({ dir, segmentSizeBytes: 32 * 1024 });
const out: string[] = [];
const flush = (): void => {
  if (out.length) process.stdout.write(`${out.splice(0).join("\n")}\n`);
};
let n = 0;
async function worker(w: number): Promise<void> {
  for (;;) {
    const i = n++;
    const body = new Uint8Array(200 + ((i * 37) % 900)).fill(97 + (i % 26));
    const { id, slot } = await spool.append({
      sender: "s@origin.test",
      destination: `d${w % 7}.test`,
      recipients: [{ address: `r${i}@d.test` }],
      body,
    });
    out.push(`A ${id}`);
    if (i % 2 === 0) continue;
    out.push(`D ${id} 1`);
    flush();
    await spool.recordOutcome(slot, {
      recipients: [{ index: 0, state: "pending", reply: "451 later" }],
      attempts: 1,
      nextAttemptMs: i,
    });
    out.push(`d ${id} 1`);
    if (i % 3 === 0) continue;
    out.push(`F ${id}`);
    flush();
    await spool.recordOutcome(slot, {
      recipients: [{ index: 0, state: "delivered", reply: "250 ok" }],
      attempts: 2,
    });
    out.push(`f ${id}`);
  }
}
setInterval(flush, 1);
process.stdout.write("ready\n");
await Promise.all(Array.from({ length: 64 }, (_, w) => worker(w)));
