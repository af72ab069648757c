/**
 * Process-level metrics: memory, CPU, open files, start time, build info.
 *
 * Owns: registering the `process_*` and `mta_build_info` series on a `Metrics` registry.
 */
import { readdirSync } from "node:fs";
import type { Metrics } from "./metrics.ts";

export function registerProcessMetrics(metrics: Metrics, version: string): void {
  const startS = Date.now() / 1000 - process.uptime();
  metrics.gauge("mta_build_info", "Build information; the value is always 1", (set) =>
    set(1, { version, runtime: `bun ${Bun.version}` }),
  );
  metrics.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch", (set) =>
    set(startS),
  );
  metrics.gauge("process_resident_memory_bytes", "Resident set size", (set) =>
    set(process.memoryUsage.rss()),
  );
  metrics.gauge("process_heap_bytes", "JavaScript heap in use", (set) => set(process.memoryUsage().heapUsed));
  metrics.gauge("process_cpu_seconds_total", "User and system CPU time", (set) => {
    const u = process.cpuUsage();
    set((u.user + u.system) / 1e6);
  });
  metrics.gauge("process_open_fds", "Open file descriptors", (set) => {
    try {
      set(readdirSync("/proc/self/fd").length);
    } catch {
      set(Number.NaN);
    }
  });
}
