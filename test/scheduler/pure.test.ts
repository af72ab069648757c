import { describe, expect, test } from "bun:test";
import { SlotFifo } from "../../src/scheduler/_fifo.ts";
import { TimerHeap } from "../../src/scheduler/_heap.ts";
import { parseRate } from "../../src/lib/index.ts";
import { RateLimiter } from "../../src/scheduler/_rate.ts";
import { DEFAULT_BACKOFF_RULES, matchRule } from "../../src/route/index.ts";
import { ConcurrencyWindow } from "../../src/scheduler/_window.ts";

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("TimerHeap", () => {
  test("pops keys in due-time order, ties in insertion order, and only when due", () => {
    const h = new TimerHeap();
    h.push(5, 300);
    h.push(1, 100);
    h.push(7, 100);
    h.push(2, 200);
    expect(h.popDue(50)).toBeUndefined();
    expect(h.popDue(1000)).toBe(1);
    expect(h.popDue(1000)).toBe(7);
    expect(h.popDue(150)).toBeUndefined();
    expect(h.popDue(1000)).toBe(2);
    expect(h.popDue(1000)).toBe(5);
    expect(h.size).toBe(0);
  });

  test("matches a sorted reference under random pushes, updates and removals", () => {
    const rnd = lcg(42);
    const h = new TimerHeap();
    const ref = new Map<number, number>();
    for (let i = 0; i < 20_000; i++) {
      const key = Math.floor(rnd() * 3000);
      const op = rnd();
      if (op < 0.6) {
        const t = Math.floor(rnd() * 1e6);
        h.push(key, t);
        ref.set(key, t);
      } else if (op < 0.8) {
        expect(h.remove(key)).toBe(ref.delete(key));
      } else {
        const top = h.peekTime();
        const min = ref.size ? Math.min(...ref.values()) : undefined;
        expect(top).toBe(min);
      }
      expect(h.size).toBe(ref.size);
    }
    const out: number[] = [];
    for (let k = h.popDue(Infinity); k !== undefined; k = h.popDue(Infinity)) {
      out.push(ref.get(k)!);
      expect(h.has(k)).toBe(false);
    }
    expect(out).toEqual([...ref.values()].sort((a, b) => a - b));
  });

  test("push of a queued key moves it instead of duplicating it", () => {
    const h = new TimerHeap();
    h.push(3, 500);
    h.push(3, 10);
    expect(h.size).toBe(1);
    expect(h.timeOf(3)).toBe(10);
    expect(h.popDue(10)).toBe(3);
    expect(h.popDue(Infinity)).toBeUndefined();
  });
});

describe("SlotFifo", () => {
  test("keeps FIFO order across growth and wrap-around; unshift goes first", () => {
    const q = new SlotFifo();
    const ref: number[] = [];
    for (let i = 0; i < 100; i++) {
      q.push(i);
      ref.push(i);
      if (i % 3 === 0) expect(q.shift()).toBe(ref.shift()!);
    }
    q.unshift(999);
    ref.unshift(999);
    expect(q.length).toBe(ref.length);
    expect(q.drain()).toEqual(ref);
    expect(q.shift()).toBeUndefined();
  });
});

describe("RateLimiter (GCRA)", () => {
  test("allows a burst of `count`, then one per interval", () => {
    const r = new RateLimiter({ count: 10, perMs: 1000 });
    const t0 = 1_000_000;
    for (let i = 0; i < 10; i++) expect(r.take(t0)).toBe(0);
    expect(r.take(t0)).toBe(100);
    expect(r.take(t0 + 99)).toBe(1);
    expect(r.take(t0 + 100)).toBe(0);
    expect(r.take(t0 + 100)).toBe(100);
  });

  test("holds the rate within 5% over a long window with a stepping clock", () => {
    const r = new RateLimiter(parseRate("100/s")!);
    let now = 0;
    let taken = 0;
    const windowMs = 60_000;
    while (now < windowMs) {
      if (r.take(now) === 0) taken++;
      now += 3;
    }
    // 100/s over 60 s is 6000, plus the initial burst of 100.
    expect(taken).toBeGreaterThanOrEqual(6000 * 0.95);
    expect(taken).toBeLessThanOrEqual(6100);
  });

  test("parses rates", () => {
    expect(parseRate("100/s")).toEqual({ count: 100, perMs: 1000 });
    expect(parseRate("5000/h")).toEqual({ count: 5000, perMs: 3_600_000 });
    expect(parseRate("10/500ms")).toEqual({ count: 10, perMs: 500 });
    expect(parseRate("2/5m")).toEqual({ count: 2, perMs: 300_000 });
    expect(parseRate("fast")).toBeUndefined();
    expect(parseRate("0/s")).toBeUndefined();
  });
});

describe("ConcurrencyWindow", () => {
  test("starts small, opens by one per success up to the limit, halves on failure, never below 1", () => {
    const w = new ConcurrencyWindow(5, 2);
    expect(w.size).toBe(2);
    for (let i = 0; i < 10; i++) w.onSuccess();
    expect(w.size).toBe(5);
    w.onConnectionFailure();
    expect(w.size).toBe(2);
    w.onConnectionFailure();
    w.onConnectionFailure();
    expect(w.size).toBe(1);
    w.setLimit(1);
    w.onSuccess();
    expect(w.size).toBe(1);
    w.setLimit(8);
    w.reset();
    expect(w.size).toBe(2);
  });
});

describe("backoff rules", () => {
  test("defaults throttle on 'try again later', suspend on 4.7.28, ignore 5xx and plain 4xx", () => {
    const tryLater = matchRule(DEFAULT_BACKOFF_RULES, {
      code: 421,
      enhanced: "4.7.0",
      lines: ["Try again later"],
    });
    expect(tryLater?.action).toBe("throttle");
    const gmail = matchRule(DEFAULT_BACKOFF_RULES, {
      code: 421,
      enhanced: "4.7.28",
      lines: ["Our system has detected an unusual rate of unsolicited mail"],
    });
    expect(gmail?.action).toBe("suspend");
    expect(matchRule(DEFAULT_BACKOFF_RULES, { code: 550, lines: ["rate limit exceeded"] })).toBeUndefined();
    expect(
      matchRule(DEFAULT_BACKOFF_RULES, { code: 451, enhanced: "4.3.0", lines: ["local error"] }),
    ).toBeUndefined();
  });

  test("a custom rule matches on code, enhanced code and text together", () => {
    const rules = [
      {
        name: "x",
        code: 452,
        enhanced: /^4\.2\.2$/,
        text: /mailbox full/i,
        action: "bounce" as const,
        forMs: 1,
      },
    ];
    expect(matchRule(rules, { code: 452, enhanced: "4.2.2", lines: ["Mailbox full"] })?.name).toBe("x");
    expect(matchRule(rules, { code: 452, enhanced: "4.2.1", lines: ["Mailbox full"] })).toBeUndefined();
    expect(matchRule(rules, { code: 451, enhanced: "4.2.2", lines: ["Mailbox full"] })).toBeUndefined();
  });
});
