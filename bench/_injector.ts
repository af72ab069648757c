/**
 * A small SMTP load generator for benchmarks where smtp-source cannot vary the recipient domain:
 * `sessions` concurrent sessions over Bun.connect, each sending messages back to back with PIPELINING
 * (MAIL, RCPT, DATA in one write), recipients `<seq>@<domain(seq)>`.
 */
export interface InjectOptions {
  host: string;
  port: number;
  count: number;
  sessions: number;
  sizeBytes: number;
  domain: (seq: number) => string;
  messagesPerSession?: number;
}

function bodyOf(sizeBytes: number): string {
  const head = "From: <bench@example.com>\r\nTo: <bench@example.net>\r\nSubject: bench\r\n\r\n";
  const line = `${"x".repeat(78)}\r\n`;
  let body = head;
  while (body.length + line.length < sizeBytes) body += line;
  return `${body}.\r\n`;
}

export async function inject(opts: InjectOptions): Promise<{ wallS: number; sent: number; failed: number }> {
  const body = bodyOf(opts.sizeBytes);
  let next = 0;
  let sent = 0;
  let failed = 0;
  const t0 = performance.now();
  const perSession = opts.messagesPerSession ?? 1000;
  const session = () =>
    new Promise<void>((resolve) => {
      let buf = "";
      let stage: "greet" | "ehlo" | "txn" | "data" | "quit" = "greet";
      let inSession = 0;
      let pendingReplies = 0;
      let okSoFar = true;
      const startTxn = (s: { write(d: string): number }) => {
        if (next >= opts.count || inSession >= perSession) {
          stage = "quit";
          s.write("QUIT\r\n");
          return;
        }
        const seq = next++;
        inSession++;
        stage = "txn";
        pendingReplies = 3;
        okSoFar = true;
        s.write(`MAIL FROM:<a@example.com>\r\nRCPT TO:<${seq}b@${opts.domain(seq)}>\r\nDATA\r\n`);
      };
      Bun.connect({
        hostname: opts.host,
        port: opts.port,
        socket: {
          data(s, chunk) {
            buf += chunk.toString();
            for (;;) {
              const i = buf.indexOf("\r\n");
              if (i < 0) break;
              const line = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (line[3] === "-") continue;
              const code = Number(line.slice(0, 3));
              if (stage === "greet") {
                stage = "ehlo";
                s.write("EHLO bench.test\r\n");
              } else if (stage === "ehlo") {
                startTxn(s);
              } else if (stage === "txn") {
                pendingReplies--;
                if (pendingReplies > 0 && code >= 400) okSoFar = false;
                if (pendingReplies === 0) {
                  if (code === 354 && okSoFar) {
                    stage = "data";
                    s.write(body);
                  } else {
                    failed++;
                    s.write("RSET\r\n");
                    stage = "data"; // the RSET reply ends this transaction
                  }
                }
              } else if (stage === "data") {
                if (code === 250 && okSoFar) sent++;
                else if (code !== 250) failed++;
                startTxn(s);
              } else if (stage === "quit") {
                s.end();
              }
            }
          },
          close() {
            resolve();
          },
          connectError() {
            failed++;
            resolve();
          },
        },
      }).catch(() => resolve());
    });
  const workers: Promise<void>[] = [];
  const loop = async () => {
    while (next < opts.count) await session();
  };
  for (let i = 0; i < opts.sessions; i++) workers.push(loop());
  await Promise.all(workers);
  return { wallS: (performance.now() - t0) / 1000, sent, failed };
}
