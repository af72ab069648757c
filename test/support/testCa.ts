/**
 * A certificate authority for tests, made with the openssl command line (EC P-256 keys).
 *
 * Owns: `createTestCa` (a root, and intermediates under it), issuing server certificates for given
 * names (valid, expired, or a CA), `selfSigned`, and `tlsaDigest` (a TLSA association computed by
 * openssl, not by the code under test).
 */
import { spawnSync } from "bun";
import { X509Certificate } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

function openssl(args: string[], cwd: string, stdin?: Uint8Array): Buffer {
  const r = spawnSync(["openssl", ...args], {
    cwd,
    stdout: "pipe",
    stderr: "pipe",
    ...(stdin ? { stdin } : {}),
  });
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr.toString()}`);
  return Buffer.from(r.stdout);
}

export interface IssuedCert {
  /** The certificate, then its issuers up to (not including) the root: what a server presents. */
  chainPem: string;
  certPem: string;
  keyPem: string;
  certFile: string;
  keyFile: string;
  chainFile: string;
}

export interface TestCa {
  name: string;
  dir: string;
  certPem: string;
  certFile: string;
  keyFile: string;
  /** PEMs of the issuers above this CA (empty for the root). */
  parents: string;
  issue(cn: string, opts?: { sans?: string[]; expired?: boolean; ca?: boolean }): IssuedCert;
  intermediate(cn: string): TestCa;
}

let serial = 1;

function makeCa(dir: string, name: string, certFile: string, keyFile: string, parents: string): TestCa {
  const self: TestCa = {
    name,
    dir,
    certPem: readFileSync(certFile, "utf8"),
    certFile,
    keyFile,
    parents,
    issue(cn, opts = {}) {
      const base = join(dir, `${cn.replace(/[^A-Za-z0-9.-]/g, "_")}-${serial++}`);
      const key = `${base}.key`;
      openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], dir);
      const csr = `${base}.csr`;
      openssl(["req", "-new", "-key", key, "-subj", `/CN=${cn}`, "-out", csr], dir);
      const sans = opts.sans ?? (opts.ca ? [] : [cn]);
      const ext = `${base}.ext`;
      writeFileSync(
        ext,
        [
          opts.ca ? "basicConstraints=critical,CA:TRUE" : "basicConstraints=CA:FALSE",
          opts.ca ? "keyUsage=critical,keyCertSign,cRLSign" : "keyUsage=digitalSignature",
          ...(opts.ca ? [] : ["extendedKeyUsage=serverAuth"]),
          ...(sans.length > 0 ? [`subjectAltName=${sans.map((s) => `DNS:${s}`).join(",")}`] : []),
          "",
        ].join("\n"),
      );
      const crt = `${base}.pem`;
      if (opts.expired) {
        // `openssl ca` is the one that takes explicit dates: a certificate that ended in 2020.
        const db = join(dir, `db-${serial}`);
        mkdirSync(db, { recursive: true });
        writeFileSync(join(db, "index.txt"), "");
        writeFileSync(
          join(db, "ca.cnf"),
          [
            "[ca]",
            "default_ca=c",
            "[c]",
            `database=${join(db, "index.txt")}`,
            `new_certs_dir=${db}`,
            `certificate=${certFile}`,
            `private_key=${keyFile}`,
            "default_md=sha256",
            "policy=p",
            "rand_serial=yes",
            "[p]",
            "commonName=supplied",
            "",
          ].join("\n"),
        );
        openssl(
          [
            "ca",
            "-batch",
            "-config",
            join(db, "ca.cnf"),
            "-in",
            csr,
            "-out",
            crt,
            "-notext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extfile",
            ext,
          ],
          dir,
        );
      } else {
        openssl(
          [
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            certFile,
            "-CAkey",
            keyFile,
            "-set_serial",
            String(serial++),
            "-days",
            "30",
            "-sha256",
            "-extfile",
            ext,
            "-out",
            crt,
          ],
          dir,
        );
      }
      const certPem = readFileSync(crt, "utf8");
      // A server presents its certificate and the intermediates, not the root.
      const chainPem = certPem + (name === "root" ? "" : self.certPem + self.parents);
      const chainFile = `${base}.chain.pem`;
      writeFileSync(chainFile, chainPem);
      return { chainPem, certPem, keyPem: readFileSync(key, "utf8"), certFile: crt, keyFile: key, chainFile };
    },
    intermediate(cn) {
      const issued = self.issue(cn, { ca: true });
      const parentsOfChild = name === "root" ? "" : self.certPem + self.parents;
      return makeCa(dir, cn, issued.certFile, issued.keyFile, parentsOfChild);
    },
  };
  return self;
}

/** A new EC P-256 key in `key` and a certificate for it, signed by itself, valid 30 days, in `crt`. */
function selfSigned(dir: string, key: string, crt: string, cn: string, extensions: string[]): void {
  openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], dir);
  const ext = extensions.flatMap((e) => ["-addext", e]);
  openssl(
    [
      "req",
      "-x509",
      "-new",
      "-key",
      key,
      "-subj",
      `/CN=${cn}`,
      "-days",
      "30",
      "-sha256",
      ...ext,
      "-out",
      crt,
    ],
    dir,
  );
}

/** DER certificates from PEM text holding one or more (a chain as a server sends it). */
export function pemToDer(pems: string): Uint8Array[] {
  return pems
    .split(/(?=-----BEGIN CERTIFICATE-----)/)
    .filter((p) => p.includes("BEGIN"))
    .map((p) => new Uint8Array(new X509Certificate(p).raw));
}

/** A self-signed root CA in `dir` (files under `dir/ca`). */
export function createTestCa(dir: string, cn = "mta test root CA"): TestCa {
  const d = join(dir, "ca");
  mkdirSync(d, { recursive: true });
  const key = join(d, "root.key");
  const crt = join(d, "root.pem");
  selfSigned(d, key, crt, cn, ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]);
  return makeCa(d, "root", crt, key, "");
}

/** A self-signed server certificate for `cn` (no CA vouches for it). */
export function selfSignedFor(dir: string, cn: string): IssuedCert {
  return createTestCa(join(dir, `self-${cn}-${serial++}`), cn).issue(cn);
}

/**
 * A truly self-issued server certificate for `cn` (its own key signs it; CA:FALSE, no key usage
 * limits): a server that is its own trust anchor.
 */
export function selfIssuedFor(dir: string, cn: string): IssuedCert {
  const base = join(dir, `selfissued-${cn.replace(/[^A-Za-z0-9.-]/g, "_")}-${serial++}`);
  const key = `${base}.key`;
  const crt = `${base}.pem`;
  selfSigned(dir, key, crt, cn, [`subjectAltName=DNS:${cn}`, "basicConstraints=CA:FALSE"]);
  const certPem = readFileSync(crt, "utf8");
  return {
    chainPem: certPem,
    certPem,
    keyPem: readFileSync(key, "utf8"),
    certFile: crt,
    keyFile: key,
    chainFile: crt,
  };
}

/**
 * The TLSA association data for a certificate, computed by openssl: selector 0 (full certificate) or
 * 1 (SubjectPublicKeyInfo), matching type 0 (the value itself), 1 (SHA-256) or 2 (SHA-512). Hex.
 */
export function tlsaDigest(certPem: string, selector: 0 | 1, matchingType: 0 | 1 | 2, dir: string): string {
  const der =
    selector === 0
      ? openssl(["x509", "-outform", "DER"], dir, Buffer.from(certPem))
      : openssl(
          ["pkey", "-pubin", "-outform", "DER"],
          dir,
          openssl(["x509", "-pubkey", "-noout"], dir, Buffer.from(certPem)),
        );
  if (matchingType === 0) return der.toString("hex");
  const out = openssl(["dgst", matchingType === 1 ? "-sha256" : "-sha512", "-hex"], dir, der).toString();
  return out.trim().split(/\s+/).pop()!;
}
