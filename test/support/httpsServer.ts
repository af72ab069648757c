/**
 * An HTTPS server on loopback for MTA-STS policy hosts and TLS-RPT endpoints (Bun.serve with TLS).
 *
 * Owns: starting it with a certificate, a handler that tests can swap, a log of requests (method,
 * path, Host, Content-Type, body bytes).
 */
export interface HttpsRequestLog {
  method: string;
  path: string;
  host: string;
  contentType: string;
  body: Buffer;
}

export interface HttpsServer extends AsyncDisposable {
  host: string;
  port: number;
  requests: HttpsRequestLog[];
  handler: (req: Request, log: HttpsRequestLog) => Response | Promise<Response>;
  stop(): Promise<void>;
}

export async function startHttpsServer(opts: {
  cert: string;
  key: string;
  host?: string;
  port?: number;
  handler?: (req: Request, log: HttpsRequestLog) => Response | Promise<Response>;
}): Promise<HttpsServer> {
  const requests: HttpsRequestLog[] = [];
  const self: HttpsServer = {
    host: opts.host ?? "127.0.0.1",
    port: 0,
    requests,
    handler: opts.handler ?? (() => new Response("not found", { status: 404 })),
    stop: async () => {},
    [Symbol.asyncDispose]: async () => self.stop(),
  };
  const server = Bun.serve({
    hostname: self.host,
    port: opts.port ?? 0,
    tls: { cert: opts.cert, key: opts.key },
    async fetch(req) {
      const url = new URL(req.url);
      const log: HttpsRequestLog = {
        method: req.method,
        path: url.pathname + url.search,
        host: req.headers.get("host") ?? "",
        contentType: req.headers.get("content-type") ?? "",
        body: Buffer.from(await req.arrayBuffer()),
      };
      requests.push(log);
      return self.handler(req, log);
    },
  });
  self.port = server.port ?? 0;
  let stopped = false;
  self.stop = async () => {
    if (stopped) return;
    stopped = true;
    await server.stop(true);
  };
  return self;
}

/** A text/plain MTA-STS policy response. */
export function stsPolicyResponse(policy: { mode: string; mx: string[]; maxAgeS: number }): Response {
  const text = [
    "version: STSv1",
    `mode: ${policy.mode}`,
    ...policy.mx.map((m) => `mx: ${m}`),
    `max_age: ${policy.maxAgeS}`,
    "",
  ].join("\r\n");
  return new Response(text, { headers: { "Content-Type": "text/plain; charset=utf-8" } });
}
