/**
 * The delivery log: one JSON object per line for every event in a message's life.
 *
 * Owns: the append-only log file (`log.deliveries`), buffered writes, reopen on SIGHUP (for logrotate).
 * Events: reception, delivery, transient-failure, bounce, expiration, dsn, delay-warning, admin-bounce,
 * admin-delete, suppressed, async-bounce, complaint, transfer-out and transfer-in (a message moved to
 * or from another node of a cluster), and per destination: suspension, resumption, rule.
 * Invariants: a line is written after the spool recorded the event it describes, never before; lines
 * reach the file (write(2), the page cache) by the end of the event-loop turn that made them, so a
 * kill -9 loses at most the lines of the turn it interrupts (webhooks read the file: docs/webhooks.md).
 */
import { closeSync, existsSync, fchmodSync, mkdirSync, openSync, writeSync } from "node:fs";
import { dirname } from "node:path";

export type DeliveryEventType =
  | "reception"
  | "delivery"
  | "transient-failure"
  | "bounce"
  | "expiration"
  | "dsn"
  | "delay-warning"
  | "admin-bounce"
  | "admin-delete"
  | "suppressed"
  | "async-bounce"
  | "complaint"
  | "transfer-out"
  | "transfer-in"
  | "suspension"
  | "resumption"
  | "rule";

export interface DeliveryEvent {
  type: DeliveryEventType;
  /** The message id; destination events (suspension, resumption, rule) name a destination instead. */
  id?: string;
  [field: string]: unknown;
}

export class DeliveryLog {
  private fd = -1;
  private buffer: string[] = [];
  private bufferedBytes = 0;
  private scheduled = false;
  private readonly listeners: (() => void)[] = [];
  /** Lines written since start, for tests and metrics. */
  written = 0;

  constructor(private file: string) {
    this.open();
  }

  private open(): void {
    if (!this.file) return;
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o750 });
    const created = !existsSync(this.file);
    this.fd = openSync(this.file, "a", 0o640);
    // 0640 whatever the umask: the log names senders and recipients. A mode the operator set later stays.
    if (created) fchmodSync(this.fd, 0o640);
  }

  write(event: DeliveryEvent): void {
    if (this.fd < 0) return;
    const line = `${JSON.stringify({ time: new Date().toISOString(), ...event })}\n`;
    this.buffer.push(line);
    this.bufferedBytes += line.length;
    this.written++;
    if (this.bufferedBytes >= 64 * 1024) this.flush();
    else if (!this.scheduled) {
      // One write per event-loop turn: cheap under load (a turn's lines go together), and nothing
      // waits in memory for longer than the turn.
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Called after each write to the file (the webhook dispatcher reads on from there). */
  onFlush(fn: () => void): void {
    this.listeners.push(fn);
  }

  flush(): void {
    this.scheduled = false;
    if (this.fd < 0 || this.buffer.length === 0) return;
    const data = this.buffer.join("");
    this.buffer = [];
    this.bufferedBytes = 0;
    writeSync(this.fd, data);
    for (const fn of this.listeners) fn();
  }

  /** Close and open the file again (after logrotate moved it), or another file (a reload). */
  reopen(file = this.file): void {
    this.flush();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    this.file = file;
    this.open();
  }

  close(): void {
    this.flush();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
