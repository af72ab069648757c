/**
 * The `mta` executable's entry point: the command tree, declared as data, subcommands loaded lazily.
 *
 * Owns: argv → command, exit code. Each subcommand lives in its own file and only wires
 * arguments to app/ and config/.
 */
import { basename } from "node:path";
import { defineCommand } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { reportInternal, run } from "./_run.ts";

export const main = defineCommand({
  meta: {
    name: "mta",
    version: pkg.version,
    description:
      "Outbound mail transfer agent: durable segment spool, tens of thousands of concurrent SMTP sessions",
  },
  subCommands: {
    serve: () => import("./serve.ts").then((m) => m.default),
    "check-config": () => import("./checkConfig.ts").then((m) => m.default),
    dkim: () => import("./dkim.ts").then((m) => m.default),
    "hash-password": () => import("./hashPassword.ts").then((m) => m.default),
    queue: () => import("./queue.ts").then((m) => m.default),
    send: () => import("./send.ts").then((m) => m.default),
    suppress: () => import("./suppress.ts").then((m) => m.default),
    bounce: () => import("./bounce.ts").then((m) => m.default),
  },
});

// Whatever escapes a command (a rejection nobody awaited, a throw in a callback) is still one line
// and exit 70, never Bun's stack trace of the minified bundle.
process.on("uncaughtException", (err) => process.exit(reportInternal(err)));
process.on("unhandledRejection", (err) => process.exit(reportInternal(err)));

// Invoked through a symlink named sendmail (/usr/sbin/sendmail -> mta): behave as `mta send`.
// process.argv0 keeps the name it was called by; execPath would resolve the link.
const argv = process.argv.slice(2);
process.exitCode = await run(main, basename(process.argv0) === "sendmail" ? ["send", ...argv] : argv);
