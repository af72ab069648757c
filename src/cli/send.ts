/**
 * `mta send`: sendmail-compatible submission and batch jobs (see app/send.ts).
 *
 * Owns: handing the raw arguments to app/: sendmail's glued flags (`-fuser@x`, `-FCronDaemon`, `-oi`)
 * do not fit citty's parser, so this command declares no args and reads `rawArgs` itself.
 */
import { defineCommand } from "citty";
// Until app/index.ts re-exports runSend (integrator), this reaches into app/send.ts directly.
import { runSend } from "../app/send.ts";

export default defineCommand({
  meta: {
    name: "send",
    description: "Send mail like sendmail (message on stdin) or batches of .eml/mbox/JSON Lines files",
  },
  async run({ rawArgs }) {
    const code = await runSend(rawArgs);
    if (code !== 0) {
      // citty drops a subcommand's return value; make sure the exit code reaches the shell.
      await new Promise<void>((resolve) => process.stdout.write("", () => resolve()));
      process.exit(code);
    }
    return code;
  },
});
