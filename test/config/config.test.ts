import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ConfigError, findConfigPath, loadConfig, parseConfigText } from "../../src/config/index.ts";
import { ConfigSchema } from "../../src/config/schema.ts";

const EXAMPLE = resolve(import.meta.dir, "../../mta.example.yaml");

function problemsOf(text: string) {
  try {
    parseConfigText(text, "/tmp/test.yaml");
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

/** Every key name the schema knows (the last name of every path schemaPaths finds). */
function schemaKeys(schema: unknown): Set<string> {
  return new Set(
    schemaPaths(schema)
      .map((p) => p[p.length - 1])
      .filter((k): k is string => typeof k === "string" && k !== "example.test"),
  );
}

describe("configuration", () => {
  test("mta.example.yaml loads and documents every key the schema knows", () => {
    const { config } = loadConfig(EXAMPLE);
    expect(config.listen[0]!.address).toEqual({ host: "127.0.0.1", port: 2525 });
    expect(config.delivery.retryMs).toEqual([300_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000]);
    const text = readFileSync(EXAMPLE, "utf8");
    const missing = [...schemaKeys(ConfigSchema)].filter(
      (k) => !new RegExp(`^\\s*#?\\s*(- )?${k}:`, "m").test(text),
    );
    expect(missing).toEqual([]);
  });

  test("an empty file gives every default", () => {
    const { config } = parseConfigText("", "/etc/mta/mta.yaml");
    expect(config.spool.dir).toBe("/etc/mta/spool");
    expect(config.spool.segmentSizeBytes).toBe(64 * 1024 * 1024);
    expect(config.listen).toHaveLength(1);
    expect(config.delivery.maxAgeMs).toBe(5 * 86_400_000);
    expect(config.delivery.domains.default.maxConnections).toBe(20);
    expect(config.control.address).toEqual({ host: "127.0.0.1", port: 8025 });
  });

  test("three different mistakes are all reported with YAML path and line", () => {
    const problems = problemsOf(
      [
        "delivery:",
        "  max_age: 5x",
        "spool:",
        "  dirr: /tmp",
        "listen:",
        "  - address: 127.0.0.1:25",
        "    relay_from: [10.0.0.0/33]",
      ].join("\n"),
    );
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatchObject({ path: "delivery.max_age", line: 2, column: 12 });
    expect(problems[1]).toMatchObject({ path: "spool.dirr", line: 4, column: 3 });
    expect(problems[1]!.message).toContain('did you mean "dir"');
    expect(problems[2]).toMatchObject({ path: "listen[0].relay_from[0]", line: 7 });
    expect(problems[2]!.message).toContain("CIDR");
  });

  test("typed values: sizes, rates, durations and routes", () => {
    const { config } = parseConfigText(
      [
        "listen: [{ address: '[::1]:2525', max_message_size: 10MB }]",
        "delivery:",
        "  routes: { example.net: 127.0.0.1:2600, '*': { hosts: [smart.example.com], tls: required } }",
        "  domains: { gmail.com: { message_rate: 5000/h, max_connections: 5 } }",
      ].join("\n"),
      "/x/mta.yaml",
    );
    expect(config.listen[0]!.maxMessageBytes).toBe(10_000_000);
    expect(config.listen[0]!.address.host).toBe("::1");
    expect(config.delivery.routes["example.net"]!.hosts).toEqual([{ host: "127.0.0.1", port: 2600 }]);
    expect(config.delivery.routes["*"]).toEqual({
      hosts: [{ host: "smart.example.com", port: 25 }],
      tls: "required",
    });
    expect(config.delivery.domains["gmail.com"]!.messageRate).toMatchObject({
      count: 5000,
      perMs: 3_600_000,
    });
    expect(config.delivery.domains.default.maxConnections).toBe(20);
  });

  test("YAML syntax errors and plain passwords are reported; the files named are not read here", () => {
    expect(problemsOf("listen: [\n")[0]!.line).toBeGreaterThan(0);
    const p = problemsOf(
      "listen:\n  - address: 127.0.0.1:25\n    auth: required\n    users: { bob: hunter2 }\n    tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }\n",
    );
    // TLS files are checked by serve and check-config (app/preflight.ts), not by every command that
    // loads the file: `mta send` run by any user must be able to load it.
    expect(p.map((x) => x.path)).toEqual(["listen[0].users.bob"]);
  });

  test("the config file is found via --config, MTA_CONFIG, then the search path", () => {
    expect(findConfigPath("/a/b.yaml", {})).toBe("/a/b.yaml");
    expect(findConfigPath(undefined, { MTA_CONFIG: "/c/d.yaml" })).toBe("/c/d.yaml");
  });
});

/** Every key path of the schema (arrays at index 0, records under "example.test"), for wrong-type probes. */
function schemaPaths(schema: unknown, path: (string | number)[] = [], out: (string | number)[][] = []) {
  const s = schema as {
    type?: string;
    entries?: Record<string, unknown>;
    wrapped?: unknown;
    item?: unknown;
    value?: unknown;
    options?: unknown[];
    pipe?: unknown[];
  };
  if (!s || typeof s !== "object") return out;
  if (s.wrapped) return schemaPaths(s.wrapped, path, out);
  if (s.pipe) return schemaPaths(s.pipe[0], path, out);
  if (s.entries)
    for (const [k, v] of Object.entries(s.entries)) {
      out.push([...path, k]);
      schemaPaths(v, [...path, k], out);
    }
  if (s.item) schemaPaths(s.item, [...path, 0], out);
  if (s.value) schemaPaths(s.value, [...path, "example.test"], out);
  if (s.options) for (const o of s.options) schemaPaths(o, path, out);
  return out;
}

function withValue(path: (string | number)[], value: unknown): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  let cur: Record<string | number, unknown> = root;
  path.forEach((k, i) => {
    if (i === path.length - 1) {
      cur[k] = value;
      return;
    }
    const next = typeof path[i + 1] === "number" ? [] : {};
    if (cur[k] === undefined) cur[k] = next;
    cur = cur[k] as Record<string | number, unknown>;
  });
  return root;
}

test("a wrong type at any key is told in our words, never the validation library's", () => {
  const paths = schemaPaths(ConfigSchema);
  expect(paths.length).toBeGreaterThan(80);
  const messages = new Set<string>();
  for (const path of paths)
    for (const bad of [[["x"]], { x: 1 }, "not-valid value", -1]) {
      let problems: { path: string; message: string }[] = [];
      try {
        parseConfigText(JSON.stringify(withValue(path, bad)), "/tmp/t.yaml");
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        problems = err.problems;
      }
      for (const p of problems) {
        messages.add(p.message);
        expect({ at: path.join("."), bad, message: p.message }).toEqual({
          at: path.join("."),
          bad,
          message: expect.stringMatching(
            /^(expected |missing|unknown key |the same address|auth is |delivery\.)/,
          ),
        });
        expect(p.message).not.toMatch(/Expected|received|Invalid|unknown \||\(unknown/);
      }
    }
  expect(messages.size).toBeGreaterThan(30);
});
