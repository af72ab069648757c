/**
 * The listener's public types: options, the envelope handed to the accept pipeline, the `Acceptor`
 * interface, and the running `Listener` handle.
 *
 * Owns: the contract between the listener and `app/`.
 */
import type { Cidr } from "../lib/index.ts";
import type { NotifyKeyword, SmtpReply } from "../smtp/index.ts";

export interface ListenerOptions {
  /** E.g. "smtp" or the address; used in logs, metrics and the Received header. */
  name: string;
  host: string;
  /** 0 binds an ephemeral port (tests); the bound port is in `Listener.port`. */
  port: number;
  /** Banner and EHLO name. */
  hostname: string;
  /** Clients that may relay without AUTH. */
  relayFrom: Cidr[];
  /** PEM contents (the app reads the files); enables STARTTLS. */
  tls?: { cert: string; key: string };
  /** 465-style: TLS from the first byte, no STARTTLS. */
  implicitTls?: boolean;
  auth: "off" | "optional" | "required";
  /** username -> Bun.password hash (argon2/bcrypt); never plain text. */
  users?: Record<string, string>;
  /** Offer AUTH without TLS, to loopback clients only. */
  allowPlaintextAuth?: boolean;
  /** RFC 6409: add Message-ID and Date when missing. */
  submission?: boolean;
  maxMessageBytes: number;
  maxRecipients: number;
  /** Longest command line, CRLF included (DATA lines are bounded only by maxMessageBytes). */
  maxLineBytes: number;
  /** Errors (4xx/5xx replies to commands) before the session is closed with 421. */
  maxErrors: number;
  /** NOOP/RSET/VRFY/HELP allowed per accepted message before each one counts as an error (Postfix: 100). */
  maxJunkCommands: number;
  /** RFC 5321 §4.5.3.2: waiting for a command (5 min typical). */
  commandTimeoutMs: number;
  /** RFC 5321 §4.5.3.2: waiting for the next DATA/BDAT bytes (10 min typical for the whole stage). */
  dataTimeoutMs: number;
  maxConnections: number;
  maxConnectionsPerIp: number;
  /** Default true: a bare CR or LF gets `521 5.5.2` and the session ends (SMTP smuggling defence). */
  rejectBareNewlines: boolean;
}

export interface EnvelopeRecipient {
  address: string;
  notify?: NotifyKeyword[];
  /** `addr-type;address`, decoded from xtext. */
  orcpt?: string;
}

export interface Envelope {
  /** "" for the null sender `<>`. */
  sender: string;
  recipients: EnvelopeRecipient[];
  envId?: string;
  ret?: "FULL" | "HDRS";
  smtputf8: boolean;
  body: "7BIT" | "8BITMIME" | "BINARYMIME";
  listener: string;
  clientAddress: string;
  clientPort: number;
  helo: string;
  authUser?: string;
  tls?: { protocol: string; cipher: string };
}

export type AcceptResult = { ok: true; ids: string[] } | { ok: false; reply: SmtpReply };

export interface Acceptor {
  /** Called after the final dot / last BDAT; `message` already carries our Received: header. Reply 250 only when ok. */
  accept(envelope: Envelope, message: Uint8Array): Promise<AcceptResult>;
  /**
   * Optional, at RCPT after the syntax checks: a reply refuses the recipient (a suppressed address);
   * "local" accepts it even from a client that may not relay (a bounce domain this server receives
   * mail for); undefined leaves the decision to the relay policy.
   */
  checkRecipient?(r: { sender: string; recipient: string; relay: boolean }): SmtpReply | "local" | undefined;
}

export interface Listener {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  connections(): number;
  /** Graceful: stop accepting, let sessions in DATA finish up to graceMs, 421 the rest. */
  close(opts?: { graceMs?: number }): Promise<void>;
}
