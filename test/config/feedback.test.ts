import { describe, expect, test } from "bun:test";
import { ConfigError, parseConfigText } from "../../src/config/index.ts";

function problemsOf(text: string) {
  try {
    parseConfigText(text, "/tmp/test.yaml");
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.line}: ${p.path}: ${p.message}`);
    throw err;
  }
  return [];
}

describe("feedback-loop configuration", () => {
  test("defaults: suppression on, refuse, global, the three invalid classes and complaints never expire; no bounce domain", () => {
    const { config } = parseConfigText("", "/etc/mta/mta.yaml");
    expect(config.suppression).toEqual({
      enabled: true,
      answer: "refuse",
      scope: "global",
      auto: { "bad-mailbox": 0, "bad-domain": 0, "inactive-mailbox": 0, complaint: 0 },
    });
    expect(config.bounces).toEqual({ rulesFiles: [], builtinRules: true, domain: "", senders: [] });
    expect(config.webhooks).toEqual([]);
    expect(config.listen[0]!.role).toBe("relay");
  });

  test("a webhook's fields are typed; events default to the eight the issue names", () => {
    const { config } = parseConfigText(
      "webhooks:\n  - { name: app, url: https://hooks.example.com/x, secret: 0123456789abcdef, timeout: 3s }\n",
      "/etc/mta/mta.yaml",
    );
    expect(config.webhooks[0]).toEqual({
      name: "app",
      url: "https://hooks.example.com/x",
      secret: "0123456789abcdef",
      events: [
        "reception",
        "delivery",
        "transient-failure",
        "bounce",
        "expiration",
        "async-bounce",
        "complaint",
        "suppressed",
      ],
      batchSize: 500,
      timeoutMs: 3000,
      maxRetryDelayMs: 300_000,
      tlsVerify: true,
    });
  });

  test("every mistake is reported with its line", () => {
    const problems = problemsOf(
      [
        "bounces:",
        "  domain: bounce.example.com",
        "  rules_files: [/nonexistent/rules.txt]",
        "suppression:",
        "  answer: bounce",
        "  auto: { bad-mailbx: never, quota-issues: soon }",
        "listen:",
        "  - { address: 127.0.0.1:25, role: bounce }",
        "webhooks:",
        "  - { name: a, url: http://hooks.example.com/x, secret: short }",
        "  - { name: a, url: ftp://x, secret: 0123456789abcdef, events: [deliveries] }",
      ].join("\n"),
    );
    expect(problems).toEqual([
      expect.stringMatching(/^5: suppression\.answer: expected refuse or record, got "bounce"$/),
      expect.stringMatching(/^6: suppression\.auto\.bad-mailbx: .*expected a bounce class/),
      expect.stringMatching(/^6: suppression\.auto\.quota-issues: expected "never" or a duration/),
      expect.stringMatching(/^8: listen\[0\]\.role: expected relay or bounces, got "bounce"$/),
      expect.stringMatching(/^10: webhooks\[0\]\.url: http:\/\/ is only allowed to a loopback address/),
      expect.stringMatching(/^10: webhooks\[0\]\.secret: expected a secret of at least 16 characters/),
      expect.stringMatching(/^11: webhooks\[1\]\.url: expected an https:\/\/ URL/),
      expect.stringMatching(/^11: webhooks\[1\]\.events\[0\]: expected an event type/),
    ]);
    // Cross-field checks come once the schema holds.
    expect(
      problemsOf(
        "bounces: { domain: bounce.example.com }\nlisten: [{ address: 127.0.0.1:25, role: bounces }]\n",
      ),
    ).toEqual([expect.stringMatching(/bounces\.domain: a bounce domain needs bounces\.secret/)]);
    expect(problemsOf("listen: [{ address: 127.0.0.1:25, role: bounces }]\n")).toEqual([
      expect.stringMatching(/listen\[0\]\.role: a bounces listener needs bounces\.domain/),
    ]);
    expect(
      problemsOf(
        "log: { deliveries: '' }\nwebhooks: [{ name: a, url: 'http://127.0.0.1:1/', secret: 0123456789abcdef }]\n",
      ),
    ).toEqual([expect.stringMatching(/webhooks: webhooks read the delivery log/)]);
  });
});
