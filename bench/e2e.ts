/**
 * End to end: load generator → `mta serve` → smtp-sink, and the same through Postfix in the same run.
 * Usage: bun bench/e2e.ts [count=20000] [--no-postfix] [--reps 3] [--dests 1,100,10000] [--json]
 * (--json also prints the rows as one `BENCH_JSON [...]` line, for bench/all.ts)
 *
 * - 1 destination: Postfix's smtp-source → mta (route k1.test → one smtp-sink), as bench/postfix does.
 * - 100 and 10,000 destinations: smtp-source cannot vary the domain, so bench/_injector.ts sends
 *   `<seq>b@d<seq % K>.test`; a DNS server on loopback (unbound with the zone as local data when it is
 *   installed, else test/support's) answers MX mx.dN.test → A 127.(..).(..).(..),
 *   one address per destination, and a single smtp-sink listening on 0.0.0.0 receives them all (it only
 *   receives; every connection goes to 127/8). Postfix's figure for 100 uses its anchor script (100
 *   next hops chosen by the local part, bench/postfix/bench-e2e.sh); for 10,000, a hash
 *   transport table sends each domain to its own address on the same sink, fed by the same injector.
 * Wall time runs from the first injected message to the sink's count reaching N.
 * --reps N: every row is the median of N runs, mta and Postfix alike (each mta run with a fresh spool,
 * sink and daemon); the conditions give the range of the runs, to judge the noise of a shared machine.
 * MTA_BENCH_PROFILE=<dir> runs the daemon from source under Bun's sampling profiler.
 * MTA_BENCH_TLS=<mode> sets delivery.domains.default.tls (default: the product's default, auto, which
 * looks up each MX-routed domain's MTA-STS and TLS-RPT records: two TXT questions more per domain).
 * MTA_BENCH_BINARY=<path> benchmarks another build (before/after runs).
 * MTA_BENCH_DNS_STATS=1 prints the daemon's DNS counters (questions by type and outcome, cache hits)
 * after each run; MTA_BENCH_METRICS=<prefix>,<prefix> prints the metrics whose names start so.
 * MTA_BENCH_DELIVERIES=<file> appends the daemon's delivery log (reception and delivery events) to
 * <file>, to see per-message latency: how the 5 s tail of issue 15 was found.
 * MTA_BENCH_STDERR=<file> appends the daemon's stderr (its log, and what BUN_JSC_report*CompileTimes=1
 * print: the JIT's compilations, 1.7 s of compile time in a 10,000-destination run) to <file>.
 */
const TLS_MODE = process.env.MTA_BENCH_TLS;
const GLOBAL_CAP = Number(process.env.MTA_BENCH_MAX_CONNECTIONS ?? 5000);
import { spawnSync } from "bun";
import { join } from "node:path";
import { startDnsServer } from "../test/support/dnsServer.ts";
import { inject } from "./_injector.ts";
import {
  cpuSeconds,
  destinationIp,
  destinationZone,
  freePort,
  median,
  postfixAnchor,
  postfixInstalled,
  printTable,
  type Row,
  rssBytes,
  SMTP_SINK,
  SMTP_SOURCE,
  setupPostfix,
  smtpSource,
  startBenchMta,
  stopPostfix,
  tmp,
  startCountingSink,
  startUnbound,
  UNBOUND,
  waitCount,
} from "./_support.ts";

const count = Number(/^\d+$/.test(process.argv[2] ?? "") ? process.argv[2] : 20_000);
const json = process.argv.includes("--json");
const reps = Number(process.argv[process.argv.indexOf("--reps") + 1] ?? 3) || 3;
const withPostfix = !process.argv.includes("--no-postfix") && postfixInstalled();
const destsArg = process.argv.indexOf("--dests");
const destCounts =
  destsArg > 0
    ? (process.argv[destsArg + 1] ?? "")
        .split(",")
        .map(Number)
        .filter((n) => n > 0)
    : [1, 100, 10_000];
if (!SMTP_SINK || !SMTP_SOURCE) {
  console.log("smtp-sink/smtp-source are not installed (apt-get install postfix): nothing to measure");
  process.exit(0);
}

/**
 * Postfix with `dests` destinations (its anchor scripts spell out at most 100 next hops), fed by the same
 * injector at 127.0.0.1:2525, delivering to the same sink (listening on 0.0.0.0), wall time from the
 * first message to the sink's count growing by `count`. Two ways:
 * - "table": a hash transport table sends d<i>.test to [destinationIp(i)]:sinkPort (no DNS at all);
 * - "dns": Postfix's smtp client looks up each domain's MX and its address, as mta does, from the same
 *   unbound (answering on POSTFIX_RESOLVER:53, which the chroot's resolv.conf names; nothing else is
 *   asked), and connects to port 25, where the sink listens in that case.
 * The transport table, delivery settings and the chroot's resolv.conf are put back afterwards. Returns msgs/s.
 */
async function postfixManyDestinations(
  dests: number,
  sinkPort: number,
  received: () => number,
  how: "table" | "dns",
): Promise<number> {
  const sh = (cmd: string) => spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  setupPostfix();
  let settings: string;
  if (how === "table") {
    const lines: string[] = [];
    for (let i = 0; i < dests; i++) lines.push(`d${i}.test smtp:[${destinationIp(i)}]:${sinkPort}`);
    await Bun.write("/etc/postfix/bench_many", `${lines.join("\n")}\n`);
    settings =
      "postmap hash:/etc/postfix/bench_many && postconf -e 'transport_maps = hash:/etc/postfix/bench_many'";
  } else {
    // The smtp client runs chrooted (Debian's master.cf): it reads the chroot's copy of resolv.conf.
    await Bun.write(`${POSTFIX_CHROOT}/etc/resolv.conf`, `nameserver ${POSTFIX_RESOLVER}\n`);
    settings =
      "postconf -e 'transport_maps =' 'default_transport = smtp' 'relay_transport = smtp' 'smtp_dns_support_level = enabled' 'smtp_host_lookup = dns'";
  }
  sh(
    `${settings} 'smtpd_recipient_restrictions = permit_mynetworks, reject' 'defer_transports =' && postsuper -d ALL >/dev/null 2>&1; postfix reload >/dev/null 2>&1; sleep 1.5`,
  );
  const base = received();
  const t0 = performance.now();
  await inject({
    host: "127.0.0.1",
    port: 2525,
    count,
    sessions: 50,
    sizeBytes: 1000,
    domain: (s) => `d${s % dests}.test`,
  });
  const got = (await waitCount(received, base + count, 120_000)) - base;
  const rate = got / ((performance.now() - t0) / 1000);
  sh(
    "postconf -e 'transport_maps = regexp:/etc/postfix/bench_transport' 'default_transport = error:5.1.2 no benchmark route' 'relay_transport = error:5.1.2 no benchmark route' 'smtp_dns_support_level = disabled' 'smtp_host_lookup = native' && postsuper -d ALL >/dev/null 2>&1; postfix reload >/dev/null 2>&1",
  );
  if (how === "dns") sh(`cp /etc/resolv.conf ${POSTFIX_CHROOT}/etc/resolv.conf`);
  console.error(
    `postfix (${how}), ${dests} destinations: ${got}/${count} received, ${rate.toFixed(0)} msgs/s`,
  );
  return rate;
}

/** Where Postfix's chrooted services live (Debian). */
const POSTFIX_CHROOT = "/var/spool/postfix";
/** The loopback address where this run's unbound also answers on port 53, for Postfix's resolver. */
const POSTFIX_RESOLVER = "127.0.0.153";

/** Postfix looks up MX hosts and connects to port 25: it can when the port is free for the sink. */
function port25Free(): boolean {
  const r = spawnSync(["bash", "-c", "ss -Hltn 'sport = :25' | wc -l"], { stdout: "pipe" });
  return r.exitCode === 0 && r.stdout.toString().trim() === "0";
}

interface MtaRun {
  rate: number;
  got: number;
  injectedS: number;
  cpuMs: number;
  rssMiB: number;
  /** CPU of the receiving smtp-sink, of this process (the generator, and the DNS server when it runs here) and of unbound, ms per message. */
  sinkCpuMs: number;
  harnessCpuMs: number;
  dnsCpuMs: number | undefined;
}

/** One measurement of mta: a fresh spool, sink, DNS zone and daemon; wall time first message → last received. */
async function mtaOnce(dests: number): Promise<MtaRun & { postfix?: number; postfixDns?: number }> {
  using dir = tmp("mta-bench-e2e-");
  // Postfix with many destinations measured after this run delivers by MX, to port 25.
  const postfixDns = withPostfix && dests > 100 && UNBOUND !== undefined && port25Free();
  const sinkPort = postfixDns ? 25 : freePort();
  using sink = startCountingSink(dir.path, dests === 1 ? `127.0.0.1:${sinkPort}` : `0.0.0.0:${sinkPort}`);
  await Bun.sleep(300);
  const zone = destinationZone(dests === 1 ? 0 : dests);
  // unbound when installed (a real resolver, as in production), else the test suite's DNS server.
  await using dns =
    dests > 1 && UNBOUND
      ? await startUnbound(dir.path, zone, postfixDns ? POSTFIX_RESOLVER : undefined)
      : await startDnsServer(zone);
  await using mta = await startBenchMta(
    dir.path,
    [
      "hostname: bench.mta.test",
      `spool: { dir: ${join(dir.path, "spool")}, sync: true }`,
      "listen: [{ address: 127.0.0.1:0, max_connections_per_ip: 5000 }]",
      "control: { address: 127.0.0.1:0 }",
      `dns: { servers: ["127.0.0.1:${dns.port}"] }`,
      `delivery: { port: ${sinkPort}, routes: { k1.test: "127.0.0.1:${sinkPort}" }, max_connections: ${GLOBAL_CAP}, domains: { default: { max_connections: 50${TLS_MODE ? `, tls: ${TLS_MODE}` : ""} } } }`,
      `log: { level: info, format: json, deliveries: "${process.env.MTA_BENCH_DELIVERIES ?? ""}" }`,
    ].join("\n"),
  );
  const cpu0 = cpuSeconds(mta.pid);
  const sink0 = cpuSeconds(sink.proc.pid);
  const dnsPid = "pid" in dns ? dns.pid : undefined;
  const dns0 = dnsPid === undefined ? 0 : cpuSeconds(dnsPid);
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  let injectedS: number;
  if (dests === 1) {
    const src = smtpSource({
      host: "127.0.0.1",
      port: mta.smtpPort,
      count,
      sizeBytes: 1000,
      sessions: 50,
      to: "b@k1.test",
    });
    injectedS = src.wallS;
  } else {
    const r = await inject({
      host: "127.0.0.1",
      port: mta.smtpPort,
      count,
      sessions: 50,
      sizeBytes: 1000,
      domain: (s) => `d${s % dests}.test`,
    });
    injectedS = r.wallS;
  }
  const got = await waitCount(sink.received, count, 120_000);
  const wallS = (performance.now() - t0) / 1000;
  const prefixes = [
    ...(process.env.MTA_BENCH_DNS_STATS === "1" ? ["mta_dns_"] : []),
    ...(process.env.MTA_BENCH_METRICS ?? "").split(",").filter(Boolean),
  ];
  if (prefixes.length) {
    const text = await (await fetch(`http://127.0.0.1:${mta.controlPort}/metrics`)).text();
    console.error(
      text
        .split("\n")
        .filter((l) => prefixes.some((p) => l.startsWith(p)))
        .join("\n"),
    );
  }
  const run: MtaRun & { postfix?: number; postfixDns?: number } = {
    rate: got / wallS,
    got,
    injectedS,
    cpuMs: ((cpuSeconds(mta.pid) - cpu0) * 1000) / count,
    rssMiB: Math.round(rssBytes(mta.pid) / 2 ** 20),
    sinkCpuMs: ((cpuSeconds(sink.proc.pid) - sink0) * 1000) / count,
    dnsCpuMs: dnsPid === undefined ? undefined : ((cpuSeconds(dnsPid) - dns0) * 1000) / count,
    harnessCpuMs: (() => {
      const u = process.cpuUsage(self0);
      return (u.user + u.system) / 1000 / count;
    })(),
  };
  // Postfix with many destinations runs here: it delivers to this run's sink.
  if (withPostfix && dests > 100) {
    await mta.stop();
    run.postfix = await postfixManyDestinations(dests, sinkPort, sink.received, "table");
    if (postfixDns) run.postfixDns = await postfixManyDestinations(dests, sinkPort, sink.received, "dns");
  }
  return run;
}

const range = (xs: number[]) =>
  `${Math.round(Math.min(...xs)).toLocaleString("en-US")}–${Math.round(Math.max(...xs)).toLocaleString("en-US")}`;

const rows: Row[] = [];
for (const dests of destCounts) {
  const runs: (MtaRun & { postfix?: number; postfixDns?: number })[] = [];
  for (let rep = 0; rep < reps; rep++) runs.push(await mtaOnce(dests));
  const rates = runs.map((r) => r.rate);
  // The run whose rate is the median gives the row's other figures.
  const mid = runs.find((r) => r.rate === median(rates)) ?? runs[Math.floor(runs.length / 2)]!;
  let pf: number | undefined;
  let pfRange = "";
  let pfHow = "";
  if (withPostfix && dests > 100) {
    const table = runs.map((r) => r.postfix ?? Number.NaN);
    const dns = runs.map((r) => r.postfixDns ?? Number.NaN);
    const tableNote = `with a hash transport table (no DNS) ${Math.round(median(table)).toLocaleString("en-US")} msgs/s${reps > 1 ? `, runs ${range(table)}` : ""}`;
    // The ratio is against Postfix doing the same lookups (MX and address per domain) as mta, when it ran.
    const sameLookups = dns.every((x) => !Number.isNaN(x));
    const chosen = sameLookups ? dns : table;
    pf = median(chosen);
    pfRange = reps > 1 ? ` runs ${range(chosen)}` : "";
    pfHow = sameLookups
      ? `; Postfix: MX and A lookups from the same unbound, delivering to port 25 of the same sink (mta asks two TXT questions more per domain, MTA-STS and TLS-RPT); Postfix ${tableNote}`
      : "; Postfix: a hash transport table (no DNS; port 25 was taken, so no MX-routed Postfix run)";
  }
  if (withPostfix && dests <= 100) {
    if (rows.length === 0) setupPostfix();
    const pfRates: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      pfRates.push(
        postfixAnchor("bench-e2e.sh", [
          "1000",
          String(Math.min(count, 10_000)),
          "50",
          String(dests),
          String(rep),
        ]).rate,
      );
    }
    pf = median(pfRates);
    pfRange = reps > 1 ? ` runs ${range(pfRates)}` : "";
  }
  rows.push({
    figure: "end to end",
    conditions: `1 KB, ${dests.toLocaleString("en-US")} destination${dests > 1 ? "s" : ""}${TLS_MODE ? `, tls: ${TLS_MODE}` : ""}, ${count.toLocaleString("en-US")} msgs, 50 inbound sessions, fdatasync on; received ${mid.got}; injection ${mid.injectedS.toFixed(1)} s; mta CPU ${mid.cpuMs.toFixed(3)} ms/msg, RSS ${mid.rssMiB} MiB, smtp-sink CPU ${mid.sinkCpuMs.toFixed(3)} ms/msg${dests > 1 ? (mid.dnsCpuMs === undefined ? `, generator and DNS server CPU ${mid.harnessCpuMs.toFixed(3)} ms/msg` : `, generator CPU ${mid.harnessCpuMs.toFixed(3)} ms/msg, unbound CPU ${mid.dnsCpuMs.toFixed(3)} ms/msg`) : ""}; median of ${reps}${reps > 1 ? ` (mta runs ${range(rates)} msgs/s${pfRange ? `; Postfix${pfRange}` : ""})` : ""}${pfHow}`,
    mta: median(rates),
    postfix: pf,
    unit: "msgs/s",
  });
}
if (withPostfix) stopPostfix();
printTable("End to end (generator → mta serve / Postfix → smtp-sink)", rows);
if (json) console.log(`BENCH_JSON ${JSON.stringify(rows)}`);
