/**
 * `mta queue` for the rest of the app: queue operations, their control API routes, and the client
 * the CLI uses (daemon through the control API, else the spool directory).
 *
 * Owns: the public face of the queue operations (see _queueOps.ts and _queueClient.ts).
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
} from "./_queueOps.ts";
export type { ClusterSummary, FleetNode, FleetRow } from "./_fleet.ts";
export type { TransferResult } from "./_transfer.ts";
export {
  HttpQueueClient,
  LocalQueueClient,
  openQueueClient,
  type QueueClient,
  queueRoutes,
} from "./_queueClient.ts";
