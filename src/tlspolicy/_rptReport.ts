/**
 * The TLS-RPT report as a document (RFC 8460 §4.4, the JSON of one policy domain's period) and as a
 * message (§5.3, multipart/report with the gzip attached); the counts they are made from.
 *
 * Owns: the shapes of a period's counts, `buildReport`, `reportMessage`, what may be mailed to.
 * Does not own: counting sessions, keeping periods on disk, when and where reports go (rpt.ts).
 * Invariant: what DNS says (the domain, the rua address) reaches a header only as a plain addr-spec
 * or an LDH name (`ADDR_SPEC`), never as raw text.
 */
import type { ReportPolicy } from "./_plan.ts";

export interface SessionDetail {
  mx?: string;
  ip?: string;
  sendingIp?: string;
  reason?: string;
}

export interface Detail extends SessionDetail {
  result: string;
  count: number;
}

export interface PolicyCounts {
  policy: ReportPolicy;
  success: number;
  failure: number;
  details: Record<string, Detail>;
}

export interface DomainState {
  policies: Record<string, PolicyCounts>;
  /** Report URIs already served, and when the first try was made. */
  sent?: string[];
  firstTryMs?: number;
  done?: boolean;
}

export interface Period {
  startMs: number;
  endMs: number;
  domains: Record<string, DomainState>;
}

export function buildReport(
  p: Period,
  domain: string,
  state: DomainState,
  who: { organization: string; contact: string; submitter: string },
) {
  const start = new Date(p.startMs).toISOString().replace(/\.\d{3}Z$/, "Z");
  const end = new Date(p.endMs - 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
  return {
    "organization-name": who.organization,
    "date-range": { "start-datetime": start, "end-datetime": end },
    "contact-info": who.contact,
    // A msg-id (RFC 5322 §3.6.4: dot-atom, no colons): it is the Message-ID and the Subject's Report-ID.
    "report-id": `${start.replace(/[-:]/g, "")}.${domain}@${who.submitter}`,
    policies: Object.values(state.policies).map((c) => ({
      policy: {
        "policy-type": c.policy.type,
        ...(c.policy.strings.length > 0 ? { "policy-string": c.policy.strings } : {}),
        "policy-domain": c.policy.policyDomain,
        ...(c.policy.mxHost.length > 0 ? { "mx-host": c.policy.mxHost } : {}),
      },
      summary: {
        "total-successful-session-count": c.success,
        "total-failure-session-count": c.failure,
      },
      ...(c.failure > 0
        ? {
            "failure-details": Object.values(c.details).map((d) => ({
              "result-type": d.result,
              ...(d.sendingIp ? { "sending-mta-ip": d.sendingIp } : {}),
              ...(d.mx ? { "receiving-mx-hostname": d.mx } : {}),
              ...(d.ip ? { "receiving-ip": d.ip } : {}),
              "failed-session-count": d.count,
              ...(d.reason ? { "failure-reason-code": d.reason.slice(0, 300) } : {}),
            })),
          }
        : {}),
    })),
  };
}

/** A dot-atom local part at an LDH domain: what a report may be mailed to. */
export const ADDR_SPEC =
  /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;

/** The report as a message (RFC 8460 §5.3): multipart/report; report-type="tlsrpt", gzip attached. */
export function reportMessage(r: {
  from: string;
  to: string;
  domain: string;
  submitter: string;
  reportId: string;
  beginS: number;
  endS: number;
  gz: Buffer;
  nowMs: number;
}): Uint8Array {
  const boundary = `tlsrpt-${r.beginS}-${Math.random().toString(36).slice(2)}`;
  const filename = `${r.submitter}!${r.domain}!${r.beginS}!${r.endS}.json.gz`;
  const b64 = r.gz.toString("base64").replace(/.{1,76}/g, "$&\r\n");
  const date = new Date(r.nowMs).toUTCString().replace("GMT", "+0000");
  const lines = [
    `From: ${r.from}`,
    `To: ${r.to}`,
    `Date: ${date}`,
    `Message-ID: <${r.reportId}>`,
    `Subject: Report Domain: ${r.domain} Submitter: ${r.submitter} Report-ID: <${r.reportId}>`,
    `TLS-Report-Domain: ${r.domain}`,
    `TLS-Report-Submitter: ${r.submitter}`,
    // RFC 8460 §3 / RFC 8689: a report about broken TLS must get through that broken TLS.
    "TLS-Required: No",
    "Auto-Submitted: auto-generated",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type="tlsrpt"; boundary="${boundary}"`,
    "",
    `--${boundary}`,
    'Content-Type: text/plain; charset="us-ascii"',
    "Content-Transfer-Encoding: 7bit",
    "",
    `This is an aggregate TLS report (RFC 8460) from ${r.submitter} for ${r.domain}.`,
    "",
    `--${boundary}`,
    "Content-Type: application/tlsrpt+gzip",
    "Content-Transfer-Encoding: base64",
    `Content-Disposition: attachment; filename="${filename}"`,
    "",
  ];
  return Buffer.from(`${lines.join("\r\n")}\r\n${b64}--${boundary}--\r\n`, "utf8");
}
