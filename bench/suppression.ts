/**
 * Suppression list benchmark: prints figures with their conditions, never pass/fail.
 *
 *   bun bench/suppression.ts [--entries=10000000] [--dir=/path/on/the/disk/to/measure] [--json]
 *
 * Figures (issue #18): the cost of one check (hit, miss, and with sender-domain entries present) at
 * N entries, random order so the table is not in cache; RAM per entry (the table's typed arrays, and
 * the process's RSS growth); bytes per entry on disk; the time to load N entries at start; the time to
 * fill and to compact; durable additions per second with one fdatasync per batch (1,000 concurrent).
 * Postfix has no suppression list (its nearest, an access(5) table, is looked up by a separate
 * daemon per SMTP session), so there is no Postfix column.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import { SuppressionList } from "../src/suppression/index.ts";
import { benchArgs, median, printTable, type Row, rssBytes } from "./_support.ts";

const args = benchArgs();
const N = Number(args.get("entries") ?? 10_000_000);
const base = args.get("dir") ?? os.tmpdir();
const dir = fs.mkdtempSync(join(base, "mta-bench-suppression-"));
const PROBES = 2_000_000;
const BATCH = 100_000;

const address = (i: number) => `user.${i}@d${i % 5000}.example.com`;

function gc(): void {
  Bun.gc(true);
}

/**
 * ns per call of `fn` over `probes`: the median of 5 rounds after one warm-up round, and the fastest
 * round (the machine is shared: the fastest is the one least disturbed by other processes).
 */
function perCall(probes: string[], fn: (a: string) => boolean): { ns: number; minNs: number; hits: number } {
  const rounds: number[] = [];
  let hits = 0;
  for (let r = 0; r < 6; r++) {
    hits = 0;
    const t = Bun.nanoseconds();
    for (let i = 0; i < probes.length; i++) if (fn(probes[i]!)) hits++;
    if (r > 0) rounds.push((Bun.nanoseconds() - t) / probes.length);
  }
  return { ns: median(rounds), minNs: Math.min(...rounds), hits };
}

/** Probe addresses in a random order: present ones (< N) or absent ones (>= N). */
function probes(present: boolean): string[] {
  const out: string[] = new Array(PROBES);
  let x = 0x12345678;
  for (let i = 0; i < PROBES; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const k = x % N;
    out[i] = address(present ? k : N + k);
  }
  // Flatten the strings now, so that the timed loop measures the check alone.
  for (const s of out) s.charCodeAt(0);
  return out;
}

try {
  gc();
  const rss0 = rssBytes(process.pid);
  let t = performance.now();
  const list = await SuppressionList.open({ dir, sync: false });
  for (let i = 0; i < N; i += BATCH) {
    const items = [];
    for (let j = i; j < Math.min(N, i + BATCH); j++)
      items.push({ address: address(j), reason: "bad-mailbox" as const });
    await list.add(items);
  }
  const fillS = (performance.now() - t) / 1000;
  gc();
  const rss1 = rssBytes(process.pid);
  const hit = probes(true);
  const miss = probes(false);
  const h = perCall(hit, (a) => list.has(a));
  const m = perCall(miss, (a) => list.has(a));
  const c = perCall(hit, (a) => list.check(a, "news.example.com") !== undefined);
  const fileBytes = fs.statSync(join(dir, "suppressions.log")).size;
  const tableBytes = list.tableBytes;
  const capacity = list.count;
  // One entry scoped to a sender domain makes every miss look twice (global, then the sender's domain).
  await list.add([{ address: "someone@example.net", scope: "news.example.com" }]);
  const scopedMiss = perCall(miss, (a) => list.has(a, "news.example.com"));
  t = performance.now();
  await list.compact();
  const compactS = (performance.now() - t) / 1000;
  await list.close();

  gc();
  t = performance.now();
  const again = await SuppressionList.open({ dir, sync: false });
  const loadS = (performance.now() - t) / 1000;
  const loaded = again.count;
  await again.close();

  // Durable additions: 1,000 concurrent callers, each adding one address, sync on (one fdatasync per batch).
  const durable = await SuppressionList.open({ dir: join(dir, "durable") });
  const ADDS = 20_000;
  t = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 1000 }, async () => {
      while (next < ADDS) {
        const i = next++;
        await durable.add([{ address: `durable${i}@example.org` }]);
      }
    }),
  );
  const durableRate = ADDS / ((performance.now() - t) / 1000);
  await durable.close();

  const conditions = (r: { minNs: number }) =>
    `${(N / 1e6).toFixed(1)}M entries, random order, ${PROBES / 1e6}M probes, median of 5 rounds (fastest ${Math.round(r.minNs)} ns)`;
  const rows: Row[] = [
    { figure: "check, address present", conditions: conditions(h), mta: h.ns, unit: "ns" },
    { figure: "check, address absent", conditions: conditions(m), mta: m.ns, unit: "ns" },
    {
      figure: "check() of a present address, with its entry as an object",
      conditions: conditions(c),
      mta: c.ns,
      unit: "ns",
    },
    {
      figure: "check, absent, sender-domain entries exist (2 lookups)",
      conditions: conditions(scopedMiss),
      mta: scopedMiss.ns,
      unit: "ns",
    },
    {
      figure: "RAM per entry: table",
      conditions: `${(tableBytes / 2 ** 20).toFixed(0)} MiB typed arrays / ${capacity} entries`,
      mta: tableBytes / capacity,
      unit: "B",
    },
    {
      figure: "RAM per entry: process RSS growth",
      conditions: `RSS ${(rss0 / 2 ** 20).toFixed(0)} → ${(rss1 / 2 ** 20).toFixed(0)} MiB after filling, after GC`,
      mta: (rss1 - rss0) / N,
      unit: "B",
    },
    {
      figure: "disk per entry",
      conditions: "suppressions.log after the fill",
      mta: fileBytes / N,
      unit: "B",
    },
    {
      figure: "load at start",
      conditions: `${loaded} entries from one compacted log`,
      mta: loadS,
      unit: "s",
    },
    {
      figure: "fill",
      conditions: `add() in batches of ${BATCH / 1000}k, no fdatasync`,
      mta: N / fillS,
      unit: "entries/s",
    },
    { figure: "compaction", conditions: `${N} live entries rewritten`, mta: compactS, unit: "s" },
    {
      figure: "durable additions",
      conditions: "1,000 concurrent add() of 1 address, fdatasync per batch",
      mta: durableRate,
      unit: "adds/s",
    },
  ];
  printTable("Suppression list", rows);
  if (h.hits !== PROBES || m.hits !== 0)
    console.log(`WRONG: ${h.hits} hits of ${PROBES} present, ${m.hits} of absent`);
  if (args.has("json")) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
