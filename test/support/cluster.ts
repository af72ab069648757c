/**
 * Several `mta serve` processes (dist/mta) against one real redis-server: the cluster end-to-end tests.
 *
 * Owns: `clusterConfig` (the test config plus a cluster: section), `startNodes`, `inject` (messages
 * through the control API), `healthz`, `api` (a JSON call to a node's control API), `until`.
 */
import { join } from "node:path";
import { CONTROL_TOKEN, type StartedMta, startMta, testConfig } from "./mta.ts";
import { freePort } from "./sink.ts";

export function clusterConfig(
  dir: string,
  redisUrl: string,
  node: string,
  opts: { lease?: string; timeout?: string; extra?: string; cluster?: string; controlPort?: number } = {},
): string {
  return testConfig(
    dir,
    [
      "cluster:",
      `  redis: ${redisUrl}`,
      `  node: ${node}`,
      `  lease: ${opts.lease ?? "2s"}`,
      `  timeout: ${opts.timeout ?? "300ms"}`,
      ...(opts.cluster ? [opts.cluster] : []),
      opts.extra ?? "",
    ].join("\n"),
  ).replace(
    "control: { address: 127.0.0.1:0 }",
    // Over TCP the API needs a token; every node has the same one (node-to-node calls carry it).
    `control: { address: 127.0.0.1:${opts.controlPort ?? 0}, token: ${CONTROL_TOKEN} }`,
  );
}

/**
 * `n` nodes named node-a, node-b, ...; each in its own sub-directory of `dir`. Resolves once every
 * node has seen all `n` alive in the registry (unless `waitAlive` is false, e.g. with Redis down).
 */
export async function startNodes(
  dir: string,
  redisUrl: string,
  n: number,
  opts: {
    lease?: string;
    timeout?: string;
    extra?: string | ((node: string) => string);
    waitAlive?: boolean;
    /** Each node named <node>.test (its EHLO name: a sink tells the nodes apart); default mta.test. */
    hostnames?: boolean;
    /** More lines of the cluster: section (indented). */
    cluster?: string;
  } = {},
): Promise<(StartedMta & { node: string })[]> {
  const names = Array.from({ length: n }, (_, i) => `node-${String.fromCharCode(97 + i)}`);
  const nodes = await Promise.all(
    names.map(async (node) => {
      const d = join(dir, node);
      await Bun.write(join(d, ".keep"), "");
      const extra = typeof opts.extra === "function" ? opts.extra(node) : opts.extra;
      // A fixed control port: `mta queue` reaches the daemon through control.address.
      const config = clusterConfig(d, redisUrl, node, {
        controlPort: freePort(),
        ...(opts.lease ? { lease: opts.lease } : {}),
        ...(opts.timeout ? { timeout: opts.timeout } : {}),
        ...(extra !== undefined ? { extra } : {}),
        ...(opts.cluster ? { cluster: opts.cluster } : {}),
      });
      const mta = await startMta({
        dir: d,
        config: opts.hostnames ? config.replace("hostname: mta.test", `hostname: ${node}.test`) : config,
        env: { MTA_LOOPBACK_ONLY: "1" },
      });
      return Object.assign(mta, { node });
    }),
  );
  if (opts.waitAlive !== false) {
    const end = Date.now() + 10_000;
    for (const m of nodes)
      for (;;) {
        const r = await api(m, "GET", "/api/v1/cluster/nodes").catch(() => undefined);
        if (r?.json.nodesAlive === n) break;
        if (Date.now() > end)
          throw new Error(`${m.node} did not see ${n} nodes alive: ${JSON.stringify(r?.json)}`);
        await Bun.sleep(20);
      }
  }
  return nodes;
}

export async function api<T = Record<string, unknown>>(
  mta: StartedMta,
  method: "GET" | "POST",
  path: string,
  body?: unknown,
): Promise<{ status: number; json: T }> {
  const headers: Record<string, string> = { authorization: `Bearer ${CONTROL_TOKEN}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`http://127.0.0.1:${mta.controlPort}${path}`, {
    method,
    headers,
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, json: (await res.json()) as T };
}

/** The node's /metrics text (the token is needed over TCP when one is set). */
export async function metricsText(mta: StartedMta): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${mta.controlPort}/metrics`, {
    headers: { authorization: `Bearer ${CONTROL_TOKEN}` },
  });
  return res.text();
}

export async function healthz(mta: StartedMta): Promise<{ status: number; json: Record<string, unknown> }> {
  return api(mta, "GET", "/healthz");
}

/** Injects `count` messages (subjects "<tag> <i>") to `to(i)` through the control API, 500 a request. */
export async function inject(
  mta: StartedMta,
  count: number,
  to: (i: number) => string,
  tag = "msg",
): Promise<void> {
  for (let start = 0; start < count; start += 500) {
    const messages = [];
    for (let i = start; i < Math.min(count, start + 500); i++)
      messages.push({
        sender: "app@origin.test",
        recipients: [to(i)],
        subject: `${tag} ${i}`,
        text: `body ${i}\n`,
      });
    const r = await api(mta, "POST", "/api/v1/inject", { messages });
    if (r.status !== 200) throw new Error(`inject answered ${r.status}: ${JSON.stringify(r.json)}`);
  }
}

/** Polls `fn` every 10 ms until it gives a value (not undefined); throws after `timeoutMs`. */
export async function until<T>(
  fn: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 10_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error("timed out");
    await Bun.sleep(10);
  }
}
