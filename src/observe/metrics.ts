/**
 * Prometheus metrics: counters, gauges and histograms rendered in the text exposition format 0.0.4.
 *
 * Owns: `Metrics` (a registry handle passed to modules; never a process global), metric types.
 * Names follow `mta_<module>_<thing>_<unit>`; label sets must have bounded cardinality.
 */

type Labels = Record<string, string>;

function labelKey(labels: Labels | undefined): string {
  if (!labels) return "";
  const keys = Object.keys(labels);
  // The hot path (one label, as most counters have): no sort, no array.
  if (keys.length === 1) return `${keys[0]}="${escapeLabel(labels[keys[0]!]!)}"`;
  keys.sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(",");
}

const NEEDS_ESCAPE = /[\\\n"]/;

function escapeLabel(v: string): string {
  if (!NEEDS_ESCAPE.test(v)) return v;
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function fmt(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Number.POSITIVE_INFINITY) return "+Inf";
  if (n === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(n);
}

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  render(out: string[]): void;
}

export class Counter implements Metric {
  readonly type = "counter";
  private values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  inc(labels?: Labels, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  get(labels?: Labels): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(out: string[]): void {
    if (this.values.size === 0) out.push(`${this.name} 0`);
    for (const [k, v] of this.values) out.push(k ? `${this.name}{${k}} ${fmt(v)}` : `${this.name} ${fmt(v)}`);
  }
}

export class Gauge implements Metric {
  readonly type = "gauge";
  private values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly collect?: (set: (value: number, labels?: Labels) => void) => void,
  ) {}
  set(value: number, labels?: Labels): void {
    this.values.set(labelKey(labels), value);
  }
  inc(labels?: Labels, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  dec(labels?: Labels, by = 1): void {
    this.inc(labels, -by);
  }
  get(labels?: Labels): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(out: string[]): void {
    if (this.collect) {
      this.values.clear();
      this.collect((value, labels) => this.set(value, labels));
    }
    if (this.values.size === 0) out.push(`${this.name} 0`);
    for (const [k, v] of this.values) out.push(k ? `${this.name}{${k}} ${fmt(v)}` : `${this.name} ${fmt(v)}`);
  }
}

export class Histogram implements Metric {
  readonly type = "histogram";
  private series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[],
  ) {}
  observe(value: number, labels?: Labels): void {
    const k = labelKey(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  render(out: string[]): void {
    const series = this.series.size
      ? this.series
      : new Map([["", { counts: this.buckets.map(() => 0), sum: 0, count: 0 }]]);
    for (const [k, s] of series) {
      const pre = k ? `${k},` : "";
      for (let i = 0; i < this.buckets.length; i++) {
        out.push(`${this.name}_bucket{${pre}le="${fmt(this.buckets[i]!)}"} ${s.counts[i]}`);
      }
      out.push(`${this.name}_bucket{${pre}le="+Inf"} ${s.count}`);
      const suffix = k ? `{${k}}` : "";
      out.push(`${this.name}_sum${suffix} ${fmt(s.sum)}`);
      out.push(`${this.name}_count${suffix} ${s.count}`);
    }
  }
}

export class Metrics {
  private metrics = new Map<string, Metric>();

  counter(name: string, help: string): Counter {
    return this.register(name, () => new Counter(name, help)) as Counter;
  }
  gauge(
    name: string,
    help: string,
    collect?: (set: (value: number, labels?: Labels) => void) => void,
  ): Gauge {
    return this.register(name, () => new Gauge(name, help, collect)) as Gauge;
  }
  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.register(name, () => new Histogram(name, help, buckets)) as Histogram;
  }

  private register(name: string, make: () => Metric): Metric {
    const existing = this.metrics.get(name);
    if (existing) return existing;
    const m = make();
    this.metrics.set(name, m);
    return m;
  }

  /** The registry in Prometheus text format. */
  render(): string {
    const out: string[] = [];
    for (const m of this.metrics.values()) {
      out.push(`# HELP ${m.name} ${m.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
      out.push(`# TYPE ${m.name} ${m.type}`);
      m.render(out);
    }
    return `${out.join("\n")}\n`;
  }
}

/** Latency buckets in seconds, from 100 µs to 30 s. */
export const LATENCY_BUCKETS_S = [
  0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];
