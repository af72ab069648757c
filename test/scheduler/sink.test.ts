import { expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startSink } from "../support/sink.ts";
import { harness } from "./_harness.ts";
import { lacking } from "../support/peers.ts";

test.skipIf(lacking("smtp-sink"))(
  "messages to several destinations reach Postfix's smtp-sink with their exact bytes",
  async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mta-sched-sink-"));
    try {
      await using sink = await startSink({ dir: tmp });
      await using h = await harness({ port: sink.port, policy: { maxConnections: 3, initialWindow: 3 } });
      for (let i = 0; i < 12; i++) {
        const body = new TextEncoder().encode(`Subject: m${i}\r\n\r\n.leading dot\r\nline ${i}\r\n`);
        await h.send({ to: [`r${i}@d${i % 3}.test`], body });
      }
      await h.scheduler.idle();
      const dumps = await sink.waitFor(12);
      expect(h.events.filter((e) => e.type === "delivery")).toHaveLength(12);
      expect(h.spool.messageCount).toBe(0);
      for (let i = 0; i < 12; i++) {
        // smtp-sink writes its dumps with LF line ends, after undoing the dot-stuffing.
        const dump = dumps.find((d) => d.includes(`Subject: m${i}\n`));
        expect(dump).toContain(`X-Rcpt-Args: <r${i}@d${i % 3}.test>\n`);
        expect(dump).toContain(`Subject: m${i}\n\n.leading dot\nline ${i}\n`);
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  },
);
