/**
 * DKIM signing off the event loop: a few `Worker` threads, each with its own `DkimSigner`.
 *
 * Owns: starting the workers, handing each message to the least busy one, matching replies to
 * requests, draining and stopping the workers, and signing on the calling thread when no worker runs.
 * Does not own: the keys' validity (the signer built in `create` checks them, synchronously, so a bad
 * key is a `DkimKeyError` before any thread starts), where signing happens (app/).
 * Invariants: `sign` resolves with exactly the bytes `DkimSigner.sign` would give for the same
 * `nowMs`; a message that no key signs never leaves the calling thread; a worker that fails to start
 * or dies hands its pending messages back to the calling thread, so no `sign` call is lost.
 *
 * Why: an RSA-2048 signature costs ~0.6 ms of CPU, so signing on the event loop caps injection at
 * ~1,600 messages/s and stalls every SMTP session meanwhile. Ed25519 costs ~40 µs, RSA dominates.
 *
 * Protocol (structured clone over postMessage; message bytes are copied once into a fresh buffer
 * and transferred both ways):
 *   pool → worker  {type:"init", options}             worker → pool  {type:"ready"} | {type:"failed", message}
 *   pool → worker  {type:"sign", id, message, nowMs}  worker → pool  {type:"signed", id, signed} | {type:"error", id, message}
 */
import { type DkimOptions, DkimSigner } from "./signer.ts";

export type PoolRequest =
  | { type: "init"; options: DkimOptions }
  | { type: "sign"; id: number; message: Uint8Array; nowMs: number };

export type PoolReply =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | { type: "signed"; id: number; signed: Uint8Array }
  | { type: "error"; id: number; message: string };

interface Pending {
  message: Uint8Array;
  nowMs: number;
  resolve: (signed: Uint8Array) => void;
  reject: (err: Error) => void;
}

interface Thread {
  worker: Worker;
  ready: boolean;
  pending: Map<number, Pending>;
}

/**
 * Where the worker module is. From source it sits next to this file. In the `bun build --compile`
 * executable every module is bundled into the entry file (`/$bunfs/root/mta`), and a worker exists
 * only if build.ts lists `src/dkim/_worker.ts` as a second entrypoint: it is then embedded at
 * `/$bunfs/root/dkim/_worker.js` (paths relative to the common root `src/`). Without that entry the
 * worker fails to load and the pool signs on the calling thread.
 */
function workerUrl(): URL {
  const here = new URL(import.meta.url);
  return compiled() ? new URL("./dkim/_worker.ts", here) : new URL("./_worker.ts", here);
}

function compiled(): boolean {
  const path = new URL(import.meta.url).pathname;
  return path.includes("/$bunfs/") || path.startsWith("/~BUN/");
}

const BUILD_HINT = " (is src/dkim/_worker.ts an entrypoint in build.ts?)";

export interface DkimPoolOptions {
  /** The worker module; see `workerUrl`. */
  workerUrl?: URL | string;
  /** Worker threads; 0 signs on the calling thread. */
  threads: number;
  /** Told when a worker cannot start or dies (its messages are then signed on the calling thread). */
  onWorkerError?: (message: string) => void;
}

export class DkimSignerPool {
  private readonly threads: Thread[] = [];
  private nextId = 1;
  private closed = false;

  private constructor(
    /** The calling thread's signer: key checks, `wouldSign`, and the fallback. */
    readonly signer: DkimSigner,
    private readonly opts: DkimPoolOptions,
  ) {}

  /** Checks every key now (throws `DkimKeyError`), then starts the threads in the background. */
  static create(options: DkimOptions, opts: DkimPoolOptions): DkimSignerPool {
    const pool = new DkimSignerPool(DkimSigner.create(options), opts);
    for (let i = 0; i < opts.threads; i++) pool.startThread(options);
    return pool;
  }

  /** Threads that started and are alive. */
  get readyThreads(): number {
    return this.threads.filter((t) => t.ready).length;
  }

  /** Resolves once every thread is ready or gone; how many are ready. */
  async started(timeoutMs = 5000): Promise<number> {
    const end = Date.now() + timeoutMs;
    while (this.threads.some((t) => !t.ready) && Date.now() < end) await Bun.sleep(5);
    return this.readyThreads;
  }

  private startThread(options: DkimOptions): void {
    let worker: Worker;
    try {
      worker = new Worker(this.opts.workerUrl ?? workerUrl());
    } catch (err) {
      this.opts.onWorkerError?.(`DKIM worker did not start: ${err instanceof Error ? err.message : err}`);
      return;
    }
    const thread: Thread = { worker, ready: false, pending: new Map() };
    this.threads.push(thread);
    worker.onmessage = (event: MessageEvent<PoolReply>) => {
      const reply = event.data;
      if (reply.type === "ready") {
        thread.ready = true;
        return;
      }
      if (reply.type === "failed") {
        this.drop(thread, `DKIM worker did not start: ${reply.message}`);
        return;
      }
      const p = thread.pending.get(reply.id);
      if (!p) return;
      thread.pending.delete(reply.id);
      if (reply.type === "signed") p.resolve(reply.signed);
      else p.reject(new Error(reply.message));
      if (this.closed && thread.pending.size === 0) worker.terminate();
    };
    worker.onerror = (event: ErrorEvent) => {
      const hint = !thread.ready && compiled() && !this.opts.workerUrl ? BUILD_HINT : "";
      this.drop(thread, `DKIM worker failed: ${event.message}${hint}`);
    };
    worker.postMessage({ type: "init", options } satisfies PoolRequest);
  }

  /** Takes a thread out of service; its pending messages are signed here. */
  private drop(thread: Thread, reason: string): void {
    const i = this.threads.indexOf(thread);
    if (i < 0) return;
    this.threads.splice(i, 1);
    thread.worker.terminate();
    if (!this.closed) this.opts.onWorkerError?.(reason);
    for (const p of thread.pending.values()) this.signHere(p);
    thread.pending.clear();
  }

  private signHere(p: Pending): void {
    try {
      p.resolve(this.signer.sign(p.message, p.nowMs));
    } catch (err) {
      p.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** The signed message; on a worker when one is ready, else here. Unsigned messages stay here. */
  sign(message: Uint8Array, nowMs: number = Date.now()): Promise<Uint8Array> | Uint8Array {
    let best: Thread | undefined;
    for (const t of this.threads) if (t.ready && (!best || t.pending.size < best.pending.size)) best = t;
    if (!best || this.closed || !this.signer.wouldSign(message)) return this.signer.sign(message, nowMs);
    const thread = best;
    const id = this.nextId++;
    const copy = message.slice();
    return new Promise<Uint8Array>((resolve, reject) => {
      thread.pending.set(id, { message, nowMs, resolve, reject });
      thread.worker.postMessage({ type: "sign", id, message: copy, nowMs } satisfies PoolRequest, [
        copy.buffer,
      ]);
    });
  }

  /** Stops taking work; each thread ends once its pending messages are signed. */
  close(): void {
    this.closed = true;
    for (const t of this.threads) if (t.pending.size === 0) t.worker.terminate();
  }
}
