/**
 * EHLO keywords (RFC 5321 §4.1.1.1): parsing the server's list on the client side.
 *
 * Owns: `ServerCapabilities`, `parseEhlo`, `NO_CAPABILITIES`.
 */
import type { SmtpReply } from "./_reply.ts";

export interface ServerCapabilities {
  esmtp: boolean;
  pipelining: boolean;
  /** 0: SIZE not offered or no limit given. */
  sizeBytes: number;
  size: boolean;
  eightBitMime: boolean;
  smtputf8: boolean;
  dsn: boolean;
  starttls: boolean;
  chunking: boolean;
  /** RFC 3030 §3: BODY=BINARYMIME, only together with CHUNKING. */
  binarymime: boolean;
  auth: string[];
}

/** Every reply line after the first is `KEYWORD [params]`. */
export function parseEhlo(r: SmtpReply): ServerCapabilities {
  const caps: ServerCapabilities = {
    esmtp: true,
    pipelining: false,
    sizeBytes: 0,
    size: false,
    eightBitMime: false,
    smtputf8: false,
    dsn: false,
    starttls: false,
    chunking: false,
    binarymime: false,
    auth: [],
  };
  for (const line of r.lines.slice(1)) {
    const [kw = "", ...params] = line.trim().split(/\s+/);
    switch (kw.toUpperCase()) {
      case "PIPELINING":
        caps.pipelining = true;
        break;
      case "SIZE":
        caps.size = true;
        caps.sizeBytes = Number(params[0] ?? 0) || 0;
        break;
      case "8BITMIME":
        caps.eightBitMime = true;
        break;
      case "SMTPUTF8":
        caps.smtputf8 = true;
        break;
      case "DSN":
        caps.dsn = true;
        break;
      case "STARTTLS":
        caps.starttls = true;
        break;
      case "CHUNKING":
        caps.chunking = true;
        break;
      case "BINARYMIME":
        caps.binarymime = true;
        break;
      case "AUTH":
        caps.auth.push(...params.map((p) => p.toUpperCase()));
        break;
    }
  }
  return caps;
}

export const NO_CAPABILITIES: ServerCapabilities = { ...parseEhlo({ code: 250, lines: [""] }), esmtp: false };
