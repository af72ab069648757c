/**
 * An HTTP receiver of mta's webhooks on loopback that can be fast, slow, failing or down.
 *
 * Owns: `startReceiver` (Bun.serve on 127.0.0.1, a fixed port across down/up), the record of every
 * batch with whether its X-MTA-Signature verified, and the modes.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export interface ReceivedBatch {
  atMs: number;
  signatureOk: boolean;
  events: Record<string, unknown>[];
}

export type ReceiverMode =
  | { kind: "ok" }
  | { kind: "slow"; delayMs: number }
  | { kind: "status"; status: number };

export interface Receiver extends AsyncDisposable {
  readonly port: number;
  readonly url: string;
  batches: ReceivedBatch[];
  mode: ReceiverMode;
  /** Every event received, duplicates included, in arrival order. */
  events(): Record<string, unknown>[];
  down(): Promise<void>;
  up(): void;
}

export function verifySignature(secret: string, header: string | null, body: string): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? "");
  if (!m) return false;
  const want = createHmac("sha256", secret).update(`${m[1]}.${body}`).digest();
  const got = Buffer.from(m[2]!, "hex");
  return (
    got.length === want.length &&
    timingSafeEqual(got, want) &&
    Math.abs(Date.now() / 1000 - Number(m[1])) < 300
  );
}

export async function startReceiver(secret: string, opts: { port?: number } = {}): Promise<Receiver> {
  const batches: ReceivedBatch[] = [];
  let server: ReturnType<typeof Bun.serve> | undefined;
  const r: Receiver = {
    port: 0,
    url: "",
    batches,
    mode: { kind: "ok" },
    events: () => batches.flatMap((b) => b.events),
    async down() {
      await server?.stop(true);
      server = undefined;
    },
    up() {
      server = serve(r.port);
    },
    async [Symbol.asyncDispose]() {
      await server?.stop(true);
    },
  };
  const serve = (port: number) =>
    Bun.serve({
      hostname: "127.0.0.1",
      port,
      idleTimeout: 30,
      async fetch(req) {
        const body = await req.text();
        const mode = r.mode;
        if (mode.kind === "slow") await Bun.sleep(mode.delayMs);
        if (mode.kind === "status") return new Response("no", { status: mode.status });
        let events: Record<string, unknown>[] = [];
        try {
          events = (JSON.parse(body) as { events: Record<string, unknown>[] }).events;
        } catch {
          return new Response("bad json", { status: 400 });
        }
        batches.push({
          atMs: Date.now(),
          signatureOk: verifySignature(secret, req.headers.get("x-mta-signature"), body),
          events,
        });
        return new Response("ok");
      },
    });
  server = serve(opts.port ?? 0);
  (r as { port: number }).port = server.port!;
  (r as { url: string }).url = `http://127.0.0.1:${server.port}/hook`;
  return r;
}
