/**
 * Spool benchmark: prints figures with their conditions, never pass/fail.
 *
 *   bun bench/spool.ts [--queued=0,100000,1000000] [--dir=/path/on/the/disk/to/measure]
 *
 * Figures (issue #3): durable append rate of 1 KB messages with 1,000 concurrent appenders, and MB/s
 * of 100 KB messages; append and take-for-delivery rates with 0 / 100k / 1M messages already queued;
 * RAM per queued message at 1M; recovery (open) time of the 1M-message spool.
 * Everything uses sync: true (one fdatasync per batch) except filling the queue to depth.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import { type NewMessage, Spool } from "../src/spool/index.ts";

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, "").split("=");
    return [k!, v ?? "1"] as const;
  }),
);
const depths = (args.get("queued") ?? "0,100000,1000000").split(",").map(Number);
const base = args.get("dir") ?? os.tmpdir();
const CONCURRENCY = 1000;

function message(i: number, bodyBytes: number): NewMessage {
  const body = new Uint8Array(bodyBytes);
  body.fill(97 + (i % 26));
  return {
    sender: "bulk@origin.test",
    destination: `d${i % 1000}.test`,
    recipients: [{ address: `user${i}@d${i % 1000}.test` }],
    attributes: { listener: "bench" },
    body,
  };
}

function fdatasyncRate(dir: string): number {
  const path = join(dir, "fdatasync.probe");
  const fd = fs.openSync(path, "w");
  const buf = new Uint8Array(1024);
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < 1000) {
    fs.writeSync(fd, buf);
    fs.fdatasyncSync(fd);
    n++;
  }
  fs.closeSync(fd);
  fs.rmSync(path);
  return n / ((performance.now() - t0) / 1000);
}

/** `total` appends from `concurrency` appenders, each waiting for its append before the next. */
async function appendRate(
  spool: Spool,
  total: number,
  bodyBytes: number,
  concurrency: number,
  slots?: number[],
) {
  let next = 0;
  const body = message(0, bodyBytes).body;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        const { slot } = await spool.append({ ...message(i, 0), body });
        slots?.push(slot);
      }
    }),
  );
  const s = (performance.now() - t0) / 1000;
  return { perS: total / s, mbPerS: (total * bodyBytes) / s / 1e6, s };
}

/** Takes each slot for delivery (read envelope + body) and records a final outcome. */
async function takeRate(spool: Spool, slots: number[], concurrency: number) {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < slots.length) {
        const slot = slots[next++]!;
        await spool.read(slot);
        await spool.recordOutcome(slot, {
          recipients: [{ index: 0, state: "delivered", reply: "250 ok" }],
          attempts: 1,
        });
      }
    }),
  );
  return slots.length / ((performance.now() - t0) / 1000);
}

// Child mode: open a spool in a fresh process and report RSS before/after and the open time.
const childDir = args.get("open-child");
if (childDir) {
  Bun.gc(true);
  const before = process.memoryUsage().rss;
  const t0 = performance.now();
  const spool = await Spool.open({ dir: childDir, sync: true, bodyCacheBytes: 0 });
  const openMs = performance.now() - t0;
  Bun.gc(true);
  const after = process.memoryUsage().rss;
  const st = spool.stats();
  await spool.close();
  console.log(
    JSON.stringify({
      before,
      after,
      openMs,
      messages: st.messages,
      fileBytes: st.fileBytes,
      segments: st.segments,
    }),
  );
  process.exit(0);
}

const rows: string[][] = [];
const row = (figure: string, value: string, conditions: string): void => {
  rows.push([figure, value, conditions]);
  console.log(`${figure.padEnd(44)} ${value.padStart(16)}   ${conditions}`);
};

const root = fs.mkdtempSync(join(base, "mta-spool-bench-"));
try {
  console.log(
    `spool benchmark: bun ${Bun.version}, ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "?"}, dir ${root}`,
  );
  const syncRate = fdatasyncRate(root);
  row("disk fdatasync rate", `${syncRate.toFixed(0)}/s`, "1 KB write + fdatasync, one thread");

  {
    const warm = await Spool.open({ dir: join(root, "warmup"), sync: true });
    await appendRate(warm, 50_000, 1024, CONCURRENCY);
    await warm.close();
    fs.rmSync(join(root, "warmup"), { recursive: true });
  }
  {
    const dir = join(root, "throughput");
    const spool = await Spool.open({ dir, sync: true });
    const r = await appendRate(spool, 200_000, 1024, CONCURRENCY);
    const gc = spool.stats().groupCommit;
    row(
      "durable appends, 1 KB",
      `${r.perS.toFixed(0)} msg/s`,
      `200k msgs, ${CONCURRENCY} concurrent appenders, sync: true, ${gc.batches} batches (${gc.recordsPerBatch.toFixed(0)} records/batch)`,
    );
    await spool.close();
    fs.rmSync(dir, { recursive: true });
  }
  {
    const dir = join(root, "big");
    const spool = await Spool.open({ dir, sync: true });
    const r = await appendRate(spool, 5_000, 100 * 1024, 100);
    row(
      "durable appends, 100 KB",
      `${r.mbPerS.toFixed(0)} MB/s`,
      `5k msgs (${r.perS.toFixed(0)} msg/s), 100 concurrent appenders, sync: true`,
    );
    await spool.close();
    fs.rmSync(dir, { recursive: true });
  }

  for (const depth of depths) {
    const dir = join(root, `depth-${depth}`);
    if (depth > 0) {
      const filler = await Spool.open({ dir, sync: false, bodyCacheBytes: 0 });
      await appendRate(filler, depth, 1024, CONCURRENCY);
      await filler.close();
    }
    if (depth > 0) {
      const child = Bun.spawnSync([process.execPath, import.meta.path, `--open-child=${dir}`]);
      const r = JSON.parse(child.stdout.toString()) as {
        before: number;
        after: number;
        openMs: number;
        messages: number;
        fileBytes: number;
        segments: number;
      };
      row(
        `recovery (open), ${depth} queued`,
        `${(r.openMs / 1000).toFixed(2)} s`,
        `fresh process, ${r.messages} msgs of 1 KB, ${(r.fileBytes / 2 ** 30).toFixed(2)} GiB in ${r.segments} segments, page cache warm`,
      );
      row(
        `RAM per queued message, ${depth} queued`,
        `${((r.after - r.before) / depth).toFixed(0)} B`,
        "fresh process: RSS after open + GC minus RSS before open; 1 recipient, body cache off",
      );
    }
    const spool = await Spool.open({ dir, sync: true, bodyCacheBytes: 0 });
    const slots: number[] = [];
    const a = await appendRate(spool, 100_000, 1024, CONCURRENCY, slots);
    row(
      `append rate, ${depth} already queued`,
      `${a.perS.toFixed(0)} msg/s`,
      `100k x 1 KB, ${CONCURRENCY} concurrent, sync: true`,
    );
    const t = await takeRate(spool, slots, CONCURRENCY);
    row(
      `take-for-delivery rate, ${depth} already queued`,
      `${t.toFixed(0)} msg/s`,
      `read envelope+body from disk, record final outcome durably; 100k, ${CONCURRENCY} concurrent`,
    );
    await spool.close();
    fs.rmSync(dir, { recursive: true });
  }
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
