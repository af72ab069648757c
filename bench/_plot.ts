/**
 * A small hand-written SVG line chart for the benchmark report (docs/bench-*.svg): one or more series of
 * (x, y) points, linear or log-10 x axis, y from 0, axis ticks and a legend. No dependency.
 * Owns: turning numbers into an SVG string. Does not own: measuring or writing files.
 */

export interface Series {
  name: string;
  color: string;
  points: { x: number; y: number; label?: string }[];
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  logX?: boolean;
  series: Series[];
  note?: string;
}

const W = 720;
const H = 420;
const M = { left: 80, right: 170, top: 48, bottom: 70 };

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function short(n: number): string {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return String(+n.toFixed(1));
}

/** Renders the chart. Points with a non-finite y are left out; on a log axis x = 0 is drawn at the left edge. */
export function lineChartSvg(c: LineChart): string {
  const pts = c.series.flatMap((s) => s.points.filter((p) => Number.isFinite(p.y)));
  const yMax = Math.max(1, ...pts.map((p) => p.y)) * 1.1;
  const yStep = niceStep(yMax, 5);
  const yTop = Math.ceil(yMax / yStep) * yStep;
  const xs = pts.map((p) => p.x);
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  let xPos: (x: number) => number;
  let xTicks: number[];
  if (c.logX) {
    const pos = xs.filter((x) => x > 0);
    const lo = Math.floor(Math.log10(Math.min(...pos, 10)));
    const hi = Math.ceil(Math.log10(Math.max(...pos, 10)));
    const hasZero = xs.some((x) => x <= 0);
    const lo2 = hasZero ? lo - 1 : lo;
    xPos = (x) => M.left + (((x <= 0 ? lo2 : Math.log10(x)) - lo2) / Math.max(1, hi - lo2)) * pw;
    xTicks = [...(hasZero ? [0] : []), ...Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i))];
  } else {
    const xMax = Math.max(1, ...xs);
    const step = niceStep(xMax, 6);
    const top = Math.ceil(xMax / step) * step;
    xPos = (x) => M.left + (x / top) * pw;
    xTicks = Array.from({ length: Math.round(top / step) + 1 }, (_, i) => i * step);
  }
  const yPos = (y: number) => M.top + ph - (y / yTop) * ph;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - M.right / 2 + M.left / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(c.title)}</text>`,
  ];
  for (let y = 0; y <= yTop + 1e-9; y += yStep) {
    const py = yPos(y);
    out.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${py}" y2="${py}" stroke="#ddd"/>`);
    out.push(`<text x="${M.left - 6}" y="${py + 4}" text-anchor="end">${short(y)}</text>`);
  }
  for (const x of xTicks) {
    const px = xPos(x);
    out.push(`<line x1="${px}" x2="${px}" y1="${M.top + ph}" y2="${M.top + ph + 5}" stroke="#333"/>`);
    out.push(`<text x="${px}" y="${M.top + ph + 18}" text-anchor="middle">${short(x)}</text>`);
  }
  out.push(
    `<line x1="${M.left}" x2="${M.left + pw}" y1="${M.top + ph}" y2="${M.top + ph}" stroke="#333"/>`,
    `<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${M.top + ph}" stroke="#333"/>`,
    `<text x="${M.left + pw / 2}" y="${H - 36}" text-anchor="middle">${esc(c.xLabel)}</text>`,
    `<text transform="translate(18 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`,
  );
  if (c.note) out.push(`<text x="${M.left}" y="${H - 12}" font-size="10" fill="#555">${esc(c.note)}</text>`);
  c.series.forEach((s, i) => {
    const ps = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (ps.length) {
      const d = ps.map((p, k) => `${k ? "L" : "M"}${xPos(p.x).toFixed(1)} ${yPos(p.y).toFixed(1)}`).join(" ");
      out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
      for (const p of ps)
        out.push(
          `<circle cx="${xPos(p.x).toFixed(1)}" cy="${yPos(p.y).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(`${s.name}: ${short(p.x)} → ${Math.round(p.y)}${p.label ? ` (${p.label})` : ""}`)}</title></circle>`,
        );
    }
    const ly = M.top + 10 + i * 20;
    out.push(
      `<line x1="${W - M.right + 14}" x2="${W - M.right + 38}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`,
      `<text x="${W - M.right + 44}" y="${ly + 4}">${esc(s.name)}</text>`,
    );
  });
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}
