/**
 * Administration: every `mta queue` operation (_ops.ts), its control API routes (_routes.ts) and the
 * client the CLI uses (_client.ts: the daemon through its control API, else the spool directory), the
 * same for `mta suppress` and the suppression list (_suppress.ts), and finding a running daemon's
 * control endpoint (_control.ts, also used by `mta send`); moving queued messages to another node
 * (_transfer.ts) and merging the nodes' summaries into the fleet view (_fleet.ts), for the cluster.
 *
 * Owns: the public face of admin/.
 * Does not own: the queues (scheduler/), what a bounce or delete records (disposition/).
 */
export { type LiveScheduler, parseHeaders, QueueOps, type QueueOpsOptions } from "./_ops.ts";
export {
  type ActionResult,
  daemonNeeded,
  type FlushResult,
  MESSAGE_STATES,
  type MessageDetail,
  type MessageList,
  type MessageRow,
  type MessageState,
  QueueError,
  type QueueSummary,
  SORT_KEYS,
  type Selector,
  type SortKey,
  type StatsResult,
  type SummaryRow,
} from "./_shapes.ts";
export { HttpQueueClient, LocalQueueClient, openQueueClient, type QueueClient } from "./_client.ts";
export { handle, jsonBody, num, optString, queueRoutes, selectorFrom, str } from "./_routes.ts";
export { type ClusterSummary, type FleetNode, type FleetRow, mergeSummaries } from "./_fleet.ts";
export { TransferReceiver, type TransferResult, transferOut } from "./_transfer.ts";
export {
  type CheckResult,
  type ListFilter,
  openSuppressClient,
  type SuppressClient,
  suppressionRoutes,
} from "./_suppress.ts";
export { formatVerifyReport } from "../spool/index.ts";
export {
  type ControlEndpoint,
  controlBaseUrl,
  type DaemonLookup,
  findDaemon,
  tcpEndpoint,
} from "./_control.ts";
