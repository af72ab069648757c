/**
 * `mta dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits 2048] [--out FILE]`
 *
 * Owns: the arguments of the dkim command. Writes a new private key (PEM, mode 0600, never over an
 * existing file) and prints the DNS TXT record to publish on stdout; where the key went goes to stderr.
 * Key generation itself lives in dkim/.
 */
import fs from "node:fs";
import { defineCommand } from "citty";
import { DkimSigner, formatTxtRecord, generateKey } from "../dkim/index.ts";
import { EXIT, errnoOf, errorMessage, fileError, MtaError, UsageError } from "../lib/index.ts";

const keygen = defineCommand({
  meta: { name: "keygen", description: "Generate a DKIM key and print the DNS TXT record to publish" },
  args: {
    domain: { type: "string", required: true, description: "Signing domain (d=)" },
    selector: { type: "string", required: true, description: "Selector (s=)" },
    type: { type: "string", default: "rsa", description: "rsa or ed25519" },
    bits: { type: "string", default: "2048", description: "RSA key size in bits" },
    out: { type: "string", description: "Where to write the private key (default: <selector>.<domain>.pem)" },
  },
  run({ args, rawArgs: argv }) {
    const type = args.type;
    if (type !== "rsa" && type !== "ed25519")
      throw new UsageError(`--type must be rsa or ed25519, not "${type}"`);
    if (!/^\d+$/.test(args.bits)) throw new UsageError(`--bits must be a number, not "${args.bits}"`);
    if (type === "ed25519" && argv.some((a) => a === "--bits" || a.startsWith("--bits=")))
      throw new UsageError("--bits applies to --type rsa only (Ed25519 keys have one size)");
    const domain = args.domain.toLowerCase().replace(/\.$/, "");
    let key: ReturnType<typeof generateKey>;
    try {
      key = generateKey(type, Number(args.bits));
      // Checks the domain and selector the same way the daemon will at start.
      DkimSigner.create({ keys: [{ domain, selector: args.selector, privateKeyPem: key.privateKeyPem }] });
    } catch (err) {
      throw new UsageError(errorMessage(err));
    }
    const { privateKeyPem, dnsTxt } = key;
    const out = args.out ?? `${args.selector}.${domain}.pem`;
    try {
      fs.writeFileSync(out, privateKeyPem, { mode: 0o600, flag: "wx" });
    } catch (err) {
      if (errnoOf(err) === "EEXIST") throw new MtaError("cantcreate", `${out} exists; not overwriting a key`);
      throw fileError(err, `--out ${out}`, "write");
    }
    process.stderr.write(`mta: wrote ${type} private key to ${out} (mode 0600); publish this record:\n`);
    process.stdout.write(`${formatTxtRecord(domain, args.selector, dnsTxt)}\n`);
    return EXIT.ok;
  },
});

export default defineCommand({
  meta: { name: "dkim", description: "DKIM keys" },
  subCommands: { keygen },
});
