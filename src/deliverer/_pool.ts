/**
 * Idle outbound connections, kept per (source address, MX ip:port, session policy) for the next message.
 *
 * Owns: the idle lists, idle timers, per-key and message-count limits.
 * Does not own: in-use connections (the deliverer counts those), the SMTP dialogue (session.ts).
 * Invariants: an idle connection is in exactly one list; one that closes (idle timeout, peer hung up)
 * leaves its list at once; a connection that has carried `maxMessagesPerConnection` is never kept.
 */
import type { OpenSession, Timeouts } from "./_session.ts";

interface IdleEntry {
  session: OpenSession;
  timer: ReturnType<typeof setTimeout>;
}

export class ConnectionPool {
  private idle = new Map<string, IdleEntry[]>();
  private count = 0;

  constructor(
    private readonly limits: {
      maxMessagesPerConnection: number;
      idleTimeoutMs: number;
      maxIdlePerKey: number;
    },
    private readonly timeouts: Timeouts,
  ) {}

  size(): number {
    return this.count;
  }

  /** Most recently used first: it is the one least likely to have been timed out by the server. */
  take(key: string): OpenSession | undefined {
    const list = this.idle.get(key);
    const entry = list?.pop();
    if (!entry) return undefined;
    if (list!.length === 0) this.idle.delete(key);
    this.count--;
    clearTimeout(entry.timer);
    entry.session.conn.onClose = undefined;
    return entry.session;
  }

  /** Offers a connection after a transaction; it is kept, or QUIT (resolves once closed). */
  release(key: string, session: OpenSession): Promise<void> {
    const list = this.idle.get(key) ?? [];
    if (
      session.conn.closed ||
      session.messages >= this.limits.maxMessagesPerConnection ||
      list.length >= this.limits.maxIdlePerKey
    )
      return session.conn.quit(this.timeouts.quitMs);
    const entry: IdleEntry = {
      session,
      timer: setTimeout(() => {
        this.remove(key, entry);
        void session.conn.quit(this.timeouts.quitMs);
      }, this.limits.idleTimeoutMs),
    };
    entry.timer.unref?.();
    session.conn.onClose = () => this.remove(key, entry);
    list.push(entry);
    this.idle.set(key, list);
    this.count++;
    return Promise.resolve();
  }

  private remove(key: string, entry: IdleEntry): void {
    const list = this.idle.get(key);
    if (!list) return;
    const i = list.indexOf(entry);
    if (i === -1) return;
    list.splice(i, 1);
    if (list.length === 0) this.idle.delete(key);
    this.count--;
    clearTimeout(entry.timer);
  }

  /** QUITs every idle connection. */
  async close(): Promise<void> {
    const all: OpenSession[] = [];
    for (const list of this.idle.values())
      for (const e of list) {
        clearTimeout(e.timer);
        e.session.conn.onClose = undefined;
        all.push(e.session);
      }
    this.idle.clear();
    this.count = 0;
    await Promise.all(all.map((s) => s.conn.quit(this.timeouts.quitMs)));
  }
}
