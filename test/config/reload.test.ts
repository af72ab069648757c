/**
 * config/'s reload table against the schema: every key is classified live or restart (a new key
 * without an entry fails here), no entry names a key that does not exist, and `restartNeeded`
 * compares against what runs.
 */
import { expect, test } from "bun:test";
import type * as v from "valibot";
import { parseConfigText, RELOAD, reloadClassOf, restartNeeded } from "../../src/config/index.ts";
import { ConfigSchema } from "../../src/config/schema.ts";

type Node = {
  type: string;
  entries?: Record<string, v.GenericSchema>;
  wrapped?: v.GenericSchema;
  pipe?: unknown[];
};

function unwrap(s: v.GenericSchema): Node {
  let n = s as unknown as Node;
  while (n.wrapped) n = n.wrapped as unknown as Node;
  return n;
}

/** Every key path of the schema's objects (records and lists are leaves: their keys are the user's). */
function keyPaths(s: v.GenericSchema, prefix = ""): string[] {
  const n = unwrap(s);
  if ((n.type !== "strict_object" && n.type !== "object") || !n.entries) return [];
  const out: string[] = [];
  for (const [k, child] of Object.entries(n.entries)) {
    const path = prefix ? `${prefix}.${k}` : k;
    out.push(path, ...keyPaths(child, path));
  }
  return out;
}

test("every configuration key is classified live or restart, and every entry names a real key", () => {
  const paths = keyPaths(ConfigSchema as unknown as v.GenericSchema);
  expect(paths.length).toBeGreaterThan(50);
  // A key is covered by its own entry or its section's; a section may be split into its keys instead.
  const leaves = paths.filter((p) => !paths.some((q) => q.startsWith(`${p}.`)));
  const unclassified = leaves.filter((p) => reloadClassOf(p) === undefined);
  expect(unclassified).toEqual([]);
  const unknown = Object.keys(RELOAD).filter((k) => !paths.includes(k));
  expect(unknown).toEqual([]);
});

test("restartNeeded names the restart keys that differ from the running file, not live ones", () => {
  const base = "listen: [{ address: 127.0.0.1:2525 }]\ndelivery: { retry: [5m] }\n";
  const { raw: running } = parseConfigText(base, "/x/mta.yaml");
  const changed = parseConfigText(
    "listen: [{ address: 127.0.0.1:2600 }]\ndelivery: { retry: [7s], idle_timeout: 9s }\nlog: { level: debug, format: json }\n",
    "/x/mta.yaml",
  ).raw;
  expect(restartNeeded(running, changed)).toEqual(["listen", "delivery.idle_timeout", "log.format"]);
  expect(restartNeeded(running, parseConfigText(base, "/x/mta.yaml").raw)).toEqual([]);
});
