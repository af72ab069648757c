/**
 * Shared logs: an append-only stream of changes in Redis that every node reads in the same order,
 * with the state those changes add up to, for lists each node keeps a durable copy of (the
 * suppression list).
 *
 * Owns: per log name, the stream `P log:<name>` (entries: node, tag, payload), the hash
 * `P log:<name>:state` (field -> value: what the changes add up to, for a full resynchronisation),
 * the epoch `P log:<name>:epoch` (a random id made when Redis first sees the log: a different one
 * means Redis lost it, or is another Redis), and the "log" message on the events channel.
 * Does not own: what a payload or a field means (the app), where a node is in the stream (the node
 * keeps that durably itself), Redis I/O (_link.ts).
 *
 * Invariants: an append is one script: XADD, the hash updates and the PUBLISH happen together, so the
 * hash is always what the stream's entries add up to, in stream order. The stream is trimmed to about
 * `maxLen` entries (XADD MAXLEN ~) and entries are never deleted otherwise, so `added - length` is how
 * many of the oldest were trimmed: a reader that has read `n` entries has missed some iff that is
 * more than `n` (Redis 7.0's max-deleted-entry-id is not moved by trimming), and then it
 * resynchronises from the hash.
 */
import type { Logger } from "../observe/index.ts";
import { type RedisLink, script } from "./_link.ts";
import type { Keys } from "./_scripts.ts";

/**
 * KEYS: stream, state hash. ARGV: events channel, max length, node, tag, payload, log name, then
 * field/value pairs (an empty value deletes the field). Reply: the new entry's id.
 */
const LOG_APPEND = script(
  "log-append",
  `
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'node', ARGV[3], 'tag', ARGV[4], 'p', ARGV[5])
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[2], ARGV[i]) else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
redis.call('PUBLISH', ARGV[1], cjson.encode({op = 'log', name = ARGV[6], id = id, node = ARGV[3]}))
return id
`,
);

/**
 * KEYS: epoch, stream. ARGV: an epoch to set when there is none.
 * Reply: {epoch, last generated id, entries ever added, entries now in the stream} ("0-0", 0, 0 for a
 * stream that does not exist).
 */
const LOG_STATUS = script(
  "log-status",
  `
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1])
  e = ARGV[1]
end
local last, added, length = '0-0', 0, 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1]
    elseif info[i] == 'entries-added' then added = info[i + 1]
    elseif info[i] == 'length' then length = info[i + 1] end
  end
end
return {e, last, added, length}
`,
);

export interface SharedLogEntry {
  id: string;
  node: string;
  tag: string;
  payload: string;
}

export interface SharedLogStatus {
  epoch: string;
  lastId: string;
  /** Entries ever appended (the number of entries up to and including `lastId`). */
  added: number;
  /** How many of the oldest entries were trimmed away. */
  trimmed: number;
}

/** Orders two stream ids ("<ms>-<seq>"); "" sorts first. */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0n, as = 0n] = a === "" ? [] : a.split("-").map((x) => BigInt(x));
  const [bm = 0n, bs = 0n] = b === "" ? [] : b.split("-").map((x) => BigInt(x));
  return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1;
}

export class SharedLog {
  private readonly stream: string;
  private readonly stateKey: string;
  private readonly epochKey: string;
  private readonly listeners: (() => void)[] = [];

  constructor(
    private readonly link: RedisLink,
    private readonly k: Keys,
    readonly name: string,
    private readonly opts: { node: string; maxLen: number; log: Logger },
  ) {
    this.stream = k.log(name);
    this.stateKey = `${this.stream}:state`;
    this.epochKey = `${this.stream}:epoch`;
  }

  /** Whether Redis answers now (every call below throws RedisDownError when it does not). */
  get up(): boolean {
    return this.link.up;
  }

  /** `cb` runs when another node (or this one) appended, and when the link comes back. */
  onNotify(cb: () => void): void {
    this.listeners.push(cb);
  }

  /** Called by the node for every "log" message of this log, and after every reconnection. */
  notified(): void {
    for (const cb of this.listeners) cb();
  }

  async status(): Promise<SharedLogStatus> {
    const r = (await this.link.run(
      LOG_STATUS,
      [this.epochKey, this.stream],
      [crypto.randomUUID()],
    )) as unknown[];
    const added = Number(r[2]);
    return { epoch: String(r[0]), lastId: String(r[1]), added, trimmed: added - Number(r[3]) };
  }

  /** Appends one entry and applies `state` (field, value; "" deletes) to the hash; returns the entry's id. */
  async append(tag: string, payload: string, state: readonly (readonly [string, string])[]): Promise<string> {
    const args: string[] = [this.k.events, String(this.opts.maxLen), this.opts.node, tag, payload, this.name];
    for (const [f, v] of state) args.push(f, v);
    return String(await this.link.run(LOG_APPEND, [this.stream, this.stateKey], args));
  }

  /** Up to `count` entries after `after` ("" = from the start), oldest first. */
  async read(after: string, count: number): Promise<SharedLogEntry[]> {
    const from = after === "" ? "-" : `(${after}`;
    const reply = (await this.link.call("XRANGE", [this.stream, from, "+", "COUNT", String(count)])) as [
      string,
      string[],
    ][];
    return (reply ?? []).map(([id, fields]) => {
      const e: SharedLogEntry = { id: String(id), node: "", tag: "", payload: "" };
      for (let i = 0; i + 1 < fields.length; i += 2) {
        const f = String(fields[i]);
        const v = String(fields[i + 1]);
        if (f === "node") e.node = v;
        else if (f === "tag") e.tag = v;
        else if (f === "p") e.payload = v;
      }
      return e;
    });
  }

  /** Every (field, value) of the state hash, a page at a time (HSCAN: a field changed meanwhile may be seen twice). */
  async *state(page = 1000): AsyncGenerator<[string, string][]> {
    let cursor = "0";
    do {
      const r = (await this.link.call("HSCAN", [this.stateKey, cursor, "COUNT", String(page)])) as [
        string,
        string[],
      ];
      cursor = String(r[0]);
      const pairs: [string, string][] = [];
      for (let i = 0; i + 1 < r[1].length; i += 2) pairs.push([String(r[1][i]), String(r[1][i + 1])]);
      if (pairs.length > 0) yield pairs;
    } while (cursor !== "0");
  }
}
