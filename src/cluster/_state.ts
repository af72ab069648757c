/**
 * Shared site state: operator suspensions and backoff-rule firings, visible to every node.
 *
 * Owns: the state keys (one per site and kind, with the hold's expiry as the key's TTL), the pub/sub
 * messages that make a change reach every node at once, the node's mirror of what it applied, the
 * resynchronisation after a reconnect (a node that missed messages reads every key again), and the
 * changes made while Redis was unreachable (applied here at once, published when Redis returns).
 * Does not own: what a hold does to a site (the scheduler applies it through `onChange`).
 *
 * Why both: a key with a TTL is the truth (it expires by itself, a node that starts later reads it);
 * pub/sub only makes it prompt (a message reaches every subscriber within milliseconds).
 * Invariants: a node never re-applies its own change when it comes back through pub/sub; expiries
 * travel as "ms remaining" (measured on Redis's clock), never as a node's wall-clock time.
 */
import { errorMessage } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import { type RedisLink, RedisDownError } from "./_link.ts";
import { type Keys, STATE_ALL, STATE_DEL, STATE_SET } from "./_scripts.ts";

/** admin: `mta queue suspend`; the others: a backoff rule fired with that action. */
export type HoldKind = "admin" | "suspend" | "throttle" | "bounce";
export const HOLD_KINDS: readonly HoldKind[] = ["admin", "suspend", "throttle", "bounce"];

export interface SharedHold {
  site: string;
  kind: HoldKind;
  reason: string;
  /** The rule that fired (rule kinds). */
  rule?: string;
  /** Ms left when it reached this node; undefined = until resumed. */
  remainingMs?: number;
  /** The node it came from. */
  node: string;
}

export type StateChange =
  | { op: "set"; hold: SharedHold }
  | { op: "clear"; site: string; kinds: HoldKind[]; node: string };

interface Stored {
  site: string;
  kind: HoldKind;
  reason: string;
  rule?: string;
  node: string;
  instance: string;
  atMs?: number;
}

interface Mirrored {
  text: string;
  /** performance.now() after which it has expired by itself. */
  deadline: number;
}

type Pending =
  | { op: "set"; hold: Stored; ttlMs: number; at: number }
  | { op: "clear"; site: string; kinds: HoldKind[] };

export class SharedState {
  private readonly mirror = new Map<string, Mirrored>();
  private readonly listeners: ((c: StateChange) => void)[] = [];
  private outbox: Pending[] = [];
  /** Changes received from other nodes (pub/sub and resync). */
  received = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    private readonly opts: { node: string; instance: string; log: Logger },
  ) {}

  onChange(cb: (c: StateChange) => void): void {
    this.listeners.push(cb);
  }

  private emit(c: StateChange): void {
    this.received++;
    for (const cb of this.listeners) cb(c);
  }

  /**
   * Publishes a hold this node has already applied. Resolves true when every node was told now,
   * false when Redis is unreachable (it is published when Redis returns).
   */
  async set(hold: Omit<SharedHold, "node">): Promise<boolean> {
    const stored: Stored = {
      site: hold.site,
      kind: hold.kind,
      reason: hold.reason,
      ...(hold.rule !== undefined ? { rule: hold.rule } : {}),
      node: this.opts.node,
      instance: this.opts.instance,
    };
    const ttlMs = hold.remainingMs === undefined ? 0 : Math.max(1, Math.ceil(hold.remainingMs));
    this.outbox = this.outbox.filter(
      (p) => !(p.op === "set" && p.hold.site === hold.site && p.hold.kind === hold.kind),
    );
    const p: Pending = { op: "set", hold: stored, ttlMs, at: performance.now() };
    if (await this.send(p)) return true;
    this.outbox.push(p);
    return false;
  }

  /** Publishes that this node lifted holds of `site` (default: every kind). */
  async clear(site: string, kinds: readonly HoldKind[] = HOLD_KINDS): Promise<boolean> {
    this.outbox = this.outbox.filter(
      (p) => !(p.op === "set" && p.hold.site === site && kinds.includes(p.hold.kind)),
    );
    const p: Pending = { op: "clear", site, kinds: [...kinds] };
    if (await this.send(p)) return true;
    this.outbox.push(p);
    return false;
  }

  private async send(p: Pending): Promise<boolean> {
    if (!this.link.up) return false;
    try {
      if (p.op === "set") {
        const ttl = p.ttlMs === 0 ? 0 : Math.ceil(p.ttlMs - (performance.now() - p.at));
        if (p.ttlMs !== 0 && ttl <= 0) return true; // expired while waiting: nothing to tell
        const suffix = `${p.hold.site}:${p.hold.kind}`;
        const atMs = Number(
          await this.link.run(
            STATE_SET,
            [this.k.state(p.hold.site, p.hold.kind), this.k.states],
            [this.k.events, ttl, JSON.stringify(p.hold), suffix],
          ),
        );
        const text = storedText({ ...p.hold, atMs });
        this.mirror.set(suffix, { text, deadline: ttl === 0 ? Infinity : performance.now() + ttl });
      } else {
        const msg = {
          op: "clear",
          site: p.site,
          kinds: p.kinds,
          node: this.opts.node,
          instance: this.opts.instance,
        };
        await this.link.run(
          STATE_DEL,
          [...p.kinds.map((kind) => this.k.state(p.site, kind)), this.k.states],
          [this.k.events, JSON.stringify(msg)],
        );
        for (const kind of p.kinds) this.mirror.delete(`${p.site}:${kind}`);
      }
      return true;
    } catch (err) {
      if (!(err instanceof RedisDownError))
        this.opts.log.error("shared state script failed", { error: errorMessage(err) });
      return false;
    }
  }

  /** A message on the events channel (state changes; lease messages are not ours). */
  message(msg: Record<string, unknown>): void {
    if (msg.op === "set") {
      const v = msg.value as Stored | undefined;
      const key = String(msg.key ?? "");
      if (!v || typeof v.site !== "string") return;
      const remaining = Number(msg.remainingMs);
      const text = storedText(v);
      this.mirror.set(key, { text, deadline: remaining >= 0 ? performance.now() + remaining : Infinity });
      if (v.instance === this.opts.instance) return;
      this.emit({ op: "set", hold: toHold(v, remaining >= 0 ? remaining : undefined) });
    } else if (msg.op === "clear") {
      const site = String(msg.site ?? "");
      const kinds = ((msg.kinds as unknown[]) ?? []).filter((x): x is HoldKind =>
        HOLD_KINDS.includes(x as HoldKind),
      );
      for (const kind of kinds) this.mirror.delete(`${site}:${kind}`);
      if (msg.instance === this.opts.instance || !site) return;
      this.emit({ op: "clear", site, kinds, node: String(msg.node ?? "") });
    }
  }

  /**
   * After a (re)connection: publishes what changed here while Redis was away, then reads every key
   * and applies what this node missed (new holds, and holds lifted elsewhere meanwhile).
   */
  async resync(): Promise<void> {
    const outbox = this.outbox;
    this.outbox = [];
    for (const p of outbox) if (!(await this.send(p))) this.outbox.push(p);
    let flat: unknown[];
    try {
      flat = (await this.link.run(STATE_ALL, [this.k.states], [])) as unknown[];
    } catch (err) {
      if (!(err instanceof RedisDownError))
        this.opts.log.error("shared state resync failed", { error: errorMessage(err) });
      return;
    }
    const seen = new Set<string>();
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const key = this.k.stateSuffix(String(flat[i]));
      const text = String(flat[i + 1]);
      const pttl = Number(flat[i + 2]);
      seen.add(key);
      let v: Stored;
      try {
        v = JSON.parse(text) as Stored;
      } catch {
        continue;
      }
      const cmp = storedText(v);
      const cur = this.mirror.get(key);
      this.mirror.set(key, { text: cmp, deadline: pttl >= 0 ? performance.now() + pttl : Infinity });
      if (cur?.text === cmp || v.instance === this.opts.instance) continue;
      this.emit({ op: "set", hold: toHold(v, pttl >= 0 ? pttl : undefined) });
    }
    const now = performance.now();
    for (const [key, m] of [...this.mirror]) {
      if (seen.has(key)) continue;
      this.mirror.delete(key);
      if (m.deadline <= now) continue; // expired by itself, here too
      const colon = key.lastIndexOf(":");
      const kind = key.slice(colon + 1) as HoldKind;
      if (!HOLD_KINDS.includes(kind)) continue;
      this.emit({ op: "clear", site: key.slice(0, colon), kinds: [kind], node: "" });
    }
  }

  /** Holds not yet published (Redis unreachable). */
  get unpublished(): number {
    return this.outbox.length;
  }
}

/** The fields that identify a hold (`atMs` differs between the message and the stored key). */
function storedText(v: Stored): string {
  return JSON.stringify([v.site, v.kind, v.reason, v.rule ?? null, v.node, v.instance, v.atMs ?? null]);
}

function toHold(v: Stored, remainingMs: number | undefined): SharedHold {
  return {
    site: v.site,
    kind: v.kind,
    reason: v.reason,
    ...(v.rule !== undefined ? { rule: v.rule } : {}),
    ...(remainingMs !== undefined ? { remainingMs } : {}),
    node: v.node,
  };
}
