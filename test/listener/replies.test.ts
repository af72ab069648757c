import { expect, test } from "bun:test";
import { startListener } from "../../src/listener/index.ts";
import { Client, log, options, RecordingAcceptor } from "./_harness.ts";

/**
 * RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included. Every reply the listener can
 * give is driven here with the longest inputs it accepts: a hostname far longer than DNS allows, command
 * lines at the line limit, 1,000 queue ids, an id longer than a line, and a long refusal from the acceptor.
 */
test("every reply line the listener writes is at most 512 octets, over the longest inputs", async () => {
  const hostname = `${"h".repeat(63)}.`.repeat(10).slice(0, 600);
  const acceptor = new RecordingAcceptor();
  const listener = await startListener(
    options({ hostname, maxLineBytes: 4096, maxRecipients: 2000, maxErrors: 1000, maxJunkCommands: 1 }),
    acceptor,
    { log },
  );
  const long = "a".repeat(4000);
  const c = await Client.connect(listener.port);
  const seen: string[] = [];
  const take = async (line?: string) => {
    const r = line === undefined ? await c.reply() : await c.cmd(line);
    seen.push(...r.lines);
    return r;
  };
  try {
    await take();
    for (const cmd of [
      `EHLO ${long}`,
      `HELO ${long}`,
      `EHLO c.test`,
      `MAIL FROM:<${long}@x.test>`,
      `MAIL FROM:<a@x.test> ${long}`,
      `MAIL FROM:<a@x.test> SIZE=999999999999`,
      `MAIL FROM:<a@x.test>`,
      `RCPT TO:<${long}@x.test>`,
      `RCPT TO:<b@x.test> NOTIFY=${long}`,
      `RCPT TO:<b@x.test> ORCPT=rfc822;${long}`,
      `VRFY ${long}`,
      `HELP ${long}`,
      `NOOP ${long}`,
      `RSET ${long}`,
      `EXPN ${long}`,
      `AUTH PLAIN ${long}`,
      `STARTTLS ${long}`,
      `${long}`,
      `DATA ${long}`,
      `${"x".repeat(5000)}`,
    ])
      await take(cmd);
    // 1,000 queue ids in the 250 after DATA.
    acceptor.next = async () => ({
      ok: true,
      ids: Array.from({ length: 1000 }, (_, i) => `1M8B6EGDQ${String(i).padStart(5, "0")}`),
    });
    await take("RSET");
    await take("MAIL FROM:<a@x.test>");
    await take("RCPT TO:<b@x.test>");
    await take("DATA");
    const queued = await take("Subject: x\r\n\r\nbody\r\n.");
    expect(queued.text).toMatch(/^250 2\.0\.0 Ok: queued as 1M8B6EGDQ00000 .* \(and \d+ more\)$/);
    // One id longer than a line, and a refusal whose text is longer than a line.
    acceptor.next = async () => ({ ok: true, ids: ["I".repeat(700)] });
    await take("MAIL FROM:<a@x.test>");
    await take("RCPT TO:<b@x.test>");
    await take("DATA");
    await take("Subject: x\r\n\r\nbody\r\n.");
    acceptor.next = async () => ({
      ok: false,
      reply: { code: 554, enhanced: "5.6.0", lines: [long, "second"] },
    });
    await take("MAIL FROM:<a@x.test>");
    await take("RCPT TO:<b@x.test>");
    await take("DATA");
    await take("Subject: x\r\n\r\nbody\r\n.");
    await take("QUIT");
  } finally {
    c.close();
    await listener.close();
  }
  expect(seen.length).toBeGreaterThan(30);
  const over = seen.filter((l) => Buffer.byteLength(`${l}\r\n`, "latin1") > 512);
  expect(over).toEqual([]);
  // The cut lines say they were cut.
  expect(seen.some((l) => l.endsWith("..."))).toBe(true);
});
