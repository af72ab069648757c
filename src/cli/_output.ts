/**
 * Plain-text output shared by the commands: a line to standard output, pretty JSON, tables, short ages.
 *
 * Owns: how a human table looks (left-aligned text, right-aligned numbers, two spaces between columns,
 * no trailing blanks) and how an age is shortened ("3h12m").
 * Does not own: what a command prints (each command's file), error lines (_run.ts).
 */

/** Writes `text` and a newline (unless it already ends with one). */
export function print(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

/** The answer as the control API sends it, indented. */
export function printJson(v: unknown): void {
  print(JSON.stringify(v, null, 2));
}

/** "3h12m", "45s", "2d4h": short ages for tables. */
export function shortAge(msValue: number): string {
  const s = Math.max(0, Math.round(msValue / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${s % 60 ? `${s % 60}s` : ""}`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${m % 60 ? `${m % 60}m` : ""}`;
  const d = Math.floor(h / 24);
  return `${d}d${h % 24 ? `${h % 24}h` : ""}`;
}

/** A plain table: left-aligned text, right-aligned numbers. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === "number"));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
