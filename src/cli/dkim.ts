/**
 * `mta dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits 2048] [--out FILE]`
 *
 * Owns: the arguments of the dkim command. Writes a new private key (PEM, mode 0600, never over an
 * existing file) and prints the DNS TXT record to publish on stdout; where the key went goes to stderr.
 * Key generation itself lives in dkim/.
 */
import fs from "node:fs";
import { defineCommand } from "citty";
import { DkimSigner, formatTxtRecord, generateKey } from "../app/index.ts";
import { EXIT, UsageError } from "../lib/index.ts";

const keygen = defineCommand({
  meta: { name: "keygen", description: "Generate a DKIM key and print the DNS TXT record to publish" },
  args: {
    domain: { type: "string", required: true, description: "Signing domain (d=)" },
    selector: { type: "string", required: true, description: "Selector (s=)" },
    type: { type: "string", default: "rsa", description: "rsa or ed25519" },
    bits: { type: "string", default: "2048", description: "RSA key size in bits" },
    out: { type: "string", description: "Where to write the private key (default: <selector>.<domain>.pem)" },
  },
  run({ args }) {
    const type = args.type;
    if (type !== "rsa" && type !== "ed25519")
      throw new UsageError(`--type must be rsa or ed25519, not "${type}"`);
    if (!/^\d+$/.test(args.bits)) throw new UsageError(`--bits must be a number, not "${args.bits}"`);
    const domain = args.domain.toLowerCase().replace(/\.$/, "");
    const { privateKeyPem, dnsTxt } = generateKey(type, Number(args.bits));
    // Checks the domain and selector the same way the daemon will at start.
    DkimSigner.create({ keys: [{ domain, selector: args.selector, privateKeyPem }] });
    const out = args.out ?? `${args.selector}.${domain}.pem`;
    try {
      fs.writeFileSync(out, privateKeyPem, { mode: 0o600, flag: "wx" });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw new UsageError(`${out} exists; not overwriting a key`);
      throw err;
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
