/**
 * What outbound TLS policy costs per new connection: the STARTTLS handshake, the certificate check
 * (WebPKI for MTA-STS, TLSA for DANE) and the policy lookup, against plain text and opportunistic TLS.
 * One Deliverer (one message per connection, 1 KB) to a STARTTLS sink in its own process on loopback;
 * policies planned by TlsPolicies exactly as `mta serve` does, against unbound validating a signed
 * zone (DANE) and a loopback HTTPS policy host (MTA-STS). Prints tables; never passes or fails.
 *
 *   npx bun bench/tls.ts [connectionsPerCase=400] [rounds=3]
 *
 * Postfix: its DANE needs the system resolver (port 53) and it has no MTA-STS of its own, so there is
 * no Postfix figure for those rows on this machine; see the report in the README.
 */
import { spawn } from "bun";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createResolver } from "../src/dns/index.ts";
import {
  type AttemptTarget,
  Deliverer,
  type OutboundMessage,
  RFC5321_TIMEOUTS,
} from "../src/deliverer/index.ts";
import { silentLogger } from "../src/observe/index.ts";
import { type TlsPlan, TlsPolicies } from "../src/tlspolicy/index.ts";
import { startHttpsServer, stsPolicyResponse } from "../test/support/httpsServer.ts";
import { createTestCa, tlsaDigest } from "../test/support/testCa.ts";
import { startUnbound } from "../test/support/unbound.ts";
import { freePort, machine, tmp } from "./_support.ts";

const perCase = Number(process.argv[2] ?? 400);
const rounds = Number(process.argv[3] ?? 3);
using dir = tmp("mta-bench-tls-");
const ca = createTestCa(dir.path);
const mxCert = ca.issue("mx.bench.test", { sans: ["mx.bench.test", "mx.dane.test"] });
const port = freePort("127.0.0.1");

const sink = spawn(
  ["bun", join(import.meta.dir, "_tlsSink.ts"), "127.0.0.1", String(port), mxCert.chainFile, mxCert.keyFile],
  {
    stdout: "pipe",
    stderr: "inherit",
  },
);
const reader = sink.stdout.getReader();
await reader.read();
reader.releaseLock();

const policyCert = ca.issue("mta-sts.bench.test");
await using web = await startHttpsServer({
  cert: policyCert.chainPem,
  key: policyCert.keyPem,
  handler: () => stsPolicyResponse({ mode: "enforce", mx: ["mx.bench.test"], maxAgeS: 86400 }),
});
await using unbound = await startUnbound(dir.path, [
  {
    name: "dane.test",
    signed: true,
    records: [
      "@ IN MX 10 mx",
      "mx IN A 127.0.0.1",
      `_${port}._tcp.mx IN TLSA 3 1 1 ${tlsaDigest(mxCert.certPem, 1, 1, dir.path)}`,
    ],
  },
  {
    name: "bench.test",
    signed: false,
    records: [
      "@ IN MX 10 mx",
      "mx IN A 127.0.0.1",
      '_mta-sts IN TXT "v=STSv1; id=1;"',
      "mta-sts IN A 127.0.0.1",
    ],
  },
]);

function policies(spool: string) {
  // The resolver caches for the answers' TTL (300 s): the steady state of a busy destination.
  const resolver = createResolver({
    servers: [{ host: unbound.host, port: unbound.port }],
    timeoutMs: 2000,
    attempts: 1,
    dnssec: true,
  });
  return TlsPolicies.open({
    spoolDir: join(dir.path, spool),
    resolver,
    prefer: "ipv4",
    ca: ca.certPem,
    dane: { enabled: true },
    mtaSts: { enabled: true, port: web.port, fetchTimeoutMs: 5000, maxPolicyBytes: 65536 },
    tlsRpt: {
      enabled: false,
      intervalMs: 86_400_000,
      organization: "",
      contact: "",
      submitter: "",
      from: "",
      submitMail: async () => {},
    },
    log: silentLogger(),
  });
}

const body = new TextEncoder().encode(
  `${"From: bench@client.test\r\nSubject: bench\r\n\r\n".padEnd(1022, "x")}\r\n`,
);
const message = (i: number): OutboundMessage => ({
  id: `B${i}`,
  sender: "bench@client.test",
  recipients: [{ index: 0, address: `r${i}@bench.test` }],
  body,
  needsSmtputf8: false,
  eightBit: false,
});

type Case = {
  name: string;
  domain: string;
  mode: "off" | "opportunistic" | "auto";
  host: string;
  /** Hand the CA bundle to the TLS stack without checking anything: what the bundle alone costs. */
  withCa?: boolean;
};
const CASES: Case[] = [
  { name: "plain text (tls: off)", domain: "bench.test", mode: "off", host: "mx.bench.test" },
  {
    name: "STARTTLS, unverified (opportunistic)",
    domain: "bench.test",
    mode: "opportunistic",
    host: "mx.bench.test",
  },
  {
    name: "STARTTLS, unverified, CA bundle in the TLS context",
    domain: "bench.test",
    mode: "opportunistic",
    host: "mx.bench.test",
    withCa: true,
  },
  {
    name: "MTA-STS enforce (WebPKI + name), policy cached",
    domain: "bench.test",
    mode: "auto",
    host: "mx.bench.test",
  },
  { name: "DANE-EE 3 1 1, TLSA cached", domain: "dane.test", mode: "auto", host: "mx.dane.test" },
];

/** The attempt's target as `mta serve` builds it: the plan's hosts with their TLS policies. */
async function targetFor(c: Case, tls: TlsPolicies): Promise<AttemptTarget> {
  const plan: TlsPlan = await tls.plan({
    domain: c.domain,
    hosts: [{ name: c.host, ip: "127.0.0.1", port }],
    viaMx: true,
    mode: c.mode,
    verify: false,
  });
  return {
    hosts: plan.hosts.map((h) => ({
      name: h.name,
      ip: h.ip,
      port: h.port,
      tls: c.withCa ? { ...h.tls, ca: ca.certPem, key: `${h.tls.key}/ca` } : h.tls,
    })),
    ehloName: "client.test",
    tls: "opportunistic",
    tlsVerify: false,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Sequential new connections: latency and this process's CPU per connection, plan included. */
async function sequential(
  c: Case,
  tls: TlsPolicies,
): Promise<{ msMedian: number; msP90: number; cpuMs: number; policy: string; failed: number }> {
  const d = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: 1,
    idleTimeoutMs: 1000,
    log: silentLogger(),
  });
  const lat: number[] = [];
  let failed = 0;
  let policy = "";
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < perCase; i++) {
    const t0 = performance.now();
    const r = await d.deliver(await targetFor(c, tls), message(i));
    lat.push(performance.now() - t0);
    if (r.recipients[0]!.kind !== "delivered") failed++;
    policy = r.tls ? `${r.tls.policy}${r.tls.verified ? " (verified)" : ""}` : "plain";
  }
  const cpu = process.cpuUsage(cpu0);
  await d.close();
  const sorted = [...lat].sort((a, b) => a - b);
  return {
    msMedian: median(lat),
    msP90: sorted[Math.floor(sorted.length * 0.9)]!,
    cpuMs: (cpu.user + cpu.system) / 1000 / perCase,
    policy,
    failed,
  };
}

/** 50 concurrent workers, a new connection per message: messages/s. */
async function concurrent(c: Case, tls: TlsPolicies): Promise<number> {
  const d = new Deliverer({
    timeouts: RFC5321_TIMEOUTS,
    maxMessagesPerConnection: 1,
    idleTimeoutMs: 1000,
    log: silentLogger(),
  });
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next < perCase * 2) {
        const i = next++;
        await d.deliver(await targetFor(c, tls), message(i));
      }
    }),
  );
  const rate = (perCase * 2) / ((performance.now() - t0) / 1000);
  await d.close();
  return rate;
}

/** The policy lookup alone: warm (everything cached) and cold (a new process's first message). */
async function lookups(): Promise<{
  stsWarmUs: number;
  daneWarmUs: number;
  stsColdMs: number;
  daneColdMs: number;
}> {
  const warm = policies("warm");
  const plan = (domain: string, host: string) =>
    warm.plan({
      domain,
      hosts: [{ name: host, ip: "127.0.0.1", port }],
      viaMx: true,
      mode: "auto",
      verify: false,
    });
  await plan("bench.test", "mx.bench.test");
  await plan("dane.test", "mx.dane.test");
  const N = 20_000;
  let t0 = performance.now();
  for (let i = 0; i < N; i++) await plan("bench.test", "mx.bench.test");
  const stsWarmUs = ((performance.now() - t0) * 1000) / N;
  t0 = performance.now();
  for (let i = 0; i < N; i++) await plan("dane.test", "mx.dane.test");
  const daneWarmUs = ((performance.now() - t0) * 1000) / N;
  await warm.close();
  const stsCold: number[] = [];
  const daneCold: number[] = [];
  for (let i = 0; i < 20; i++) {
    // Empty caches: a new resolver (unbound keeps no cache either) and a new spool directory.
    const cold = policies(`cold-${i}`);
    t0 = performance.now();
    await cold.plan({
      domain: "bench.test",
      hosts: [{ name: "mx.bench.test", ip: "127.0.0.1", port }],
      viaMx: true,
      mode: "auto",
      verify: false,
    });
    stsCold.push(performance.now() - t0);
    t0 = performance.now();
    await cold.plan({
      domain: "dane.test",
      hosts: [{ name: "mx.dane.test", ip: "127.0.0.1", port }],
      viaMx: true,
      mode: "auto",
      verify: false,
    });
    daneCold.push(performance.now() - t0);
    await cold.close();
  }
  return { stsWarmUs, daneWarmUs, stsColdMs: median(stsCold), daneColdMs: median(daneCold) };
}

console.log(
  `# outbound TLS per new connection: ${machine()}; load average at start ${loadavg()[0]!.toFixed(1)}`,
);
console.log(
  `# Deliverer -> STARTTLS sink (separate Bun process, ECDSA P-256 certificate) on 127.0.0.1:${port}, 1 KB, 1 message per connection`,
);
console.log(
  `# ${perCase} sequential connections per case and round, ${rounds} rounds; medians over rounds. CPU = this (client) process only.`,
);
const seq = new Map<string, ReturnType<typeof sequential> extends Promise<infer T> ? T[] : never>();
const conc = new Map<string, number[]>();
const tls = policies("main");
await sequential(CASES[1]!, tls); // warm-up: JIT, TLS contexts, caches
for (let r = 0; r < rounds; r++)
  for (const c of CASES) {
    const s = await sequential(c, tls);
    seq.set(c.name, [...(seq.get(c.name) ?? []), s]);
    conc.set(c.name, [...(conc.get(c.name) ?? []), await concurrent(c, tls)]);
  }
await tls.close();
const base = seq.get(CASES[0]!.name)!;
const baseMs = median(base.map((s) => s.msMedian));
const baseCpu = median(base.map((s) => s.cpuMs));
console.log(
  "| case | applied | latency median | p90 | over plain | client CPU/conn | over plain | msgs/s at 50 conns | not delivered |",
);
console.log("|---|---|---:|---:|---:|---:|---:|---:|---:|");
for (const c of CASES) {
  const runs = seq.get(c.name)!;
  const ms = median(runs.map((s) => s.msMedian));
  const p90 = median(runs.map((s) => s.msP90));
  const cpu = median(runs.map((s) => s.cpuMs));
  const failed = runs.reduce((n, s) => n + s.failed, 0);
  console.log(
    `| ${c.name} | ${runs[0]!.policy} | ${ms.toFixed(2)} ms | ${p90.toFixed(2)} ms | +${(ms - baseMs).toFixed(2)} ms | ${cpu.toFixed(2)} ms | +${(cpu - baseCpu).toFixed(2)} ms | ${median(conc.get(c.name)!).toFixed(0)} | ${failed} |`,
  );
}
const l = await lookups();
console.log("");
console.log("# the policy lookup alone (TlsPolicies.plan), one MX host");
console.log(
  "| lookup | warm (cached) | cold (first message after start: DNS to unbound, STS: TXT + HTTPS GET + fsync'd cache file) |",
);
console.log("|---|---:|---:|");
console.log(`| MTA-STS | ${l.stsWarmUs.toFixed(1)} µs | ${l.stsColdMs.toFixed(2)} ms |`);
console.log(`| DANE (A + TLSA, validated) | ${l.daneWarmUs.toFixed(1)} µs | ${l.daneColdMs.toFixed(2)} ms |`);
console.log(
  `# load average at the end ${loadavg()[0]!.toFixed(1)} (a shared machine: compare rows of one run)`,
);
sink.kill();
await sink.exited;
