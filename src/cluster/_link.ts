/**
 * The node's connection to Redis: one connection for commands, one for subscriptions.
 *
 * Owns: connecting and reconnecting (with backoff), a deadline on every command, Lua scripts (EVALSHA,
 * EVAL once on NOSCRIPT), the subscriptions, and the link's state (`up` or not) with its listeners.
 * Does not own: what the commands mean (leases, rates, state, registry).
 *
 * Why not Bun's `autoReconnect`: in Bun 1.4.5 an auto-reconnected RedisClient does not re-issue
 * SUBSCRIBE (oven-sh/bun PR 33450), older builds matched replies to the wrong promises after a
 * reconnect (issue 27861), and its retry counter is never reset after a successful reconnect. So every
 * connection here is a fresh `RedisClient` with `autoReconnect: false` and no offline queue: a
 * command sent while the link is down fails at once (the caller falls back to its local share), and a
 * command that gets no answer within `commandTimeoutMs` (Redis paused, network gone) takes the whole
 * link down: both clients are closed, which rejects everything pending on them, and a new pair is made.
 *
 * Invariants: `up` is true only while both connections are open and subscribed; a rejected command
 * never leaves a reply to be matched to a later command (its client is discarded).
 */
import { RedisClient } from "bun";
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";

export interface Script {
  readonly name: string;
  readonly source: string;
  readonly sha: string;
}

export function script(name: string, source: string): Script {
  const sha = new Bun.CryptoHasher("sha1").update(source).digest("hex");
  return { name, source, sha };
}

/** A command failed because the link is down or went down while it waited. */
export class RedisDownError extends Error {
  override name = "RedisDownError";
}

export interface LinkOptions {
  url: string;
  tls?: boolean | Bun.TLSOptions;
  commandTimeoutMs: number;
  connectTimeoutMs: number;
  /** Channels to subscribe to; every message goes to `onMessage`. */
  channels: string[];
  /** Shown by CLIENT LIST on both connections (letters, digits, . _ - : only). */
  clientName?: string;
  onMessage(channel: string, message: string): void;
  /** Called after every (re)connection, before `up` listeners may rely on anything. */
  onUp(): void;
  onDown(reason: string): void;
  log: Logger;
  /** Every command's round trip (seconds) and whether it was answered. */
  observe?(seconds: number, ok: boolean): void;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
}

type Pair = { cmd: RedisClient; sub: RedisClient };

export class RedisLink {
  private pair: Pair | undefined;
  private connecting: Promise<void> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private backoffMs: number;
  private closed = false;
  private downReason = "not connected yet";
  constructor(private readonly opts: LinkOptions) {
    this.backoffMs = opts.reconnectMinMs ?? 100;
  }

  get up(): boolean {
    return this.pair !== undefined;
  }

  get reason(): string {
    return this.downReason;
  }

  /** Connects now; resolves after the first attempt either way (the link keeps retrying in the background). */
  start(): Promise<void> {
    return this.connect();
  }

  private newClient(): RedisClient {
    return new RedisClient(this.opts.url, {
      autoReconnect: false,
      enableOfflineQueue: false,
      connectionTimeout: this.opts.connectTimeoutMs,
      ...(this.opts.tls !== undefined ? { tls: this.opts.tls } : {}),
    });
  }

  private connect(): Promise<void> {
    if (this.closed || this.pair) return Promise.resolve();
    this.connecting ??= (async () => {
      const cmd = this.newClient();
      const sub = this.newClient();
      try {
        await this.withDeadline(Promise.all([cmd.connect(), sub.connect()]), this.opts.connectTimeoutMs);
        const name = this.opts.clientName;
        if (name)
          await this.withDeadline(
            Promise.all([cmd.send("CLIENT", ["SETNAME", name]), sub.send("CLIENT", ["SETNAME", name])]),
            this.opts.commandTimeoutMs,
          );
        if (this.opts.channels.length > 0)
          await this.withDeadline(
            sub.subscribe(this.opts.channels, (message, channel) => this.opts.onMessage(channel, message)),
            this.opts.commandTimeoutMs,
          );
      } catch (err) {
        cmd.close();
        sub.close();
        this.connecting = undefined;
        this.scheduleRetry(describe(err));
        return;
      }
      this.connecting = undefined;
      if (this.closed) {
        cmd.close();
        sub.close();
        return;
      }
      const pair: Pair = { cmd, sub };
      const lost = (err: Error | undefined) => {
        if (this.pair === pair) this.drop(`connection closed: ${describe(err)}`);
      };
      cmd.onclose = lost;
      sub.onclose = lost;
      this.pair = pair;
      this.backoffMs = this.opts.reconnectMinMs ?? 100;
      this.downReason = "";
      this.opts.log.info("connected to Redis");
      this.opts.onUp();
    })();
    return this.connecting;
  }

  private scheduleRetry(reason: string): void {
    if (this.closed) return;
    const first = this.downReason !== reason;
    this.downReason = reason;
    if (first) this.opts.log.warn("cannot reach Redis; retrying", { reason });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.connect();
    }, this.backoffMs);
    this.backoffMs = Math.min(this.opts.reconnectMaxMs ?? 2000, this.backoffMs * 2);
  }

  /** Takes the link down: closes both clients (rejecting what is pending on them) and reconnects later. */
  private drop(reason: string): void {
    const pair = this.pair;
    if (!pair) return;
    this.pair = undefined;
    pair.cmd.onclose = null;
    pair.sub.onclose = null;
    pair.cmd.close();
    pair.sub.close();
    this.opts.log.warn("lost Redis", { reason });
    this.downReason = reason;
    this.opts.onDown(reason);
    this.scheduleRetry(reason);
  }

  private withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    return Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RedisDownError(`no answer from Redis within ${ms} ms`)), ms);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** One command; rejects with RedisDownError when the link is down or goes down meanwhile. */
  async call(command: string, args: string[]): Promise<unknown> {
    const pair = this.pair;
    if (!pair) throw new RedisDownError(`Redis is unreachable (${this.downReason})`);
    const t0 = performance.now();
    try {
      const reply = await this.withDeadline(pair.cmd.send(command, args), this.opts.commandTimeoutMs);
      this.opts.observe?.((performance.now() - t0) / 1000, true);
      return reply;
    } catch (err) {
      this.opts.observe?.((performance.now() - t0) / 1000, false);
      if (err instanceof RedisDownError || isConnectionError(err)) {
        if (this.pair === pair) this.drop(errorMessage(err));
        throw err instanceof RedisDownError ? err : new RedisDownError(errorMessage(err));
      }
      throw err; // a reply error: Redis is up, the command was wrong
    }
  }

  /** Runs a script by its SHA, loading it once if this Redis does not know it yet. */
  async run(s: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    const argv = [String(keys.length), ...keys, ...args.map(String)];
    try {
      return await this.call("EVALSHA", [s.sha, ...argv]);
    } catch (err) {
      if (err instanceof RedisDownError || !errorMessage(err).startsWith("NOSCRIPT")) throw err;
      return this.call("EVAL", [s.source, ...argv]);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.connecting;
    const pair = this.pair;
    this.pair = undefined;
    if (pair) {
      pair.cmd.onclose = null;
      pair.sub.onclose = null;
      pair.cmd.close();
      pair.sub.close();
    }
  }
}

function isConnectionError(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && code !== "ERR_REDIS_SERVER_ERROR";
}

function describe(err: unknown): string {
  const text = err === undefined ? "closed" : errorMessage(err);
  // Bun reports a refused password or a TLS failure only as a closed connection.
  return /^Connection (closed|has failed)/.test(text)
    ? `${text} (is Redis running there, and are the password and TLS settings right?)`
    : text;
}
