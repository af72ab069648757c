/**
 * Shared pieces of the torture scenarios: the daemon as a child (through test/support's startMta),
 * a seeded PRNG, RSS and metrics sampling, `mta queue` runs, the config every scenario starts from,
 * and the result every scenario returns.
 *
 * Owns: nothing durable; every scenario creates and removes its own temp dir.
 * Invariant: only loopback addresses are ever used.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { deliveryLog, runMta, type StartedMta, startMta } from "../test/support/mta.ts";

export { deliveryLog, runMta, type StartedMta, startMta };

/** What a scenario reports: one line for the summary table, the details it printed, and the verdict. */
export interface ScenarioResult {
  name: string;
  /** "5,000 kills, 1,204,331 acknowledged, 0 lost, 212 duplicates" */
  summary: string;
  /** Acknowledged (250) messages that never arrived and are not in the spool. Must be 0. */
  lost: number;
  /** Broken promises other than loss (split/merged messages, unexplained duplicates, crashes, leaks). */
  violations: string[];
  figures: Record<string, number | string>;
}

export type Log = (line: string) => void;

/** mulberry32: small, fast, good enough to make every run reproducible from its seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)] as T;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Samples VmRSS of `pid` every `everyMs` until stopped; keeps the first and the largest value. */
export function rssSampler(pid: number, everyMs = 250) {
  const first = rssBytes(pid);
  let max = first;
  let last = first;
  const t = setInterval(() => {
    const v = rssBytes(pid);
    if (Number.isFinite(v)) {
      last = v;
      if (v > max) max = v;
    }
  }, everyMs);
  return {
    get firstBytes() {
      return first;
    },
    get maxBytes() {
      return max;
    },
    get lastBytes() {
      return last;
    },
    stop: () => clearInterval(t),
  };
}

/** One metric's value (summed over label sets) from the daemon's /metrics. */
export async function metric(controlPort: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${controlPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(" ").pop());
  }
  return sum;
}

/**
 * The config every scenario starts from: JSON logs, kernel-chosen ports, a spool and a delivery log in
 * `dir`, static routes, short retries. `extra` adds keys under `spool`, `listen[0]` and `delivery`.
 */
/** The control token of every torture config: over TCP the control API's /api/ needs one. */
export const CONTROL_TOKEN = "torture-control-token";

export function tortureConfig(
  dir: string,
  opts: {
    routes: Record<string, string>;
    spoolDir?: string;
    spool?: string;
    listen?: string;
    delivery?: string;
    level?: string;
  },
): string {
  const routes = Object.entries(opts.routes)
    .map(([d, hp]) => `"${d}": "${hp}"`)
    .join(", ");
  return [
    "hostname: mta.test",
    `spool: { dir: ${opts.spoolDir ?? join(dir, "spool")}${opts.spool ? `, ${opts.spool}` : ""} }`,
    `listen: [{ address: 127.0.0.1:0${opts.listen ? `, ${opts.listen}` : ""} }]`,
    `control: { address: 127.0.0.1:0, token: ${CONTROL_TOKEN} }`,
    `log: { level: ${opts.level ?? "info"}, format: json, deliveries: ${join(dir, "deliveries.jsonl")} }`,
    `delivery: { routes: { ${routes} }, retry: [1s]${opts.delivery ? `, ${opts.delivery}` : ""} }`,
  ].join("\n");
}

export async function until(fn: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() > end) return false;
    await Bun.sleep(50);
  }
}

/** `mta queue <args> -c config`: runs the real CLI. */
export function queueCli(configFile: string, args: string[]) {
  return runMta(["queue", ...args, "-c", configFile]);
}

export function fmt(n: number): string {
  return n.toLocaleString("en-US");
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** The daemon's control API (its port is only known from the start line, so the CLI cannot find it). */
export async function api(
  controlPort: number,
  method: "GET" | "POST",
  path: string,
  body?: unknown,
): Promise<unknown> {
  const r = await fetch(`http://127.0.0.1:${controlPort}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${CONTROL_TOKEN}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
