/**
 * DKIM signing (RFC 6376, RFC 8463) with node:crypto and our own canonicalization.
 *
 * Owns: `DkimSigner`: choosing the signing domain from `From:`, the signed header list
 * (with oversigning), the DKIM-Signature tag list and its folding, the signatures themselves.
 * Does not own: canonicalization (_canon.ts), key checks (_keys.ts), reading key files or reloading
 * them on SIGHUP (app/), where signing happens in the accept pipeline (app/).
 * Invariants: `sign` never changes the message bytes, it only prepends header fields; a message with
 * no matching key, no `From:` or several `From:` fields is returned as the same bytes, unsigned.
 *
 * Why our own code rather than a library: the signing is two node:crypto calls, and the only
 * library doing both algorithms with a body hash over bytes (mailauth) pulls 50 packages and parses
 * through streams; canonicalization here is a single pass with no copy of the body in the common case.
 */
import { createHash, sign as cryptoSign } from "node:crypto";
import { concatBytes } from "../lib/index.ts";
import { domainOf } from "../smtp/index.ts";
import { bodyHash, type Canon, canonHeader, parseMessage } from "./_canon.ts";
import { type DkimAlgorithm, DkimKeyError, type LoadedKey, loadKey } from "./_keys.ts";

export interface DkimKeySpec {
  domain: string;
  selector: string;
  privateKeyPem: string;
  /** Inferred from the key when absent; a mismatch is a `DkimKeyError`. */
  algorithm?: DkimAlgorithm;
  /** Where the PEM came from; named in every `DkimKeyError` about this key. */
  keyFile?: string;
}

export type DkimCanonicalization = "relaxed/relaxed" | "relaxed/simple" | "simple/simple" | "simple/relaxed";

export interface DkimOptions {
  /** Several keys for one domain make several signatures (e.g. RSA + Ed25519, RFC 8463 §5). */
  keys: DkimKeySpec[];
  /** Header fields to sign when present; `DEFAULT_SIGNED_HEADERS` when absent. `From` is always signed. */
  headers?: string[];
  /** Header fields signed once more than they occur, so that none can be added later (RFC 6376 §8.15). */
  oversign?: string[];
  /** Header/body canonicalization; default relaxed/relaxed. */
  canonicalization?: DkimCanonicalization;
  /** Sets `x=` to signing time plus this duration (rounded up to whole seconds). */
  expireAfterMs?: number;
  /** From-domain (or a parent of it) -> signing domain. */
  domainMap?: Record<string, string>;
}

/** Signed when present: the fields that carry the message's identity and meaning to a reader. */
export const DEFAULT_SIGNED_HEADERS: readonly string[] = [
  "From",
  "Sender",
  "Reply-To",
  "Subject",
  "Date",
  "Message-ID",
  "To",
  "Cc",
  "MIME-Version",
  "Content-Type",
  "Content-Transfer-Encoding",
  "Content-ID",
  "Content-Description",
  "Resent-Date",
  "Resent-From",
  "Resent-Sender",
  "Resent-To",
  "Resent-Cc",
  "Resent-Message-ID",
  "In-Reply-To",
  "References",
  "List-Id",
  "List-Help",
  "List-Unsubscribe",
  "List-Unsubscribe-Post",
  "List-Subscribe",
  "List-Post",
  "List-Owner",
  "List-Archive",
  "Feedback-ID",
  // RFC 8460 §5.3: TLS-RPT reports are found by these; a signature over them says who sent the report.
  "TLS-Report-Domain",
  "TLS-Report-Submitter",
];

const FOLD_COLUMN = 76;

/** The domain of the first address in a `From:` value, lowercased, or undefined. */
export function fromDomain(value: string): string | undefined {
  let text = value.replace(/\r?\n/g, "");
  // Drop quoted strings and comments so that an '@' or '<' inside a display name cannot mislead.
  text = text.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  let prev: string;
  do {
    prev = text;
    text = text.replace(/\((?:[^()\\]|\\.)*\)/g, " ");
  } while (text !== prev);
  const angle = /<([^>]*)>/.exec(text);
  const addr = angle ? angle[1]! : (text.split(",")[0] ?? "");
  if (!addr.includes("@")) return undefined;
  const domain = domainOf(addr.trim()).replace(/\.$/, "");
  return /^[a-z0-9_.-]+$/.test(domain) && domain.includes(".") ? domain : undefined;
}

/** Folds `tags` into header lines no longer than FOLD_COLUMN where possible, breaking only between tags. */
function foldTags(prefix: string, tags: string[], eol: string): string {
  let out = prefix;
  let column = prefix.length;
  for (const [i, tag] of tags.entries()) {
    const piece = i === tags.length - 1 ? tag : `${tag};`;
    if (column > prefix.length && column + 1 + piece.length > FOLD_COLUMN) {
      out += `${eol} ${piece}`;
      column = 1 + piece.length;
    } else {
      out += ` ${piece}`;
      column += 1 + piece.length;
    }
  }
  return out;
}

/** `h=` value, folded after colons (FWS is allowed there, RFC 6376 §3.5). */
function foldList(names: string[], eol: string): string {
  const lines: string[] = [];
  let line = "h=";
  for (const [i, name] of names.entries()) {
    const piece = i === names.length - 1 ? name : `${name}:`;
    if (line.length + piece.length > FOLD_COLUMN - 2 && line !== "h=") {
      lines.push(line);
      line = "";
    }
    line += piece;
  }
  lines.push(line);
  return lines.join(`${eol} `);
}

function foldBase64(value: string, eol: string): string {
  const parts: string[] = [];
  for (let i = 0; i < value.length; i += 72) parts.push(value.slice(i, i + 72));
  return parts.join(`${eol} `);
}

export class DkimSigner {
  private constructor(
    private readonly keysByDomain: ReadonlyMap<string, readonly LoadedKey[]>,
    private readonly headers: readonly string[],
    private readonly oversign: ReadonlySet<string>,
    private readonly headerCanon: Canon,
    private readonly bodyCanon: Canon,
    private readonly expireAfterMs: number | undefined,
    private readonly domainMap: ReadonlyMap<string, string>,
  ) {}

  /** Checks every key now; a bad one throws `DkimKeyError` naming its selector and domain. */
  static create(opts: DkimOptions): DkimSigner {
    const keysByDomain = new Map<string, LoadedKey[]>();
    for (const spec of opts.keys) {
      const key = loadKey(spec);
      const list = keysByDomain.get(key.domain) ?? [];
      if (list.some((k) => k.selector === key.selector))
        throw new DkimKeyError(`DKIM key ${key.selector}._domainkey.${key.domain}: listed twice`);
      list.push(key);
      keysByDomain.set(key.domain, list);
    }
    const canon = opts.canonicalization ?? "relaxed/relaxed";
    const [h, b] = canon.split("/") as [Canon, Canon];
    if (!["relaxed", "simple"].includes(h) || !["relaxed", "simple"].includes(b))
      throw new DkimKeyError(`DKIM canonicalization "${canon}" is not one of relaxed|simple/relaxed|simple`);
    const headers: string[] = [];
    const seen = new Set<string>();
    for (const name of ["From", ...(opts.headers ?? DEFAULT_SIGNED_HEADERS), ...(opts.oversign ?? [])]) {
      if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name))
        throw new DkimKeyError(`DKIM header name "${name}" is invalid`);
      if (seen.has(name.toLowerCase())) continue;
      seen.add(name.toLowerCase());
      headers.push(name);
    }
    if (opts.expireAfterMs !== undefined && !(opts.expireAfterMs > 0))
      throw new DkimKeyError(`DKIM expiry must be a positive duration, not ${opts.expireAfterMs} ms`);
    const domainMap = new Map<string, string>();
    for (const [from, to] of Object.entries(opts.domainMap ?? {})) {
      const target = to.toLowerCase();
      if (!keysByDomain.has(target))
        throw new DkimKeyError(`DKIM domain map ${from} -> ${to}: no key for ${to}`);
      domainMap.set(from.toLowerCase(), target);
    }
    return new DkimSigner(
      keysByDomain,
      headers,
      new Set((opts.oversign ?? []).map((n) => n.toLowerCase())),
      h,
      b,
      opts.expireAfterMs,
      domainMap,
    );
  }

  /** The keys that sign mail whose `From:` is in `domain`: a mapping or a key for it or a parent domain. */
  keysFor(domain: string): readonly LoadedKey[] {
    let d = domain.toLowerCase();
    for (;;) {
      const mapped = this.domainMap.get(d);
      if (mapped) return this.keysByDomain.get(mapped) ?? [];
      const keys = this.keysByDomain.get(d);
      if (keys) return keys;
      const dot = d.indexOf(".");
      // Stop before a bare top-level domain.
      if (dot < 0 || d.indexOf(".", dot + 1) < 0) return [];
      d = d.slice(dot + 1);
    }
  }

  /** The algorithms of all keys, one entry per key. */
  get algorithms(): DkimAlgorithm[] {
    return [...this.keysByDomain.values()].flatMap((keys) => keys.map((k) => k.algorithm));
  }

  /** The keys that sign this message: none without exactly one `From:` with a domain that has a key. */
  private keysForMessage(parsed: ReturnType<typeof parseMessage>): readonly LoadedKey[] {
    const froms = parsed.fields.filter((f) => f.key === "from");
    if (froms.length !== 1) return [];
    const from = froms[0]!;
    const domain = fromDomain(from.raw.slice(from.raw.indexOf(":") + 1));
    return domain ? this.keysFor(domain) : [];
  }

  /** Whether `sign` would add a signature; reads only the header section. */
  wouldSign(message: Uint8Array): boolean {
    return this.keysForMessage(parseMessage(message)).length > 0;
  }

  /** Returns the message with DKIM-Signature header(s) prepended, or the same bytes when no key matches. */
  sign(message: Uint8Array, nowMs: number = Date.now()): Uint8Array {
    const parsed = parseMessage(message);
    const keys = this.keysForMessage(parsed);
    if (keys.length === 0) return message;

    const { eol } = parsed;
    const bh = bodyHash(message.subarray(parsed.bodyOffset), this.bodyCanon);

    // h=: every occurrence of each chosen field, plus one more for oversigned ones.
    const counts = new Map<string, number>();
    for (const f of parsed.fields) counts.set(f.key, (counts.get(f.key) ?? 0) + 1);
    const signedNames: string[] = [];
    for (const name of this.headers) {
      const key = name.toLowerCase();
      const n = (counts.get(key) ?? 0) + (this.oversign.has(key) ? 1 : 0);
      for (let i = 0; i < n; i++) signedNames.push(name);
    }
    // RFC 6376 §5.4.2: instances are taken from the bottom up; a name with none left adds nothing.
    const used = new Map<string, number>();
    let headerData = "";
    for (const name of signedNames) {
      const key = name.toLowerCase();
      const skip = used.get(key) ?? 0;
      used.set(key, skip + 1);
      let seen = 0;
      for (let i = parsed.fields.length - 1; i >= 0; i--) {
        const f = parsed.fields[i]!;
        if (f.key !== key) continue;
        if (seen++ === skip) {
          headerData += canonHeader(f.raw, this.headerCanon);
          break;
        }
      }
    }

    const t = Math.floor(nowMs / 1000);
    const out: Uint8Array[] = [];
    for (const key of keys) {
      const tags = [
        "v=1",
        `a=${key.algorithm}`,
        `c=${this.headerCanon}/${this.bodyCanon}`,
        `d=${key.domain}`,
        `s=${key.selector}`,
        `t=${t}`,
      ];
      if (this.expireAfterMs !== undefined) tags.push(`x=${t + Math.ceil(this.expireAfterMs / 1000)}`);
      const head = `${foldTags("DKIM-Signature:", tags, eol)};${eol} ${foldList(signedNames, eol)};${eol} bh=${bh};${eol} b=`;
      const canonical = canonHeader(head, this.headerCanon);
      // RFC 6376 §3.7: the signature field is hashed without its trailing CRLF.
      const data = Buffer.from(headerData + canonical.slice(0, -2), "latin1");
      const signature =
        key.algorithm === "rsa-sha256"
          ? cryptoSign("sha256", data, key.key)
          : // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data (PureEdDSA over the digest).
            cryptoSign(null, createHash("sha256").update(data).digest(), key.key);
      out.push(Buffer.from(`${head}${foldBase64(signature.toString("base64"), eol)}${eol}`, "latin1"));
    }
    out.push(message);
    return concatBytes(out);
  }
}
