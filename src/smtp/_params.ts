/**
 * ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2 esmtp-param) and xtext (RFC 3461 §4).
 *
 * Owns: `EsmtpParams`, `parseEsmtpParams`, `xtextEncode`, `xtextDecode`.
 * Invariant: a parameter is accepted only on the command it belongs to and at most once; values are decoded
 * (ENVID, ORCPT, AUTH are xtext on the wire and plain text here).
 */
import type { SmtpReply } from "./_reply.ts";
import { reply } from "./_reply.ts";

export type NotifyKeyword = "SUCCESS" | "FAILURE" | "DELAY" | "NEVER";
export type BodyType = "7BIT" | "8BITMIME" | "BINARYMIME";

export interface EsmtpParams {
  /** MAIL SIZE= (RFC 1870): the declared message size in bytes. */
  sizeBytes?: number;
  /** MAIL BODY= (RFC 6152, RFC 3030). */
  body?: BodyType;
  /** MAIL SMTPUTF8 (RFC 6531). */
  smtputf8?: boolean;
  /** MAIL RET= (RFC 3461). */
  ret?: "FULL" | "HDRS";
  /** MAIL ENVID= (RFC 3461), xtext-decoded. */
  envId?: string;
  /** MAIL AUTH= (RFC 4954 §5), xtext-decoded; "<>" when the submitter is unknown. */
  auth?: string;
  /** RCPT NOTIFY= (RFC 3461). */
  notify?: NotifyKeyword[];
  /** RCPT ORCPT= (RFC 3461) as `addr-type;decoded-address`, e.g. `rfc822;user@example.com`. */
  orcpt?: string;
}

export type ParamsResult = { ok: true; params: EsmtpParams } | { ok: false; reply: SmtpReply };

const HEX = "0123456789ABCDEF";

/** RFC 3461 §4: `+XX` for `+`, `=`, and characters outside 33..126 (UTF-8 bytes for non-ASCII). */
export function xtextEncode(value: string): string {
  let out = "";
  for (const b of Buffer.from(value, "utf8")) {
    out +=
      b < 33 || b > 126 || b === 0x2b || b === 0x3d
        ? `+${HEX[b >> 4]}${HEX[b & 15]}`
        : String.fromCharCode(b);
  }
  return out;
}

/** Decodes xtext; undefined when malformed (a `+` not followed by two upper-case hex digits, or a bad char). */
export function xtextDecode(text: string): string | undefined {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2b) {
      const h = text.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) return undefined;
      bytes.push(Number.parseInt(h, 16));
      i += 2;
    } else if (c < 33 || c > 126 || c === 0x3d) {
      return undefined;
    } else bytes.push(c);
  }
  return Buffer.from(bytes).toString("utf8");
}

/** Extra parameters a listener may support beyond the standard set. */
export interface ParamSupport {
  /** Whether DSN parameters (RET, ENVID, NOTIFY, ORCPT) are offered. */
  dsn: boolean;
  /** Whether SMTPUTF8 is offered. */
  smtputf8: boolean;
  /** Whether BODY=BINARYMIME is offered (requires CHUNKING). */
  binarymime: boolean;
}

const DEFAULT_SUPPORT: ParamSupport = { dsn: true, smtputf8: true, binarymime: true };

/**
 * Parses `KEY[=VALUE] ...` after the path. Unknown or unoffered parameters give `555 5.5.4`
 * (RFC 5321 §4.1.1.11), malformed values `501 5.5.4`.
 */
export function parseEsmtpParams(
  text: string,
  command: "MAIL" | "RCPT",
  support: ParamSupport = DEFAULT_SUPPORT,
): ParamsResult {
  const params: EsmtpParams = {};
  const seen = new Set<string>();
  const trimmed = text.trim();
  if (trimmed.length === 0) return { ok: true, params };
  for (const word of trimmed.split(/[ \t]+/)) {
    const eq = word.indexOf("=");
    const key = (eq === -1 ? word : word.slice(0, eq)).toUpperCase();
    const value = eq === -1 ? undefined : word.slice(eq + 1);
    if (!/^[A-Z0-9][A-Z0-9-]*$/.test(key)) return bad(`Bad parameter syntax`);
    if (seen.has(key)) return bad(`Duplicate ${key} parameter`);
    seen.add(key);
    const unknown = { ok: false as const, reply: reply(555, "5.5.4", `Unsupported option: ${key}`) };
    if (command === "MAIL") {
      switch (key) {
        case "SIZE": {
          if (value === undefined || !/^\d{1,15}$/.test(value)) return bad("Bad SIZE parameter");
          params.sizeBytes = Number(value);
          break;
        }
        case "BODY": {
          const v = value?.toUpperCase();
          if (v === "7BIT" || v === "8BITMIME" || (v === "BINARYMIME" && support.binarymime)) params.body = v;
          else return { ok: false, reply: reply(501, "5.5.4", "Unsupported BODY type") };
          break;
        }
        case "SMTPUTF8": {
          if (!support.smtputf8) return unknown;
          if (value !== undefined) return bad("SMTPUTF8 takes no value");
          params.smtputf8 = true;
          break;
        }
        case "RET": {
          if (!support.dsn) return unknown;
          const v = value?.toUpperCase();
          if (v !== "FULL" && v !== "HDRS") return bad("Bad RET parameter");
          params.ret = v;
          break;
        }
        case "ENVID": {
          if (!support.dsn) return unknown;
          const v = value === undefined ? undefined : xtextDecode(value);
          if (v === undefined || v.length === 0 || v.length > 100) return bad("Bad ENVID parameter");
          params.envId = v;
          break;
        }
        case "AUTH": {
          const v = value === undefined ? undefined : value === "<>" ? "<>" : xtextDecode(value);
          if (v === undefined) return bad("Bad AUTH parameter");
          params.auth = v;
          break;
        }
        default:
          return unknown;
      }
    } else {
      switch (key) {
        case "NOTIFY": {
          if (!support.dsn) return unknown;
          if (value === undefined) return bad("Bad NOTIFY parameter");
          const list = value.toUpperCase().split(",");
          const out: NotifyKeyword[] = [];
          for (const k of list) {
            if (k !== "SUCCESS" && k !== "FAILURE" && k !== "DELAY" && k !== "NEVER")
              return bad("Bad NOTIFY parameter");
            if (!out.includes(k)) out.push(k);
          }
          // RFC 3461 §4.1: NEVER must appear alone.
          if (out.includes("NEVER") && out.length > 1) return bad("NOTIFY=NEVER must appear alone");
          params.notify = out;
          break;
        }
        case "ORCPT": {
          if (!support.dsn) return unknown;
          const semi = value?.indexOf(";") ?? -1;
          if (value === undefined || semi <= 0) return bad("Bad ORCPT parameter");
          const type = value.slice(0, semi);
          const addr = xtextDecode(value.slice(semi + 1));
          if (!/^[A-Za-z0-9-]+$/.test(type) || addr === undefined || addr.length === 0)
            return bad("Bad ORCPT parameter");
          params.orcpt = `${type.toLowerCase()};${addr}`;
          break;
        }
        default:
          return unknown;
      }
    }
  }
  return { ok: true, params };
}

function bad(text: string): ParamsResult {
  return { ok: false, reply: reply(501, "5.5.4", text) };
}
