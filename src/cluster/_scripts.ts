/**
 * The Lua scripts every node runs in Redis, and the keys they touch.
 *
 * Owns: key names (all under the configured prefix), the scripts' sources and the shape of their replies.
 * Does not own: when they run (leases.ts, rates.ts, state.ts, registry.ts).
 *
 * Every script reads the time from Redis (`TIME`), never from the node: lease expiries, GCRA arrival
 * times and state deadlines are all on Redis's clock, so the nodes' clocks may disagree freely. Each
 * script is one atomic step in Redis. Redis Cluster is not supported (a renewal touches many keys).
 *
 * Keys (P = the prefix, default "mta:"):
 *   P lease:<site>                sorted set: lease member ("<node>/<instance>/<n>") -> expiry (ms)
 *   P lease:<site>|src:<address>  the same, per source address x site
 *   P lease:<site>|wait           sorted set: nodes refused a slot of that key -> until when (ms)
 *   P gcra:<site>:<msg|conn|throttle>  string: GCRA theoretical arrival time (ms, fractional)
 *   P state:<site>:<kind>         string: JSON of a suspension or a rule firing, with its TTL
 *   P states                      set: the state keys, so a node that reconnects can read them all
 *   P node:<name>                 string: JSON of a node's registration, TTL = its dead-after time
 *   P nodes                       sorted set: node name -> last heartbeat (ms)
 *   P events                      pub/sub channel: state changes, freed lease slots, log appends
 *   P log:<name>, :state, :epoch  a shared log's stream, the state it adds up to, its epoch (_journal.ts)
 */
import { script } from "./_link.ts";

/** A site's message rate, its connection rate, and a throttle rule's message rate while in force. */
export type RateKind = "msg" | "conn" | "throttle";

export function keys(prefix: string) {
  return {
    lease: (site: string) => `${prefix}lease:${site}`,
    sourceLease: (site: string, address: string) => `${prefix}lease:${site}|src:${address}`,
    gcra: (site: string, what: RateKind) => `${prefix}gcra:${site}:${what}`,
    state: (site: string, kind: string) => `${prefix}state:${site}:${kind}`,
    states: `${prefix}states`,
    node: (name: string) => `${prefix}node:${name}`,
    nodes: `${prefix}nodes`,
    events: `${prefix}events`,
    log: (name: string) => `${prefix}log:${name}`,
    /** The part of a state key after the prefix: "<site>:<kind>". */
    stateSuffix: (key: string) => key.slice(`${prefix}state:`.length),
  };
}

export type Keys = ReturnType<typeof keys>;

const NOW_MS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * Takes one connection slot under every key (site, and source x site) or none. A node refused
 * is written down as waiting for that key (for one lease period: a waiting node asks again within
 * one): the holders see it when they renew, and keep no more than their fair part (LEASE_RENEW).
 * KEYS: lease keys. ARGV: member, leaseMs, limit per key, then the node's name.
 * Reply: {1, expiresAtMs, nowMs} or {0, index of the full key (1-based), nowMs, the earliest expiry
 * among its holders (when a slot comes free unless renewed)}.
 */
export const LEASE_ACQUIRE = script(
  "lease-acquire",
  `${NOW_MS}
local member = ARGV[1]
local lease = tonumber(ARGV[2])
local node = ARGV[#KEYS + 3]
for i, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if not redis.call('ZSCORE', k, member) and redis.call('ZCARD', k) >= tonumber(ARGV[i + 2]) then
    if node then
      redis.call('ZADD', k .. '|wait', now + lease, node)
      redis.call('PEXPIRE', k .. '|wait', lease)
    end
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    return {0, i, now, math.floor(tonumber(first[2] or now))}
  end
end
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + lease, member)
  redis.call('PEXPIRE', k, lease + 1000)
  if node then redis.call('ZREM', k .. '|wait', node) end
end
return {1, now + lease, now}
`,
);

/**
 * Renews leases: each KEYS[i] with member ARGV[i + 1]. A lease that already expired (or is gone) is
 * not renewed: the node has lost it and must stop using it. For each key with nodes waiting (other
 * than this one), the reply counts the nodes that share it (holders and waiters) and says when the
 * first other node's lease or wait there ends unless renewed (a dead node's part comes free then).
 * ARGV: leaseMs, member per key, then the node's name.
 * Reply: {nowMs, {1-based indexes of the lost leases}, {key, nodes sharing it, ms until the first
 * other node's lease or wait ends, ...}}.
 */
export const LEASE_RENEW = script(
  "lease-renew",
  `${NOW_MS}
local lease = tonumber(ARGV[1])
local node = ARGV[#KEYS + 2]
local lost = {}
local shared = {}
local seen = {}
for _, k in ipairs(KEYS) do
  if not seen[k] then
    seen[k] = true
    local w = k .. '|wait'
    redis.call('ZREMRANGEBYSCORE', w, '-inf', now)
    local waiting = redis.call('ZRANGE', w, 0, -1, 'WITHSCORES')
    local others = false
    for j = 1, #waiting, 2 do if waiting[j] ~= node then others = true end end
    if others then
      local nodes = {}
      local count = 0
      local first = math.huge
      for j = 1, #waiting, 2 do
        local n = waiting[j]
        if not nodes[n] then nodes[n] = true; count = count + 1 end
        if n ~= node and tonumber(waiting[j + 1]) < first then first = tonumber(waiting[j + 1]) end
      end
      local held = redis.call('ZRANGEBYSCORE', k, now, '+inf', 'WITHSCORES')
      for j = 1, #held, 2 do
        local n = string.match(held[j], '^(.*)/[^/]*/[^/]*$') or held[j]
        if not nodes[n] then nodes[n] = true; count = count + 1 end
        if n ~= node and tonumber(held[j + 1]) < first then first = tonumber(held[j + 1]) end
      end
      shared[#shared + 1] = k
      shared[#shared + 1] = count
      shared[#shared + 1] = math.max(0, first - now)
    end
  end
end
for i, k in ipairs(KEYS) do
  local member = ARGV[i + 1]
  local s = redis.call('ZSCORE', k, member)
  if s and tonumber(s) > now then
    redis.call('ZADD', k, 'XX', now + lease, member)
    redis.call('PEXPIRE', k, lease + 1000)
  else
    redis.call('ZREM', k, member)
    lost[#lost + 1] = i
  end
end
return {now, lost, shared}
`,
);

/**
 * Releases leases: KEYS[i] with member ARGV[2i] and limit ARGV[2i + 1]. When a key was full before,
 * its name is published on the events channel (ARGV[1]) so that nodes waiting for a slot try at once.
 * Reply: number of leases that were still held.
 */
export const LEASE_RELEASE = script(
  "lease-release",
  `
local released = 0
for i, k in ipairs(KEYS) do
  local member = ARGV[2 * i]
  local limit = tonumber(ARGV[2 * i + 1])
  local before = redis.call('ZCARD', k)
  if redis.call('ZREM', k, member) == 1 then
    released = released + 1
    if before >= limit then
      redis.call('PUBLISH', ARGV[1], cjson.encode({op = 'free', key = k}))
    end
  end
end
return released
`,
);

/**
 * GCRA (generic cell rate algorithm) on Redis's clock: up to n events if allowed now.
 * KEYS: the rate's key. ARGV: intervalMs (perMs / count), toleranceMs (intervalMs x (count - 1)), n.
 * The k-th event (1-based) is allowed when tat + (k - 1) x interval - tolerance <= now.
 * Reply: {k, "0"} with k >= 1 events taken, else {0, "<ms to wait>"} (strings: Lua numbers lose
 * their fraction in replies).
 */
export const GCRA_TAKE = script(
  "gcra-take",
  `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3] or '1')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local k = math.floor((now + tolerance - tat) / interval) + 1
if k < 1 then
  return {0, tostring(tat - tolerance - now)}
end
if k > n then k = n end
local newTat = tat + k * interval
redis.call('SET', KEYS[1], string.format('%.3f', newTat), 'PX', math.ceil(newTat - now) + 1000)
return {k, '0'}
`,
);

/**
 * Sets a piece of shared state (a suspension, a rule firing) and tells every node.
 * KEYS: state key, the set of state keys. ARGV: events channel, ttlMs (0 = no expiry), JSON value,
 * the suffix the nodes know the key by ("<site>:<kind>").
 * The value gets `atMs` (Redis time); the message carries `remainingMs` (-1 = no expiry).
 */
export const STATE_SET = script(
  "state-set",
  `${NOW_MS}
local ttl = tonumber(ARGV[2])
local v = cjson.decode(ARGV[3])
v.atMs = now
local text = cjson.encode(v)
if ttl > 0 then
  redis.call('SET', KEYS[1], text, 'PX', ttl)
else
  redis.call('SET', KEYS[1], text)
end
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PUBLISH', ARGV[1], cjson.encode({op = 'set', key = ARGV[4], value = v, remainingMs = ttl > 0 and ttl or -1}))
return now
`,
);

/**
 * Deletes shared state and tells every node. KEYS: state keys..., then the set of state keys (last).
 * ARGV: events channel, JSON message. Reply: keys that existed.
 */
export const STATE_DEL = script(
  "state-del",
  `
local set = KEYS[#KEYS]
local n = 0
for i = 1, #KEYS - 1 do
  n = n + redis.call('DEL', KEYS[i])
  redis.call('SREM', set, KEYS[i])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
`,
);

/**
 * Every live piece of shared state. KEYS: the set of state keys.
 * Reply: flat list key, value, remaining ms (-1 = no expiry), ...; expired keys leave the set.
 */
export const STATE_ALL = script(
  "state-all",
  `
local out = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', k)
  if v then
    out[#out + 1] = k
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', k)
  else
    redis.call('SREM', KEYS[1], k)
  end
end
return out
`,
);

/**
 * A node's heartbeat: registers it (refused when a different, live instance holds the name) and
 * answers with every live node.
 * KEYS: this node's key, the nodes set. ARGV: name, instance, JSON registration, deadAfterMs,
 * node key prefix ("P node:"), owner (the spool's identity: an instance with the same owner is this
 * node's own predecessor, dead since this one holds the spool's lock, and is replaced at once).
 * Reply: {1, nowMs, json, json, ...} with every live node's registration (this one included), or
 * {0, nowMs, json of the instance that holds the name}.
 */
export const HEARTBEAT = script(
  "heartbeat",
  `${NOW_MS}
local name = ARGV[1]
local instance = ARGV[2]
local dead = tonumber(ARGV[4])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and c.instance ~= instance and c.owner ~= ARGV[6] then
    return {0, now, cur}
  end
end
local v = cjson.decode(ARGV[3])
v.heartbeatMs = now
redis.call('SET', KEYS[1], cjson.encode(v), 'PX', dead)
redis.call('ZADD', KEYS[2], now, name)
-- A node not heard from for a day leaves the list of known nodes.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 86400000)
local out = {1, now}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now - dead, '+inf')) do
  local j = redis.call('GET', ARGV[5] .. n)
  if j then out[#out + 1] = j end
end
return out
`,
);

/** Removes a node's registration, if it is still this instance's. KEYS: node key, nodes set. ARGV: name, instance. */
export const DEREGISTER = script(
  "deregister",
  `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and c.instance == ARGV[2] then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 1
  end
end
return 0
`,
);
