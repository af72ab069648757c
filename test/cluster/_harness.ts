/**
 * Cluster nodes for module tests: a `Cluster` in this process, or one in a child process (for kill -9
 * and SIGSTOP), both against a real redis-server from test/support/redis.ts.
 *
 * Owns: `startNode` (in-process), `spawnNode` (a child running _node.ts, driven by JSON lines).
 */
import { type Subprocess, spawn } from "bun";
import { join } from "node:path";
import { Cluster, type ClusterOptions, type StateChange } from "../../src/cluster/index.ts";
import { silentLogger } from "../../src/observe/index.ts";

export function nodeOptions(url: string, over: Partial<ClusterOptions> = {}): ClusterOptions {
  return {
    url,
    node: "node-a",
    leaseMs: 1000,
    keyPrefix: "mta:",
    commandTimeoutMs: 300,
    control: () => "",
    version: "test",
    queueTotals: () => ({ messages: 0, recipients: 0, bytes: 0, activeConnections: 0 }),
    stateFile: "",
    expectedNodes: 1,
    log: silentLogger(),
    ...over,
  };
}

export async function startNode(
  url: string,
  over: Partial<ClusterOptions> = {},
  onState?: (c: StateChange) => void,
): Promise<Cluster & AsyncDisposable> {
  const c = Cluster.create(nodeOptions(url, over));
  if (onState) c.state.onChange(onState);
  await c.start();
  return Object.assign(c, { [Symbol.asyncDispose]: () => c.close() });
}

/** Resolves when `pred` holds (polled every 5 ms), or rejects after `timeoutMs`. */
export async function until(pred: () => boolean, timeoutMs = 5000, what = "condition"): Promise<number> {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
  return performance.now() - t0;
}

export interface ChildNode extends AsyncDisposable {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  /** Sends one command, resolves with its answer. */
  ask(cmd: Record<string, unknown>): Promise<Record<string, unknown>>;
  /** Every event line the child printed (lost leases, mode changes). */
  events: Record<string, unknown>[];
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export async function spawnNode(url: string, over: Record<string, unknown> = {}): Promise<ChildNode> {
  const proc = spawn([process.execPath, join(import.meta.dir, "_node.ts")], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NODE_OPTIONS_JSON: JSON.stringify({ url, ...over }) },
  });
  const events: Record<string, unknown>[] = [];
  const waiting: ((r: Record<string, unknown>) => void)[] = [];
  let ready!: () => void;
  const started = new Promise<void>((r) => (ready = r));
  (async () => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stdout) {
      buf += dec.decode(chunk, { stream: true });
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        const rec = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
        buf = buf.slice(i + 1);
        if (rec.event === "ready") ready();
        else if (rec.event) events.push(rec);
        else waiting.shift()?.(rec);
      }
    }
  })();
  await Promise.race([
    started,
    proc.exited.then(async (code) => {
      throw new Error(`node child exited with ${code}: ${await new Response(proc.stderr).text()}`);
    }),
  ]);
  const kill = async (signal: NodeJS.Signals = "SIGKILL") => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill("SIGCONT");
    proc.kill(signal);
    await proc.exited;
  };
  return {
    proc,
    events,
    ask(cmd) {
      return new Promise((resolve) => {
        waiting.push(resolve);
        proc.stdin.write(`${JSON.stringify(cmd)}\n`);
        proc.stdin.flush();
      });
    },
    kill,
    [Symbol.asyncDispose]: () => kill(),
  };
}
