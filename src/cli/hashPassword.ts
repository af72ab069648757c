/**
 * `mta hash-password`: turns a password into the hash that `listen[].users` expects (argon2id), so that
 * no plain password is ever written into the configuration.
 *
 * Owns: reading the password so it stays out of the shell history and the process list: on a terminal,
 * a prompt on stderr with echo off, asked twice; otherwise the first line of standard input.
 * Invariants: the password is never echoed or printed; bcrypt's 72-byte limit is refused, never
 * silently truncated.
 */
import { defineCommand } from "citty";
import { EXIT, fileError, MtaError, UsageError } from "../lib/index.ts";

const MAX_PASSWORD_BYTES = 1024;

/** Reads one line from a terminal in raw mode (no echo). Ctrl-C or Ctrl-D abort. */
function promptHidden(prompt: string): Promise<string> {
  const stdin = process.stdin;
  // Echo goes off before the prompt appears: a password typed (or pasted) as soon as the prompt
  // shows must never be echoed by the terminal.
  stdin.setRawMode(true);
  process.stderr.write(prompt);
  return new Promise<string>((resolve, reject) => {
    let line = "";
    const finish = (err?: Error) => {
      stdin.off("data", onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write("\n");
      if (err) reject(err);
      else resolve(line);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return finish();
        if (ch === "\x03" || (ch === "\x04" && line === ""))
          return finish(new MtaError("usage", "no password given (interrupted)"));
        if (ch === "\x7f" || ch === "\b") line = [...line].slice(0, -1).join("");
        else if (ch >= " ") line += ch;
      }
    };
    stdin.resume();
    stdin.on("data", onData);
  });
}

/** The first line of standard input (without its line end), reading no more than needed. */
async function firstLine(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of Bun.stdin.stream()) {
    const b = Buffer.from(chunk);
    const nl = b.indexOf(10);
    chunks.push(nl >= 0 ? b.subarray(0, nl) : b);
    size += b.length;
    if (nl >= 0 || size > MAX_PASSWORD_BYTES) break;
  }
  return Buffer.concat(chunks).toString("utf8").replace(/\r$/, "");
}

export default defineCommand({
  meta: {
    name: "hash-password",
    description: "Hash a password (prompted on a terminal, else the first line of stdin) for listen[].users",
  },
  args: {
    algorithm: { type: "string", default: "argon2id", description: "argon2id or bcrypt" },
  },
  async run({ args }) {
    const algorithm = args.algorithm;
    if (algorithm !== "argon2id" && algorithm !== "bcrypt")
      throw new UsageError(`--algorithm must be argon2id or bcrypt, not "${algorithm}"`);
    let password: string;
    if (process.stdin.isTTY) {
      password = await promptHidden("Password: ");
      if (password && (await promptHidden("Again: ")) !== password)
        throw new MtaError("data", "the two passwords differ; nothing was hashed");
    } else
      password = await firstLine().catch((err) => {
        throw fileError(err, "standard input", "read");
      });
    if (!password)
      throw new MtaError(
        "usage",
        "no password (type it at the prompt, or pipe it: `printf %s secret | mta hash-password`)",
      );
    const bytes = Buffer.byteLength(password);
    if (bytes > MAX_PASSWORD_BYTES)
      throw new MtaError("data", `the password is over ${MAX_PASSWORD_BYTES} bytes`);
    if (algorithm === "bcrypt" && bytes > 72)
      throw new MtaError(
        "data",
        "bcrypt uses only the first 72 bytes of a password: use argon2id for this one",
      );
    process.stdout.write(`${await Bun.password.hash(password, { algorithm })}\n`);
    return EXIT.ok;
  },
});
