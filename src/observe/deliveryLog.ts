/**
 * The delivery log: one JSON object per line for every event in a message's life.
 *
 * Owns: the append-only log file (`log.deliveries`), buffered writes, reopen on SIGHUP (for logrotate).
 * Events: reception, delivery, transient-failure, bounce, expiration, dsn, delay-warning, admin-bounce,
 * admin-delete, and per destination: suspension, resumption, rule.
 * Invariant: a line is written after the spool recorded the event it describes, never before.
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
  private timer: ReturnType<typeof setTimeout> | undefined;
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
    else this.timer ??= setTimeout(() => this.flush(), 200);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.fd < 0 || this.buffer.length === 0) return;
    const data = this.buffer.join("");
    this.buffer = [];
    this.bufferedBytes = 0;
    writeSync(this.fd, data);
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
