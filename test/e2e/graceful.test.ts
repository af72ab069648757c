import { expect, test } from "bun:test";
import type { Socket } from "bun";
import { runMta, startMta, tempDir, testConfig } from "../support/mta.ts";

/** A raw SMTP client: write lines, read replies as they come. */
async function rawSession(port: number) {
  let buf = "";
  let wake: (() => void) | undefined;
  let closed = false;
  const socket: Socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, chunk) {
        buf += chunk.toString();
        wake?.();
      },
      close() {
        closed = true;
        wake?.();
      },
    },
  });
  const reply = async (): Promise<string> => {
    for (;;) {
      const m = /^(\d{3}) .*\r\n/m.exec(buf);
      if (m) {
        const end = buf.indexOf("\r\n", m.index) + 2;
        const r = buf.slice(0, end);
        buf = buf.slice(end);
        return r;
      }
      if (closed) return "";
      await new Promise<void>((r) => {
        wake = r;
      });
    }
  };
  return { socket, reply, isClosed: () => closed };
}

test("SIGTERM lets a session in DATA finish with 250, answers the idle one 421, and the message is kept", async () => {
  using dir = tempDir();
  const config = testConfig(dir.path, "delivery: { routes: { example.net: '127.0.0.1:9' }, retry: [1h] }");
  let id: string;
  {
    await using mta = await startMta({ dir: dir.path, config });
    const port = mta.smtpPorts[0]!;
    const idle = await rawSession(port);
    expect(await idle.reply()).toStartWith("220");
    const busy = await rawSession(port);
    expect(await busy.reply()).toStartWith("220");
    busy.socket.write("EHLO client.test\r\n");
    expect(await busy.reply()).toStartWith("250");
    busy.socket.write("MAIL FROM:<a@app.test>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
    expect(await busy.reply()).toStartWith("250");
    expect(await busy.reply()).toStartWith("250");
    expect(await busy.reply()).toStartWith("354");
    busy.socket.write("Subject: in flight\r\n\r\nfirst half\r\n");
    await Bun.sleep(100);
    mta.proc.kill("SIGTERM");
    expect(await idle.reply()).toMatch(/^421 /);
    await Bun.sleep(100);
    busy.socket.write("second half\r\n.\r\n");
    const done = await busy.reply();
    expect(done).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-Z]{14}/);
    id = /queued as ([0-9A-Z]{14})/.exec(done)![1]!;
    expect(await mta.proc.exited).toBe(0);
  }
  const listed = runMta(["queue", "list", "--json", "-c", `${dir.path}/mta.yaml`]);
  expect(listed.code).toBe(0);
  expect(JSON.parse(listed.stdout).messages.map((m: { id: string }) => m.id)).toContain(id);
}, 30_000);
