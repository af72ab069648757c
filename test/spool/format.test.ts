import { expect, test } from "bun:test";
import { joinMessageId, newMessageId, splitMessageId } from "../../src/lib/index.ts";
import {
  checkRecord,
  decodeMessage,
  decodeOutcome,
  encodeMessage,
  encodeOutcome,
  newRecordHead,
  peekRecord,
} from "../../src/spool/_format.ts";

const message = {
  idMs: 1_700_000_000_123,
  idCounter: 12345,
  arrivalMs: 1_700_000_000_000,
  attempts: 2,
  nextAttemptMs: 1_700_000_600_000,
  sender: "",
  destination: "example.test",
  recipients: [
    { address: "a@example.test", state: 0 },
    {
      address: "b@example.test",
      notify: ["FAILURE" as const, "DELAY" as const],
      orcpt: "rfc822;b@x",
      state: 1,
      lastReply: "250 2.0.0 ok",
    },
  ],
  attributes: { envid: "E1", "client-ip": "127.0.0.1", ümlaut: "wert" },
  body: new TextEncoder().encode("Subject: x\r\n\r\nbody\r\n"),
};

test("a MESSAGE record decodes to exactly what was encoded", () => {
  const bytes = encodeMessage(message);
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  expect(checkRecord(bytes, dv, 0, bytes.length)).toBe(bytes.length);
  const back = decodeMessage(bytes, 0, bytes.length);
  expect(back).toEqual({ ...message, body: back.body });
  expect(Array.from(back.body)).toEqual(Array.from(message.body));
  const h = newRecordHead();
  peekRecord(bytes, 0, bytes.length, h);
  expect([h.destination, h.recipientCount, h.states.slice(0, 2), h.bodyBytes, h.attempts]).toEqual([
    "example.test",
    2,
    [0, 1],
    message.body.length,
    2,
  ]);
});

test("an OUTCOME record decodes to exactly what was encoded", () => {
  const o = {
    idMs: 5,
    idCounter: 6,
    attempts: 3,
    nextAttemptMs: 99,
    reason: "expired",
    recipients: [{ state: 2, lastReply: "550 5.1.1 no" }, { state: 0 }],
  };
  const bytes = encodeOutcome(o);
  expect(decodeOutcome(bytes, 0, bytes.length)).toEqual(o);
});

test("TLS notes travel in a trailer that readers without it skip: OUTCOME and MESSAGE records", () => {
  const dane = { policy: "dane", version: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384", verified: true };
  const plain = { policy: "opportunistic", verified: false };
  const o = {
    idMs: 5,
    idCounter: 6,
    attempts: 3,
    nextAttemptMs: 99,
    reason: "",
    recipients: [
      { state: 1, lastReply: "250 ok", lastTls: dane },
      { state: 0, lastReply: "451 later", lastTls: plain },
      { state: 0 },
      { state: 1, lastReply: "250 ok", lastTls: { ...dane } },
    ],
  };
  const bytes = encodeOutcome(o);
  expect(decodeOutcome(bytes, 0, bytes.length)).toEqual(o);
  // One table entry per distinct note: the fourth recipient shares the first one's.
  const without = encodeOutcome({ ...o, recipients: o.recipients.map(({ lastTls: _, ...r }) => r) });
  const entry = (t: { policy: string; version?: string; cipher?: string }) =>
    12 + t.policy.length + (t.version ?? "").length + (t.cipher ?? "").length + 1;
  const tableBytes = 1 + 4 + entry(dane) + entry(plain);
  expect(bytes.length - without.length).toBe(tableBytes + 4 * o.recipients.length);
  // A MESSAGE record (a compaction copy) carries the notes after its body.
  const m = {
    ...message,
    recipients: [{ ...message.recipients[0]!, lastTls: plain }, message.recipients[1]!],
  };
  const mb = encodeMessage(m);
  const back = decodeMessage(mb, 0, mb.length);
  expect(back.recipients).toEqual(m.recipients);
  const h = newRecordHead();
  peekRecord(mb, 0, mb.length, h);
  expect(h.bodyBytes).toBe(message.body.length);
  // The payload without notes is a prefix of the payload with them: a reader from before the
  // trailer reads exactly what it always read and stops (it never asked for the payload's end).
  const mWithout = encodeMessage(message);
  expect(Buffer.from(mb.subarray(16, mWithout.length)).equals(Buffer.from(mWithout.subarray(16)))).toBe(true);
  expect(Buffer.from(bytes.subarray(16, without.length)).equals(Buffer.from(without.subarray(16)))).toBe(
    true,
  );
});

test("every single flipped bit of a record fails its check", () => {
  const bytes = encodeMessage(message);
  for (let i = 0; i < bytes.length; i++) {
    for (const bit of [1, 128]) {
      const copy = bytes.slice();
      copy[i]! ^= bit;
      const dv = new DataView(copy.buffer);
      expect(checkRecord(copy, dv, 0, copy.length)).not.toBe(copy.length);
    }
  }
});

test("a truncated record asks for more bytes instead of decoding", () => {
  const bytes = encodeMessage(message);
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  for (let n = 0; n < bytes.length; n++) expect(checkRecord(bytes, dv, 0, n)).toBe(0);
});

test("message ids survive the split into numbers and back", () => {
  for (let i = 0; i < 1000; i++) {
    const id = newMessageId();
    const p = splitMessageId(id)!;
    expect(joinMessageId(p.ms, p.counter)).toBe(id);
  }
  expect(splitMessageId("not-an-id")).toBeUndefined();
  expect(splitMessageId("0000000000000I")).toBeUndefined();
});
