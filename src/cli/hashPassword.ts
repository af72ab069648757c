/**
 * `mta hash-password`: turns a password into the hash that `listen[].users` expects (argon2id), so that
 * no plain password is ever written into the configuration. Reads the password from standard input
 * (first line) so it stays out of the shell history and the process list.
 */
import { defineCommand } from "citty";
import { EXIT, UsageError } from "../lib/index.ts";

export default defineCommand({
  meta: { name: "hash-password", description: "Hash a password (read from stdin) for listen[].users" },
  args: {
    algorithm: { type: "string", default: "argon2id", description: "argon2id or bcrypt" },
  },
  async run({ args }) {
    const algorithm = args.algorithm;
    if (algorithm !== "argon2id" && algorithm !== "bcrypt")
      throw new UsageError(`--algorithm must be argon2id or bcrypt`);
    const text = await new Response(Bun.stdin.stream()).text();
    const password = text.split(/\r?\n/)[0] ?? "";
    if (!password)
      throw new UsageError("no password on standard input (e.g. `echo -n secret | mta hash-password`)");
    process.stdout.write(`${await Bun.password.hash(password, { algorithm })}\n`);
    return EXIT.ok;
  },
});
