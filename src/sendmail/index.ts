/**
 * `mta send` (also as `sendmail`): messages from standard input, files, mbox or JSON Lines, handed to a
 * running daemon (its maildrop or control API) or delivered by a daemon of its own.
 *
 * Owns: the public face of sendmail/.
 * Does not own: the accept pipeline and the maildrop format (accept/), RFC 5322 work (message/), the
 * engine it may run (app/).
 */
export { DEFAULT_LOCK_WAIT_MS, DEFAULT_MAX_TIME_MS, parseSendArgs, type SendArgs } from "./_args.ts";
export { BatchJournal, JournalBusyError } from "./_journal.ts";
export type { ReadContext, ReadResult } from "./_items.ts";
export { readInputs } from "./_readers.ts";
export { formatSummary, runSend, SEND_USAGE, type SendIo, type SendSummary, send } from "./_send.ts";
