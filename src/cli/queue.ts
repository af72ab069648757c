/**
 * `mta queue`: what is queued, where, why, and the levers to act on it.
 *
 * Owns: the subcommands' arguments, human tables (default) and `--json` output, exit codes
 * (verify with damage or quarantined bytes 65; usage 64; no daemon for suspend/resume, or a locked
 * spool, 69; a user who may reach neither the daemon nor the spool 77).
 * Does not own: the operations (admin/'s QueueOps) or how they reach the spool (admin/'s QueueClient:
 * the daemon's control API when one answers at control.address, else the spool directory), the
 * human text of the answers (_queueText.ts).
 */
import { defineCommand } from "citty";
import {
  type ActionResult,
  formatVerifyReport,
  MESSAGE_STATES,
  type MessageState,
  openQueueClient,
  type QueueClient,
  SORT_KEYS,
  type Selector,
  type SortKey,
} from "../admin/index.ts";
import { findConfigPath, loadConfig } from "../config/index.ts";
import { durationArg, EXIT, formatBytes, isMessageId, MtaError, UsageError } from "../lib/index.ts";
import { configArg } from "./_args.ts";
import { print, printJson } from "./_output.ts";
import { destinationTable, messagesTable, messageText, nodesTable, statsText } from "./_queueText.ts";

const common = {
  ...configArg,
  json: { type: "boolean", description: "Print JSON (the control API's answer) instead of a table" },
  local: {
    type: "boolean",
    description: "Open the spool directly even when a daemon answers on control.address",
  },
} as const;

async function client(args: { config?: string; local?: boolean }): Promise<QueueClient> {
  // Secret files stay unread (loadConfig never reads them): the token is read only when the control
  // socket cannot be used.
  const { config } = loadConfig(findConfigPath(args.config));
  return openQueueClient(config, args.local ? { prefer: "local" } : {});
}

function optionalDuration(flag: string, text: string | undefined): number | undefined {
  return text === undefined ? undefined : durationArg(flag, text);
}

function wholeNumber(text: string | undefined, what: string): number | undefined {
  if (text === undefined || text === "") return undefined;
  if (!/^\d+$/.test(text)) throw new UsageError(`${what} must be a whole number, not "${text}"`);
  return Number(text);
}

const selectorArgs = {
  id: { type: "string", description: "One message by queue id" },
  destination: { type: "string", description: "Messages to this destination (recipient domain)" },
  sender: { type: "string", description: "Messages from this envelope sender" },
  state: { type: "string", description: `Messages in this state: ${MESSAGE_STATES.join(", ")}` },
  "older-than": { type: "string", description: "Messages that arrived at least this long ago (e.g. 1h)" },
} as const;

function selector(args: {
  id?: string;
  destination?: string;
  sender?: string;
  state?: string;
  "older-than"?: string;
}): Selector {
  const sel: Selector = {};
  if (args.id) sel.id = args.id;
  if (args.destination) sel.destination = args.destination.toLowerCase();
  if (args.sender !== undefined) sel.sender = args.sender;
  if (args.state) {
    if (!MESSAGE_STATES.includes(args.state as MessageState))
      throw new UsageError(`--state must be one of ${MESSAGE_STATES.join(", ")}, not "${args.state}"`);
    sel.state = args.state as MessageState;
  }
  const older = optionalDuration("--older-than", args["older-than"]);
  if (older !== undefined) sel.olderThanMs = older;
  return sel;
}

const summary = defineCommand({
  meta: {
    name: "summary",
    description: "Per destination: messages, recipients, bytes, oldest, next attempt, state",
  },
  args: {
    ...common,
    top: { type: "string", description: "Show only the first N destinations" },
    sort: { type: "string", default: "messages", description: `Sort by ${SORT_KEYS.join(", ")}` },
    cluster: {
      type: "boolean",
      description: "Every live node of the cluster, merged (nodes that do not answer are marked)",
    },
  },
  async run({ args }) {
    if (!SORT_KEYS.includes(args.sort as SortKey))
      throw new UsageError(`--sort must be one of ${SORT_KEYS.join(", ")}, not "${args.sort}"`);
    const top = wholeNumber(args.top, "--top");
    if (args.cluster && args.local)
      throw new UsageError("--cluster asks the daemon; it cannot go with --local");
    const c = await client(args);
    const opts = { sort: args.sort as SortKey, ...(top !== undefined ? { top } : {}) };
    if (args.cluster) {
      const s = await c.clusterSummary(opts);
      if (args.json) return printJson(s);
      print(nodesTable(s));
      print("");
      print(destinationTable(s, true));
      if (s.omitted > 0) print(`(${s.omitted} more destination(s); --top to show more)`);
      if (s.note) print(`(${s.note})`);
      if (s.unanswered.length > 0)
        print(
          `(${s.unanswered.length} node(s) did not answer; their mail is not counted: ${s.unanswered.join(", ")})`,
        );
      return EXIT.ok;
    }
    const s = await c.summary(opts);
    if (args.json) return printJson(s);
    print(destinationTable(s, false));
    if (s.omitted > 0) print(`(${s.omitted} more destination(s); --top to show more)`);
    if (c.mode === "local") print("(no daemon answered: read from the spool directory)");
  },
});

const transfer = defineCommand({
  meta: {
    name: "transfer",
    description:
      "Move queued messages to another node of the cluster, schedule and attempts kept (needs the daemon)",
  },
  args: {
    ...common,
    to: { type: "string", required: true, description: "The node to move them to (its cluster.node name)" },
    ...selectorArgs,
  },
  async run({ args }) {
    if (args.local) throw new UsageError("transfer goes through the daemon; it cannot go with --local");
    const sel = selector(args);
    const c = await client(args);
    const r = await c.transfer(args.to, sel);
    if (args.json) printJson(r);
    else {
      print(
        `${r.moved} of ${r.matched} message(s) moved to ${r.to} (${r.recipients} recipient(s) in ${r.batches} batch(es)${
          r.alreadyThere > 0 ? `; ${r.alreadyThere} were already there from an earlier run` : ""
        })`,
      );
      for (const f of r.failed.slice(0, 20)) print(`not moved: ${f.id}: ${f.error}`);
      if (r.failed.length > 20) print(`(${r.failed.length - 20} more not moved)`);
    }
    // Some are still here: run it again later (EX_TEMPFAIL).
    return r.failed.length > 0 ? EXIT.tempFail : EXIT.ok;
  },
});

const list = defineCommand({
  meta: { name: "list", description: "Messages, oldest first, filtered" },
  args: {
    ...common,
    destination: selectorArgs.destination,
    sender: selectorArgs.sender,
    state: selectorArgs.state,
    "older-than": selectorArgs["older-than"],
    limit: { type: "string", default: "1000", description: "At most this many messages" },
  },
  async run({ args }) {
    const sel = selector(args);
    const limit = wholeNumber(args.limit, "--limit");
    const c = await client(args);
    const r = await c.list({ ...sel, ...(limit !== undefined ? { limit } : {}) });
    if (args.json) return printJson(r);
    print(messagesTable(r));
    print(
      `${r.matched} message(s)${r.matched > r.messages.length ? `, first ${r.messages.length} shown` : ""}`,
    );
  },
});

const show = defineCommand({
  meta: { name: "show", description: "One message: envelope, recipients with state and last reply, header" },
  args: {
    ...common,
    id: { type: "positional", required: true, description: "Queue id" },
    body: { type: "boolean", description: "Print the whole message too" },
  },
  async run({ args }) {
    const c = await client(args);
    const m = await c.show(args.id, { body: args.body === true });
    if (args.json) return printJson(m);
    print(messageText(m, Date.now()));
    if (m.body !== undefined) print(`\n${m.body}`);
  },
});

const flush = defineCommand({
  meta: { name: "flush", description: "Retry now: everything, one destination, or one message (by id)" },
  args: {
    ...common,
    target: {
      type: "positional",
      required: false,
      description: "A destination or a queue id (default: all)",
    },
  },
  async run({ args }) {
    const t = args.target;
    const target =
      t === undefined || t === "" ? {} : isMessageId(t) ? { id: t } : { destination: t.toLowerCase() };
    const c = await client(args);
    const r = await c.flush(target);
    if (args.json) return printJson(r);
    // The API names sites; a domain routed to a next hop is named as the operator wrote it, as summary does.
    const named = r.backoffLifted.map((site) =>
      target.destination !== undefined && site !== target.destination
        ? `${target.destination} via ${site}`
        : site,
    );
    const lifted = named.length ? `; backoff lifted for ${named.join(", ")}` : "";
    print(
      r.live
        ? `${r.flushed} message(s) due now${lifted}`
        : `${r.flushed} message(s) marked due now; the daemon tries them when it starts`,
    );
  },
});

const suspend = defineCommand({
  meta: { name: "suspend", description: "No new attempts to a destination (needs the daemon)" },
  args: {
    ...common,
    destination: { type: "positional", required: true, description: "Destination (recipient domain)" },
    for: { type: "string", description: "For how long (e.g. 2h); default: until resume" },
    reason: { type: "string", description: "Shown in the summary" },
  },
  async run({ args }) {
    const forMs = optionalDuration("--for", args.for);
    if (forMs === 0) throw new UsageError("--for must be more than 0 (leave it out to suspend until resume)");
    const c = await client(args);
    const r = await c.suspend(args.destination.toLowerCase(), forMs, args.reason);
    if (args.json) return printJson(r);
    print(
      `${r.destination} suspended ${r.untilMs === null ? "until resumed" : `until ${new Date(r.untilMs).toISOString()}`}`,
    );
  },
});

const resume = defineCommand({
  meta: { name: "resume", description: "Lift a suspension, backoff or throttle (needs the daemon)" },
  args: {
    ...common,
    destination: { type: "positional", required: true, description: "Destination (recipient domain)" },
  },
  async run({ args }) {
    const c = await client(args);
    const r = await c.resume(args.destination.toLowerCase());
    if (args.json) return printJson(r);
    print(`${r.destination} resumed`);
  },
});

function action(kind: "bounce" | "delete") {
  return defineCommand({
    meta: {
      name: kind,
      description:
        kind === "bounce"
          ? "Fail messages now with a DSN to their senders (counts first; --yes to act)"
          : "Remove messages without a DSN (counts first; --yes to act)",
    },
    args: {
      ...common,
      ...selectorArgs,
      yes: { type: "boolean", description: "Act (without it: only count)" },
    },
    async run({ args }) {
      const sel = selector(args);
      const c = await client(args);
      const r: ActionResult =
        kind === "bounce"
          ? await c.bounce(sel, { yes: args.yes === true })
          : await c.delete(sel, { yes: args.yes === true });
      if (args.json) return printJson(r);
      if (!r.done) {
        print(
          `${r.matched} message(s) match${r.sample.length ? `, e.g. ${r.sample.slice(0, 5).join(" ")}` : ""}`,
        );
        if (r.matched > 0) print(`nothing changed; run again with --yes to ${kind} them`);
        return EXIT.ok;
      }
      const verb = kind === "bounce" ? "bounced" : "deleted";
      print(
        `${r.affected} of ${r.matched} message(s) ${verb} (${r.recipients} recipient(s)${kind === "bounce" ? `, ${r.dsns} DSN(s) queued` : ""})`,
      );
      for (const f of r.failed) print(`failed: ${f.id}: ${f.error}`);
      if (r.failed.length > 0)
        throw new MtaError("runtime", `${r.failed.length} message(s) could not be changed`);
      return EXIT.ok;
    },
  });
}

const stats = defineCommand({
  meta: { name: "stats", description: "Spool segments, live and dead bytes, messages, recipients by state" },
  args: { ...common },
  async run({ args }) {
    const c = await client(args);
    const s = await c.stats();
    if (args.json) return printJson(s);
    print(statsText(s));
  },
});

const verify = defineCommand({
  meta: { name: "verify", description: "Check every record of every segment (exit 65 when damaged)" },
  args: { ...common },
  async run({ args }) {
    const c = await client(args);
    const r = await c.verify();
    if (args.json) printJson(r);
    else print(formatVerifyReport(r));
    // Thrown, not returned: citty drops a subcommand's return value; _run.ts maps "data" to 65.
    if (!r.ok)
      throw new MtaError(
        "data",
        `${r.damaged.length} damaged range(s) and ${r.quarantined.length} quarantined file(s) in ${r.dir}`,
      );
    return EXIT.ok;
  },
});

const compact = defineCommand({
  meta: { name: "compact", description: "Compact sealed segments with little live data now" },
  args: { ...common },
  async run({ args }) {
    const c = await client(args);
    const r = await c.compact();
    if (args.json) return printJson(r);
    print(
      `${r.segmentsCompacted} segment(s) compacted, ${r.messagesMoved} message(s) moved, ${r.segmentsDeleted} segment(s) deleted, ${formatBytes(r.bytesReclaimed)} reclaimed`,
    );
  },
});

const drain = defineCommand({
  meta: {
    name: "drain",
    description: "Stop taking mail, move every queued message to another node, then stop the daemon",
  },
  args: {
    ...common,
    to: { type: "string", required: true, description: "The node to move them to (its cluster.node name)" },
  },
  async run({ args }) {
    if (args.local) throw new UsageError("drain goes through the daemon; it cannot go with --local");
    const c = await client(args);
    const r = await c.drain(args.to);
    if (args.json) printJson(r);
    else if (r.failed.length === 0)
      print(
        `drained: ${r.moved} message(s) moved to ${r.to} (${r.recipients} recipient(s)); the daemon is stopping`,
      );
    else {
      print(
        `${r.moved} of ${r.matched} message(s) moved to ${r.to}; the daemon takes no mail and keeps running`,
      );
      for (const f of r.failed.slice(0, 20)) print(`not moved: ${f.id}: ${f.error}`);
      if (r.failed.length > 20) print(`(${r.failed.length - 20} more not moved)`);
    }
    return r.failed.length > 0 ? EXIT.tempFail : EXIT.ok;
  },
});

export default defineCommand({
  meta: {
    name: "queue",
    description: "Queue diagnostics and actions, through the running daemon or on the spool directly",
  },
  subCommands: {
    summary,
    list,
    show,
    flush,
    suspend,
    resume,
    bounce: action("bounce"),
    delete: action("delete"),
    transfer,
    drain,
    stats,
    verify,
    compact,
  },
});
