/**
 * The sender's feedback loop, wired: bounce classes on delivery-log events, the suppression list at
 * acceptance, VERP return paths on the way out, and asynchronous bounces and complaints on the way
 * back in (the `bounces` listener role).
 *
 * Owns: `Feedback` (the classifier, the open SuppressionList, the bounce-domain settings), the class
 * of each result and automatic suppression (disposition/'s `Classifying`), the RCPT-time refusal,
 * the return path of a message, `BounceInbox` (the Acceptor of a bounces listener), reading the
 * rules files for check-config.
 * Does not own: classification rules and report parsing (bounce/), the list's storage (suppression/),
 * when events happen (disposition/ asks `classOf`/`bounced` for every result it records; accept/ asks
 * `hit` for every recipient).
 * Invariants: an inbound bounce or complaint is answered 250 only after its suppression changes are
 * durable (a failure answers 451, so the reporter retries); an address is suppressed automatically
 * only from our own bounce (a delivery-log `bounce`) or from a report whose return path carries a
 * valid tag for that very recipient, so a forged report cannot suppress anyone.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type BounceClass,
  Classifier,
  findVerpAddresses,
  type ParsedReport,
  parseReport,
  parseVerp,
  type ReportedRecipient,
  replyLineInput,
  type RuleProblem,
  RulesError,
  tagMatches,
  verpAddress,
} from "../bounce/index.ts";
import type { Config } from "../config/index.ts";
import { errnoText, errorMessage, newMessageId } from "../lib/index.ts";
import type { AcceptResult, Acceptor, Envelope } from "../listener/index.ts";
import { fieldValues, parseAddressList } from "../message/index.ts";
import type { Counter, DeliveryLog, Logger, Metrics } from "../observe/index.ts";
import { domainOf, reply, type SmtpReply } from "../smtp/index.ts";
import {
  type NewSuppression,
  type SuppressionHit,
  SuppressionList,
  type SuppressionReason,
} from "../suppression/index.ts";

/** The suppression list's directory inside the spool directory. */
export function suppressionDir(config: Config): string {
  return join(config.spool.dir, "suppression");
}

/** The classifier of a configuration: its rules files, then (unless turned off) the built-in rules. */
export function loadClassifier(config: Config): Classifier {
  const files: { file: string; text: string }[] = [];
  const unreadable: RuleProblem[] = [];
  for (const file of config.bounces.rulesFiles) {
    try {
      files.push({ file, text: readFileSync(file, "utf8") });
    } catch (err) {
      unreadable.push({ file, line: 0, message: `cannot read: ${errnoText(err)}` });
    }
  }
  try {
    const c = Classifier.fromFiles(files, { builtin: config.bounces.builtinRules });
    if (unreadable.length > 0) throw new RulesError(unreadable);
    return c;
  } catch (err) {
    // Every file's problems at once, in the order of rules_files.
    if (!(err instanceof RulesError) || unreadable.length === 0) throw err;
    const all = err.problems === unreadable ? unreadable : [...err.problems, ...unreadable];
    const order = (f: string) => config.bounces.rulesFiles.indexOf(f);
    throw new RulesError(all.sort((a, b) => order(a.file) - order(b.file) || a.line - b.line));
  }
}

/** Problems of the rules files, for check-config: each with the rules_files entry it belongs to. */
export function bounceRulesProblems(config: Config): { path: (string | number)[]; message: string }[] {
  try {
    loadClassifier(config);
    return [];
  } catch (err) {
    if (!(err instanceof RulesError)) throw err;
    return err.problems.map((p) => ({
      path: ["bounces", "rules_files", Math.max(0, config.bounces.rulesFiles.indexOf(p.file))],
      message: p.line > 0 ? `${p.file}:${p.line}: ${p.message}` : `${p.file}: ${p.message}`,
    }));
  }
}

export interface FeedbackDeps {
  log: Logger;
  metrics: Metrics;
  deliveryLog: DeliveryLog;
}

export class Feedback {
  private readonly classified: Counter;
  private readonly autoAdded: Counter;
  private readonly hits: Counter;
  private readonly checks: Counter;
  private readonly inbound: Counter;

  private constructor(
    private config: Config,
    private classifier: Classifier,
    readonly suppression: SuppressionList,
    private readonly deps: FeedbackDeps,
  ) {
    const m = deps.metrics;
    this.classified = m.counter(
      "mta_bounce_classified_total",
      "Failed or deferred recipients by event and bounce class (17 classes at most)",
    );
    this.autoAdded = m.counter(
      "mta_suppression_auto_added_total",
      "Addresses added to the suppression list automatically, by reason",
    );
    this.hits = m.counter(
      "mta_suppression_hits_total",
      "Recipients found on the suppression list, by answer (refused, recorded)",
    );
    this.checks = m.counter(
      "mta_suppression_checks_total",
      "Recipients checked against the suppression list",
    );
    this.inbound = m.counter(
      "mta_bounce_inbound_total",
      "Messages received on a bounces listener, by kind (dsn, arf, heuristic, auto-reply, unknown) and result",
    );
    m.gauge("mta_suppression_entries", "Entries on the suppression list", (set) =>
      set(this.suppression.count),
    );
    m.gauge("mta_suppression_table_bytes", "RAM of the suppression list's tables", (set) =>
      set(this.suppression.tableBytes),
    );
  }

  /** Reads the rules (throws RulesError) and opens the suppression list (takes its lock). */
  static async open(config: Config, deps: FeedbackDeps): Promise<Feedback> {
    const classifier = loadClassifier(config);
    const suppression = await SuppressionList.open({
      dir: suppressionDir(config),
      sync: config.spool.sync,
      log: deps.log,
      // Cluster mode: own changes are kept for the other nodes (app/_suppressShare.ts).
      shared: config.cluster !== undefined,
    });
    const r = suppression.recovery;
    deps.log.info("suppression list open", {
      entries: r.entries,
      records: r.records,
      truncatedBytes: r.truncatedBytes,
      ms: Math.round(r.ms),
    });
    return new Feedback(config, classifier, suppression, deps);
  }

  /** New rules and settings; a bad rules file throws and nothing changes. */
  reload(config: Config): void {
    this.classifier = loadClassifier(config);
    this.config = config;
  }

  classify(input: { code?: number; enhanced?: string; text: string }): BounceClass {
    return this.classifier.classify(input).class;
  }

  /**
   * disposition/'s `Classifying`: the class of a failed, deferred, expired or bounced recipient's
   * result, counted under its event type (a stored reply line for an operator's bounce: why it was
   * stuck).
   */
  classOf(event: string, r: SmtpReply | string): BounceClass {
    let cls: BounceClass;
    if (event === "expiration") cls = "message-expired";
    else if (typeof r === "string") cls = this.classifyLine(r);
    else {
      const input: { code?: number; enhanced?: string; text: string } = {
        code: r.code,
        text: r.lines.join(" "),
      };
      if (r.enhanced) input.enhanced = r.enhanced;
      cls = this.classify(input);
    }
    this.classified.inc({ event, class: cls });
    return cls;
  }

  /**
   * disposition/'s `Classifying`: a permanent bounce of our own puts the recipient on the suppression
   * list when the operator chose its class (durable in the background; a failure is logged).
   */
  bounced(recipient: string, sender: string, cls: string): void {
    this.autoSuppress(recipient, sender, cls as SuppressionReason).catch((err) =>
      this.deps.log.error("could not add to the suppression list", {
        recipient,
        reason: cls,
        error: errorMessage(err),
      }),
    );
  }

  /** Classifies a stored reply line such as "550 5.1.1 no such user". */
  classifyLine(line: string): BounceClass {
    return this.classify(replyLineInput(line));
  }

  /** Adds an address for `reason` when the operator asked for it; resolves once durable. */
  private async autoSuppress(
    recipient: string,
    sender: string,
    reason: SuppressionReason,
    senderDomain?: string,
  ): Promise<void> {
    const entry = this.autoEntry(recipient, sender, reason, senderDomain);
    if (!entry) return;
    const r = await this.suppression.add([entry], { keepLonger: true });
    if (r.added + r.updated > 0) this.autoAdded.inc({ reason });
  }

  private autoEntry(
    recipient: string,
    sender: string,
    reason: SuppressionReason,
    senderDomain?: string,
  ): NewSuppression | undefined {
    const s = this.config.suppression;
    const expiry = s.auto[reason];
    if (expiry === undefined) return undefined;
    const entry: NewSuppression = { address: recipient, reason };
    const scope = s.scope === "sender-domain" ? (senderDomain ?? domainOf(sender)) : "";
    if (scope) entry.scope = scope;
    if (expiry > 0) entry.expiresMs = Date.now() + expiry;
    return entry;
  }

  /** The suppression entry for mail from `sender` to `recipient`, when checks are on and there is one. */
  hit(sender: string, recipient: string): SuppressionHit | undefined {
    if (!this.config.suppression.enabled) return undefined;
    this.checks.inc();
    return this.suppression.check(recipient, sender ? domainOf(sender) : "");
  }

  get answer(): "refuse" | "record" {
    return this.config.suppression.answer;
  }

  /** The 5.x.x reply that names the suppression (RFC 3463 X.7.1: delivery not authorized). */
  refusalFor(recipient: string, h: SuppressionHit): SmtpReply {
    const scope = h.scope ? ` for mail from ${h.scope}` : "";
    return reply(
      550,
      "5.7.1",
      `<${recipient}>: recipient address is on the suppression list (${h.reason}${scope})`,
    );
  }

  /** Counts a hit and writes its `suppressed` event (no message is stored for it). */
  recordHit(
    h: SuppressionHit,
    e: {
      sender: string;
      recipient: string;
      answer: "refused" | "recorded";
      id?: string;
      attributes?: Record<string, string>;
    },
  ): void {
    this.hits.inc({ answer: e.answer });
    this.deps.deliveryLog.write({
      type: "suppressed",
      ...(e.id ? { id: e.id } : {}),
      sender: e.sender,
      recipient: e.recipient,
      destination: domainOf(e.recipient),
      answer: e.answer,
      reason: h.reason,
      ...(h.scope ? { scope: h.scope } : {}),
      ...(e.attributes?.listener ? { listener: e.attributes.listener } : {}),
      ...(e.attributes?.client ? { client: e.attributes.client } : {}),
    });
  }

  // ---- VERP ------------------------------------------------------------------------------------

  /** Whether mail from `sender` gets VERP return paths (and so one recipient per message). */
  verpApplies(sender: string): boolean {
    const b = this.config.bounces;
    if (!b.domain || !b.secret || sender === "") return false;
    const d = domainOf(sender);
    if (d === b.domain) return false;
    return b.senders.length === 0 || b.senders.includes(d);
  }

  /** The MAIL FROM of message `id` to `recipient`, or undefined to keep the sender. */
  returnPath(id: string, sender: string, recipient: string): string | undefined {
    if (!this.verpApplies(sender)) return undefined;
    return verpAddress(this.config.bounces.secret!, this.config.bounces.domain, id, recipient);
  }

  // ---- inbound ---------------------------------------------------------------------------------

  /** The bounces listener's RCPT check: addresses at the bounce domain only, from anyone. */
  bounceRecipient(recipient: string): SmtpReply | "local" {
    const domain = this.config.bounces.domain;
    if (domain && domainOf(recipient) === domain) return "local";
    return reply(550, "5.7.1", `<${recipient}>: this server accepts mail for ${domain || "no domain"} only`);
  }

  /**
   * A message received for the bounce domain: parsed, matched to the message and recipient it is
   * about, logged as `async-bounce` or `complaint`, fed to the suppression list.
   */
  async receive(envelope: Envelope, message: Uint8Array): Promise<AcceptResult> {
    const reportId = newMessageId();
    let report: ParsedReport;
    try {
      report = await parseReport(message);
    } catch (err) {
      this.deps.log.warn("bounce report could not be parsed", { reportId, error: errorMessage(err) });
      report = { kind: "unknown", recipients: [] };
    }
    const secret = this.config.bounces.secret ?? "";
    const domain = this.config.bounces.domain;
    const tokens = [
      ...envelope.recipients.map((r) => r.address),
      ...(report.feedback?.originalMailFrom ? [report.feedback.originalMailFrom] : []),
      ...findVerpAddresses(domain, report.originalHeaders ?? ""),
    ]
      .map((a) => parseVerp(secret, domain, a))
      .filter((t) => t !== undefined);
    const base = {
      reportId,
      listener: envelope.listener,
      client: envelope.clientAddress,
      ...(report.from ? { reportFrom: report.from } : {}),
    };
    const adds: Promise<void>[] = [];
    let matched = 0;
    if (report.kind === "arf") {
      const f = report.feedback!;
      const candidates = [...f.originalRcptTo, ...addressesIn(report.originalHeaders, "to")];
      for (const t of uniqueTokens(tokens)) {
        const recipient = t.recipient ?? candidates.find((c) => tagMatches(secret, t.id, t.tag, c));
        if (!recipient) continue;
        matched++;
        this.deps.deliveryLog.write({
          type: "complaint",
          id: t.id,
          recipient,
          feedbackType: f.feedbackType,
          ...(f.userAgent ? { userAgent: f.userAgent } : {}),
          ...(f.sourceIp ? { sourceIp: f.sourceIp } : {}),
          ...(f.reportingMta ? { reportingMta: f.reportingMta } : {}),
          ...(f.arrivalDate ? { arrivalDate: f.arrivalDate } : {}),
          ...base,
        });
        if (f.feedbackType !== "not-spam")
          adds.push(this.autoSuppress(recipient, "", "complaint", senderDomainOf(report)));
      }
    } else if (report.kind === "dsn" || report.kind === "heuristic") {
      for (const t of uniqueTokens(tokens)) {
        const candidates = report.recipients.flatMap((r) => [
          r.address,
          ...(r.originalRecipient ? [r.originalRecipient] : []),
        ]);
        const recipient = t.recipient ?? candidates.find((c) => tagMatches(secret, t.id, t.tag, c));
        if (!recipient) continue;
        const r =
          report.recipients.find((x) => x.address === recipient || x.originalRecipient === recipient) ??
          report.recipients.find((x) => x.action === "failed") ??
          report.recipients[0];
        if (!r || !["failed", "delayed"].includes(r.action)) continue;
        matched++;
        const cls = this.classifyReported(r);
        this.classified.inc({ event: "async-bounce", class: cls });
        this.deps.deliveryLog.write({
          type: "async-bounce",
          id: t.id,
          recipient,
          class: cls,
          action: r.action,
          ...(r.status ? { status: r.status } : {}),
          ...(r.code !== undefined ? { code: r.code } : {}),
          text: r.diagnostic ?? r.text,
          ...(report.reportingMta ? { reportingMta: report.reportingMta } : {}),
          ...(r.remoteMta ? { remoteMta: r.remoteMta } : {}),
          kind: report.kind,
          ...base,
        });
        if (r.action === "failed") adds.push(this.autoSuppress(recipient, "", cls, senderDomainOf(report)));
      }
    }
    const result =
      report.kind === "auto-reply" || report.kind === "unknown"
        ? "ignored"
        : matched > 0
          ? "matched"
          : "unmatched";
    this.inbound.inc({ kind: report.kind, result });
    if (result !== "matched")
      this.deps.log.info("message on the bounce domain not used", {
        reportId,
        kind: report.kind,
        result,
        from: envelope.sender,
        recipients: envelope.recipients.map((r) => r.address),
      });
    // The suppression changes are durable before the reporter hears 250.
    await Promise.all(adds);
    return { ok: true, ids: [reportId] };
  }

  private classifyReported(r: ReportedRecipient): BounceClass {
    return this.classify({
      ...(r.code !== undefined
        ? { code: r.code }
        : r.status
          ? { code: r.status.startsWith("5") ? 550 : 450 }
          : {}),
      ...(r.status ? { enhanced: r.status } : {}),
      text: r.text,
    });
  }

  close(): Promise<void> {
    return this.suppression.close();
  }
}

function uniqueTokens<T extends { id: string; tag: string; recipient?: string }>(tokens: T[]): T[] {
  const seen = new Set<string>();
  return tokens.filter((t) => {
    const k = `${t.id}/${t.tag}/${t.recipient ?? ""}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Addresses in one header field of a header section (e.g. the returned original's To:), lowercased. */
function addressesIn(headers: string | undefined, field: string): string[] {
  if (!headers) return [];
  const first = fieldValues(headers, field)[0];
  return first === undefined ? [] : parseAddressList(first).map((a) => a.toLowerCase());
}

/** The sender domain of the returned original (its From:), for sender-domain scoped entries. */
function senderDomainOf(report: ParsedReport): string | undefined {
  const from = addressesIn(report.originalHeaders, "from")[0];
  return from ? domainOf(from) : undefined;
}

/** The Acceptor of a listener with role: bounces. */
export class BounceInbox implements Acceptor {
  constructor(private readonly feedback: Feedback) {}

  checkRecipient(r: { recipient: string }): SmtpReply | "local" {
    return this.feedback.bounceRecipient(r.recipient);
  }

  accept(envelope: Envelope, message: Uint8Array): Promise<AcceptResult> {
    return this.feedback.receive(envelope, message).catch((err) => {
      // A failure to make the suppression durable: the reporter should try again later.
      return {
        ok: false as const,
        reply: reply(451, "4.3.0", `cannot process this report now: ${errorMessage(err)}`),
      };
    });
  }
}
