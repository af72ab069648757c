/** `mta serve`: run the daemon in the foreground until SIGTERM/SIGINT. */
import { defineCommand } from "citty";
import { runDaemon } from "../app/index.ts";
import { findConfigPath } from "../config/index.ts";
import { configArg } from "./_args.ts";

export default defineCommand({
  meta: {
    name: "serve",
    description: "Run the MTA daemon in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads)",
  },
  args: { ...configArg },
  async run({ args }) {
    return runDaemon(findConfigPath(args.config));
  },
});
