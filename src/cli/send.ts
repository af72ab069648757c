/**
 * `mta send`: sendmail-compatible submission and batch jobs (see sendmail/).
 *
 * Owns: handing the raw arguments to app/: sendmail's glued flags (`-fuser@x`, `-FCronDaemon`, `-oi`)
 * do not fit citty's parser, so this command declares no args and reads `rawArgs` itself.
 */
import { defineCommand } from "citty";
import { runSend } from "../sendmail/index.ts";
import { ownArguments } from "./_run.ts";

export default ownArguments(
  defineCommand({
    meta: {
      name: "send",
      description: "Send mail like sendmail (message on stdin) or batches of .eml/mbox/JSON Lines files",
    },
    run({ rawArgs }) {
      return runSend(rawArgs);
    },
  }),
);
