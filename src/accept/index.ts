/**
 * Accepting mail: the accept pipeline every message takes into the spool (SMTP listeners, the HTTP
 * inject API, the maildrop of `mta send`, DSNs), and those entry points.
 *
 * Owns: the public face of accept/.
 * Does not own: SMTP sessions (listener/), the spool (spool/), message composition (message/).
 */
export {
  checkItem,
  decodeBase64Message,
  type InjectItem,
  injectHandler,
  injectLimitBytes,
  injectReceived,
  itemToMessage,
} from "./_inject.ts";
export {
  type DropItem,
  dropMessage,
  localReceived,
  MAILDROP_DIR_MODE,
  MaildropPickup,
  parseDropFile,
  type PickupOptions,
  prepareMaildrop,
  withLocalReceived,
} from "./_maildrop.ts";
export {
  type AcceptDeps,
  AcceptPipeline,
  type AcceptSink,
  contentRefusal,
  type Submission,
  takePoolHeader,
} from "./_pipeline.ts";
