/**
 * The maildrop: how a local user who may not touch the spool submits mail (`sendmail` run by anyone),
 * after Postfix's maildrop + pickup, without a set-gid program.
 *
 * Owns: the maildrop directory (`spool.maildrop`, mode 3733: anyone may create a file in it, nobody
 * but its owner and root may list it, the sticky bit keeps users from removing each other's files, and
 * the set-gid bit gives every file the daemon's group); the drop file format; writing a drop file
 * (`dropMessage`, run by `mta send` as that user); the daemon's pickup (`MaildropPickup`); the local
 * `Received:` line naming the submitting uid.
 * Drop file: `MTADROP1\n` + one JSON line `{"sender", "recipients", "attributes"?}` + the message bytes.
 * Written as `.<name>.tmp` (mode 0640), fsync'ed, renamed to `<name>.msg` and fsync'ed again (a journaling
 * file system then has the rename on disk too; the user may not open the directory to sync it).
 * Invariants:
 * - the submitting uid is the drop file's owner, which the kernel sets and no user can change: that is
 *   the uid the `Received:` line names, never anything the file says;
 * - the pickup opens with O_NOFOLLOW and takes only a regular file with one link, so a user cannot make
 *   the daemon read a file they could not (a symlink or hard link to it);
 * - a drop file is removed only after its message is durably in the spool (a crash in between delivers
 *   it twice, never not at all); a malformed one is renamed `<name>.bad` and logged, never dropped unseen.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { concatBytes, errorMessage, textEncoder } from "../lib/index.ts";
import type { Logger } from "../observe/index.ts";
import type { AcceptPipeline } from "./_pipeline.ts";
import { rfc5322Date } from "../message/index.ts";
import { checkItem } from "./_inject.ts";

const MAGIC = "MTADROP1\n";
/** rwx for the owner, wx for everyone, set-gid and sticky. */
export const MAILDROP_DIR_MODE = 0o3733;
const DROP_FILE_MODE = 0o640;
const SCAN_INTERVAL_MS = 5_000;
const PICKUP_CONCURRENCY = 16;

export interface DropItem {
  sender: string;
  recipients: string[];
  message: Uint8Array;
  attributes?: Record<string, string>;
}

/** `Received: by <host> (mta, from userid N); <date>`, as Postfix's pickup writes it. */
export function localReceived(uid: number, hostname: string, nowMs = Date.now()): string {
  return `Received: by ${hostname} (mta, from userid ${uid});\r\n\t${rfc5322Date(nowMs)}\r\n`;
}

/** The same line before `message`. */
export function withLocalReceived(message: Uint8Array, uid: number, hostname: string): Uint8Array {
  return concatBytes([textEncoder.encode(localReceived(uid, hostname)), message]);
}

/** Writes one message into the maildrop, durably; returns the drop file's name. */
export function dropMessage(dir: string, item: DropItem): string {
  const name = `${Date.now().toString(36)}-${randomBytes(12).toString("hex")}`;
  const tmp = join(dir, `.${name}.tmp`);
  const final = join(dir, `${name}.msg`);
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, DROP_FILE_MODE);
  try {
    fs.fchmodSync(fd, DROP_FILE_MODE);
    const head = { sender: item.sender, recipients: item.recipients, attributes: item.attributes ?? {} };
    fs.writeSync(fd, `${MAGIC}${JSON.stringify(head)}\n`);
    for (let off = 0; off < item.message.length; )
      off += fs.writeSync(fd, item.message, off, item.message.length - off);
    fs.fsyncSync(fd);
    fs.renameSync(tmp, final);
    fs.fsyncSync(fd);
  } catch (err) {
    try {
      fs.unlinkSync(tmp);
    } catch {}
    throw err;
  } finally {
    fs.closeSync(fd);
  }
  return name;
}

/** Creates the maildrop (or fixes its mode); the daemon's user owns it. */
export function prepareMaildrop(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, MAILDROP_DIR_MODE);
}

type Parsed = { ok: true; item: DropItem } | { ok: false; problem: string };

export function parseDropFile(bytes: Uint8Array, maxMessageBytes: number): Parsed {
  const magic = textEncoder.encode(MAGIC);
  for (let i = 0; i < magic.length; i++)
    if (bytes[i] !== magic[i]) return { ok: false, problem: "not a drop file (bad magic)" };
  const nl = bytes.indexOf(10, magic.length);
  if (nl < 0) return { ok: false, problem: "no envelope line" };
  let head: unknown;
  try {
    head = JSON.parse(Buffer.from(bytes.subarray(magic.length, nl)).toString("utf8"));
  } catch (err) {
    return { ok: false, problem: `malformed envelope: ${errorMessage(err)}` };
  }
  const h = head as { sender?: unknown; recipients?: unknown; attributes?: unknown };
  const problem = checkItem({ sender: h.sender, recipients: h.recipients, message: "" }, maxMessageBytes);
  if (problem) return { ok: false, problem };
  const message = bytes.subarray(nl + 1);
  if (message.length > maxMessageBytes)
    return { ok: false, problem: `message is ${message.length} bytes, over the limit of ${maxMessageBytes}` };
  const attributes: Record<string, string> = {};
  if (h.attributes && typeof h.attributes === "object" && !Array.isArray(h.attributes))
    for (const [k, v] of Object.entries(h.attributes)) if (typeof v === "string") attributes[k] = v;
  return {
    ok: true,
    item: { sender: h.sender as string, recipients: h.recipients as string[], message, attributes },
  };
}

export interface PickupOptions {
  dir: string;
  pipeline: AcceptPipeline;
  hostname: string;
  maxMessageBytes: number;
  log: Logger;
}

/** The daemon's side: watches the maildrop and moves each drop file into the spool. */
export class MaildropPickup {
  private watcher: fs.FSWatcher | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private scanning: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Queued, but the file could not be removed: never queued again by this process. */
  private readonly stuck = new Set<string>();
  /** Picked up since start. */
  picked = 0;

  constructor(private readonly opts: PickupOptions) {}

  start(): void {
    prepareMaildrop(this.opts.dir);
    try {
      this.watcher = fs.watch(this.opts.dir, () => this.kick());
      this.watcher.on("error", () => {});
    } catch {
      // No inotify: the periodic scan alone picks mail up.
    }
    this.timer = setInterval(() => this.kick(), SCAN_INTERVAL_MS);
    this.timer.unref?.();
    this.kick();
  }

  /** Scans now (or right after the running scan). */
  kick(): void {
    if (this.stopped) return;
    if (this.scanning) {
      this.again = true;
      return;
    }
    this.scanning = this.scan().finally(() => {
      this.scanning = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  /** Resolves once the pickup in progress (if any) has finished; nothing new starts. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    if (this.timer) clearInterval(this.timer);
    await this.scanning;
  }

  private async scan(): Promise<void> {
    let names: string[];
    try {
      names = fs
        .readdirSync(this.opts.dir)
        .filter((n) => n.endsWith(".msg") && !this.stuck.has(n))
        .sort();
    } catch (err) {
      this.opts.log.warn(`maildrop ${this.opts.dir}: cannot read: ${errorMessage(err)}`);
      return;
    }
    for (let i = 0; i < names.length && !this.stopped; i += PICKUP_CONCURRENCY) {
      const kept = await Promise.all(names.slice(i, i + PICKUP_CONCURRENCY).map((n) => this.pick(n)));
      // The spool refused (e.g. a full disk): leave the rest for the next scan.
      if (kept.includes(false)) return;
    }
  }

  /** Moves one drop file into the spool; false when the spool refused it (it stays for a later scan). */
  private async pick(name: string): Promise<boolean> {
    const path = join(this.opts.dir, name);
    const log = this.opts.log;
    const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
    let fd: number;
    try {
      fd = fs.openSync(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return true;
      log.warn("maildrop: cannot open a drop file; set aside", { file: path, error: errorMessage(err) });
      this.setAside(path);
      return true;
    }
    let bytes: Uint8Array;
    let uid: number;
    try {
      const st = fs.fstatSync(fd);
      uid = st.uid;
      if (!st.isFile() || st.nlink !== 1) {
        log.warn("maildrop: not a regular file with one link; set aside", { file: path, uid });
        this.setAside(path);
        return true;
      }
      if (st.size > this.opts.maxMessageBytes + 1024 * 1024) {
        log.warn("maildrop: drop file over the message size limit; set aside", {
          file: path,
          uid,
          bytes: st.size,
        });
        this.setAside(path);
        return true;
      }
      bytes = new Uint8Array(st.size);
      for (let off = 0; off < st.size; ) {
        const n = fs.readSync(fd, bytes, off, st.size - off, off);
        if (n <= 0) break;
        off += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    const parsed = parseDropFile(bytes, this.opts.maxMessageBytes);
    if (!parsed.ok) {
      log.warn("maildrop: malformed drop file; set aside", { file: path, uid, problem: parsed.problem });
      this.setAside(path);
      return true;
    }
    const { item } = parsed;
    const res = await this.opts.pipeline.submit({
      sender: item.sender,
      recipients: item.recipients.map((address) => ({ address })),
      attributes: { ...item.attributes, listener: "maildrop", uid: String(uid) },
      message: withLocalReceived(item.message, uid, this.opts.hostname),
    });
    if (!res.ok) {
      log.warn("maildrop: the spool refused a drop file; it stays for the next scan", {
        file: path,
        reply: res.reply.lines.join(" "),
      });
      return false;
    }
    try {
      fs.unlinkSync(path);
    } catch (err) {
      this.stuck.add(name);
      log.error("maildrop: queued, but cannot remove the drop file (a restart will queue it again)", {
        file: path,
        error: errorMessage(err),
      });
    }
    this.picked++;
    log.info("maildrop: queued", { file: name, uid, ids: res.ids });
    return true;
  }

  private setAside(path: string): void {
    try {
      fs.renameSync(path, path.replace(/\.msg$/, ".bad"));
    } catch {}
  }
}
