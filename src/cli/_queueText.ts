/**
 * The human text of `mta queue` answers: the summary's tables (destinations, and nodes for a fleet),
 * the message list, one message, the spool's statistics.
 *
 * Owns: the columns and lines of each table and view; times as ages ("3h12m") and "in 5m"/"now".
 * Does not own: the answers (admin/'s shapes; `--json` prints them as they are), the subcommands and
 * exit codes (queue.ts), table layout (_output.ts).
 * Invariant: pure functions of the answer (and the time given): the same answer prints the same text.
 */
import type {
  ClusterSummary,
  MessageDetail,
  MessageList,
  QueueSummary,
  StatsResult,
} from "../admin/index.ts";
import { formatBytes } from "../lib/index.ts";
import { shortAge, table } from "./_output.ts";

function when(atMs: number | null, nowMs: number): string {
  if (atMs === null) return "-";
  return atMs <= nowMs ? "now" : `in ${shortAge(atMs - nowMs)}`;
}

/** The summary's table: a row per destination and a total (with the nodes holding each, for a fleet). */
export function destinationTable(s: QueueSummary | ClusterSummary, fleet: boolean): string {
  {
    const rows = s.destinations.map((r) => [
      r.destination,
      r.messages,
      r.recipients,
      formatBytes(r.bytes),
      r.oldestMs === null ? "-" : shortAge(s.nowMs - r.oldestMs),
      when(r.nextAttemptMs, s.nowMs),
      r.activeConnections,
      // A routed domain names the next hop whose queue and state it shares (one row, not two).
      `${r.state}${r.site ? ` via ${r.site}` : ""}${
        r.reason
          ? ` (${r.reason}${r.untilMs !== null ? `, until ${when(r.untilMs, s.nowMs).slice(3)}` : ""})`
          : ""
      }`,
      r.lastError ?? "",
      ...(fleet ? [("nodes" in r ? (r.nodes as string[]) : []).join(",")] : []),
    ]);
    const t = s.totals;
    rows.push([
      `TOTAL ${t.destinations} destination(s)`,
      t.messages,
      t.recipients,
      formatBytes(t.bytes),
      t.oldestMs === null ? "-" : shortAge(s.nowMs - t.oldestMs),
      "",
      t.activeConnections,
      "",
      "",
      ...(fleet ? [""] : []),
    ]);
    return table(
      [
        "DESTINATION",
        "MSGS",
        "RCPTS",
        "BYTES",
        "OLDEST",
        "NEXT",
        "CONNS",
        "STATE",
        "LAST ERROR",
        ...(fleet ? ["NODES"] : []),
      ],
      rows,
    );
  }
}

/** A fleet's nodes: each one's totals, or why it did not answer. */
export function nodesTable(s: ClusterSummary): string {
  return table(
    ["NODE", "CONTROL", "MSGS", "RCPTS", "BYTES", "CONNS", "STATUS"],
    s.nodes.map((n) =>
      n.ok && n.totals
        ? [
            n.name,
            n.control,
            n.totals.messages,
            n.totals.recipients,
            formatBytes(n.totals.bytes),
            n.totals.activeConnections,
            "ok",
          ]
        : [n.name, n.control || "-", "-", "-", "-", "-", `did not answer: ${n.error ?? "?"}`],
    ),
  );
}

/** `mta queue list`: a row per message. */
export function messagesTable(r: MessageList): string {
  return table(
    ["ID", "DESTINATION", "SENDER", "RCPTS", "SIZE", "AGE", "ATTEMPTS", "NEXT", "STATE"],
    r.messages.map((m) => [
      m.id,
      m.destination,
      m.sender || "<>",
      `${m.pendingRecipients}/${m.recipients}`,
      formatBytes(m.bytes),
      shortAge(r.nowMs - m.arrivalMs),
      m.attempts,
      when(m.nextAttemptMs, r.nowMs),
      m.state,
    ]),
  );
}

/** A recipient's last TLS on one line: "dane, TLSv1.3, TLS_AES_256_GCM_SHA384, verified". */
function tlsText(t: { policy: string; version?: string; cipher?: string; verified: boolean }): string {
  const session = t.version ? [t.version, ...(t.cipher ? [t.cipher] : [])] : [];
  return [t.policy, ...session, t.verified ? "verified" : "not verified"].join(", ");
}

/** `mta queue show`: envelope, recipients with state, last reply and TLS, header. */
export function messageText(m: MessageDetail, now: number): string {
  const lines = [
    `id:           ${m.id}`,
    `destination:  ${m.destination}`,
    `sender:       ${m.sender || "<>"}`,
    `arrived:      ${new Date(m.arrivalMs).toISOString()} (${shortAge(now - m.arrivalMs)} ago)`,
    `size:         ${m.bytes} bytes`,
    `attempts:     ${m.attempts}`,
    `next attempt: ${new Date(m.nextAttemptMs).toISOString()} (${when(m.nextAttemptMs, now)})`,
    `state:        ${m.state}`,
    `attributes:   ${Object.entries(m.attributes)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ")}`,
    "recipients:",
    ...m.recipients.flatMap((r) => [
      `  ${r.state.padEnd(9)} ${r.address}${r.lastReply ? `  last reply: ${r.lastReply}` : ""}${r.class ? ` [${r.class}]` : ""}`,
      ...(r.tls ? [`            tls: ${tlsText(r.tls)}`] : []),
    ]),
    "header:",
    ...m.headers.map((h) => `  ${h.name}: ${h.value}`),
  ];
  return lines.join("\n");
}

/** `mta queue stats`. */
export function statsText(s: StatsResult): string {
  return [
    `spool:        ${s.dir}`,
    `segments:     ${s.segments} (active ${s.activeSegment || "-"})`,
    `file bytes:   ${s.fileBytes} (${formatBytes(s.fileBytes)})`,
    `live bytes:   ${s.liveBytes} (${formatBytes(s.liveBytes)})`,
    `dead bytes:   ${s.deadBytes} (${formatBytes(s.deadBytes)})`,
    `messages:     ${s.messages}`,
    `destinations: ${s.destinations}`,
    `recipients:   pending ${s.recipients.pending}, delivered ${s.recipients.delivered}, failed ${s.recipients.failed}`,
    `group commit: ${s.groupCommit.batches} batch(es), ${s.groupCommit.recordsPerBatch.toFixed(1)} record(s) per batch`,
    `compactions:  ${s.compactions}`,
  ].join("\n");
}
