/**
 * The state this module keeps in the spool directory (`<spool>/tls/`): small JSON files, each replaced
 * whole.
 *
 * Owns: `writeJsonAtomic` (temp file, fsync, rename, fsync of the directory: a crash leaves the old
 * file or the new one, never a torn one), `readJsonFiles`, the directory and file modes.
 * Invariants: directories 0700, files 0600 (policies and report counts name the domains mail goes to);
 * a temp file left by a crash (`.tmp-` prefix) is removed at the next read, never read as state.
 */
import fs from "node:fs";
import { join } from "node:path";

export function ensureDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
}

export function writeJsonAtomic(dir: string, name: string, value: unknown): void {
  const tmp = join(dir, `.tmp-${name}-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const fd = fs.openSync(tmp, "w", 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(value)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, join(dir, name));
  syncDir(dir);
}

export function removeFile(dir: string, name: string): void {
  try {
    fs.unlinkSync(join(dir, name));
    syncDir(dir);
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") throw err;
  }
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Every `*.json` file of `dir` parsed, with the names of those that could not be read or parsed. */
export function readJsonFiles(dir: string): { files: { name: string; value: unknown }[]; bad: string[] } {
  const files: { name: string; value: unknown }[] = [];
  const bad: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return { files, bad };
    throw err;
  }
  for (const name of names.sort()) {
    if (name.startsWith(".tmp-")) {
      fs.rmSync(join(dir, name), { force: true });
      continue;
    }
    if (!name.endsWith(".json")) continue;
    try {
      files.push({ name, value: JSON.parse(fs.readFileSync(join(dir, name), "utf8")) });
    } catch {
      bad.push(name);
    }
  }
  return { files, bad };
}

/** A file name for a domain: the domain itself when it is a plain LDH name, else percent-encoded. */
export function domainFileName(domain: string): string {
  return `${/^[a-z0-9.-]+$/.test(domain) && !domain.startsWith(".") ? domain : encodeURIComponent(domain)}.json`;
}
