/**
 * Administration: every `mta queue` operation (_ops.ts), its control API routes and the client the
 * CLI uses (_client.ts: the daemon through its control API, else the spool directory), the same for
 * `mta suppress` and the suppression list (_suppress.ts), and finding a running daemon's control
 * endpoint (_control.ts, also used by `mta send`).
 *
 * Owns: the public face of admin/.
 * Does not own: the queues (scheduler/), what a bounce or delete records (disposition/).
 */
export {
  type ActionResult,
  daemonNeeded,
  type FlushResult,
  type LiveScheduler,
  MESSAGE_STATES,
  type MessageDetail,
  type MessageList,
  type MessageRow,
  type MessageState,
  parseHeaders,
  QueueError,
  QueueOps,
  type QueueOpsOptions,
  type QueueSummary,
  SORT_KEYS,
  type Selector,
  type SortKey,
  type StatsResult,
  type SummaryRow,
} from "./_ops.ts";
export {
  HttpQueueClient,
  LocalQueueClient,
  openQueueClient,
  type QueueClient,
  queueRoutes,
} from "./_client.ts";
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
