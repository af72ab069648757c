/**
 * A cluster node in a child process, for tests that kill -9 or SIGSTOP it. Reads JSON commands on
 * stdin, answers one JSON line each on stdout, and prints event lines ({ event: ... }) as they happen.
 *
 * Commands: { op: "acquire", site, limit, count } -> { granted }; { op: "status" } -> { mode,
 * usable, lost, held }; { op: "take", site, rate: { count, perMs }, n } -> { taken }.
 */
import { Cluster, type Lease } from "../../src/cluster/index.ts";
import { nodeOptions } from "./_harness.ts";

const o = JSON.parse(process.env.NODE_OPTIONS_JSON ?? "{}") as { url: string } & Record<string, unknown>;
const cluster = await Cluster.start(nodeOptions(o.url, o));
const leases: Lease[] = [];
const out = (x: unknown) => process.stdout.write(`${JSON.stringify(x)}\n`);
cluster.onMode((mode) => out({ event: "mode", mode }));
out({ event: "ready" });

let buf = "";
for await (const chunk of Bun.stdin.stream()) {
  buf += new TextDecoder().decode(chunk);
  for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
    const cmd = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
    buf = buf.slice(i + 1);
    if (cmd.op === "acquire") {
      let granted = 0;
      for (let n = 0; n < Number(cmd.count ?? 1); n++) {
        const l = await cluster.leases.acquire({ site: String(cmd.site), limit: Number(cmd.limit) });
        if (!l) continue;
        granted++;
        l.onLost = (reason) => out({ event: "lost", site: l.site, reason, atMs: performance.now() });
        leases.push(l);
      }
      out({ granted });
    } else if (cmd.op === "status") {
      out({
        mode: cluster.mode,
        usable: leases.filter((l) => l.usable).length,
        lost: leases.filter((l) => l.lost).length,
        held: cluster.leases.held,
      });
    } else if (cmd.op === "take") {
      let taken = 0;
      for (let n = 0; n < Number(cmd.n ?? 1); n++)
        if (
          (await cluster.rates.take(
            String(cmd.site),
            "msg",
            cmd.rate as { count: number; perMs: number },
          )) === 0
        )
          taken++;
      out({ taken });
    }
  }
}
