/** The bench's outputs: a terminal table shaped like the seeds' table, Markdown, and an SVG chart. */
import { formatBytes } from '../core/util.js';
import { label } from './rows.js';
import type { BenchReport, BenchRow } from './bench.js';

const COLS = ['#', 'row', 'create-ms', 'close-ms', 'I/O-ms', 'I/O-MB/s', 'I/O%', 'CPU-ms', 'page cache', 'verified'] as const;

function cells(r: BenchRow, i: number, size: number): string[] {
  const n = (x: number) => x.toFixed(x >= 100 ? 0 : 1);
  if (!r.supported) return [String(i + 1), label(r), '-', '-', '-', '-', '-', '-', '-', `unsupported: ${r.reason ?? ''}`];
  return [
    String(i + 1),
    // What io 'auto' chose, when it is not what the row says.
    r.ioUsed && r.ioUsed !== r.io ? `${label(r)} (${r.ioUsed})` : label(r),
    n(r.createMs),
    n(r.closeMs),
    `${n(r.ioMs)} (${n(r.min.ioMs)}–${n(r.max.ioMs)})`,
    String(r.mbps),
    r.pct === null ? '-' : `${r.pct}%`,
    n(r.cpuMs),
    pctOf(r.pageCacheBytes, size),
    r.verified === null ? 'n/a' : r.verified ? 'yes' : 'NO',
  ];
}

function header(rep: BenchReport): string {
  return `${formatBytes(rep.size)} ${rep.cache} file, median of ${rep.rounds} round${rep.rounds === 1 ? '' : 's'} (min–max); ${rep.machine.kernel}, ${rep.machine.cpus} CPUs, ${formatBytes(rep.machine.memory)}, ${rep.machine.fs}, Node ${rep.machine.node}`;
}

/**
 * Rows for display: a target the kernel lacks is one line, not one per method (JSON keeps every row).
 */
function displayRows(rep: BenchReport): string[][] {
  const missing = new Set(
    [...new Set(rep.rows.map((r) => r.target))].filter((t) => {
      const rs = rep.rows.filter((r) => r.target === t && r.method !== 'fio' && r.method !== 'node-readFile');
      return rs.length > 1 && rs.every((r) => !r.supported && r.reason === rs[0]!.reason);
    }),
  );
  const out: string[][] = [];
  rep.rows.forEach((r, i) => {
    if (missing.has(r.target) && r.method !== 'fio' && r.method !== 'node-readFile') {
      if (rep.rows[i - 1]?.target === r.target) return;
      const c = cells(r, i, rep.size);
      c[1] = `${r.target} (every method)`;
      out.push(c);
      return;
    }
    out.push(cells(r, i, rep.size));
  });
  return out;
}

const x = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
/** A share of the file, or 'unknown' where this user cannot see the page cache (a file it may not write). */
export const pctOf = (bytes: number | null, size: number) => (bytes === null ? 'unknown' : `${((100 * bytes) / size).toFixed(1)}%`);

/** What the I/O% column is, under every table. */
export const IO_PCT_LEGEND =
  "I/O%: a row's I/O-MB/s as a percentage of the buffered read row of the same target (100% = as fast as read(2) through the page cache)";

/** How the summary names fio: what it ran, a reference rather than a ceiling (a load can pass it). */
const FIO = 'O_DIRECT, io_uring, 4 MiB × 32 in flight';

/**
 * The answer first: dmaload's fastest row on fresh memory against fio (a direct reader's speed on this device) and Node's readFile
 * (speed, CPU, page cache left), and the reload into existing memory; ratios within this one run.
 */
export function summary(rep: BenchReport): string[] {
  const { best, leanest, fio, readFile, reload, notCold } = rep.summary;
  const out: string[] = [];
  if (!best) return [`dmaload: no supported row in this run`];
  const used = best.ioUsed && best.ioUsed !== best.io ? ` (${best.ioUsed})` : '';
  out.push(
    `dmaload's best: ${label(best)}${used}: ${best.mbps} MB/s, CPU ${best.cpuMs.toFixed(0)} ms, page cache left ${pctOf(best.pageCacheBytes, rep.size)}`,
  );
  out.push(fio ? `  vs fio (${FIO}: ${fio.mbps} MB/s): ${x(best.mbps, fio.mbps)} fio's speed` : '  vs fio: not measured (fio missing or not in --methods)');
  out.push(
    readFile
      ? `  vs Node's readFile (${readFile.mbps} MB/s, CPU ${readFile.cpuMs.toFixed(0)} ms, page cache left ${pctOf(readFile.pageCacheBytes, rep.size)}): ${x(best.mbps, readFile.mbps)} its speed, ${x(best.cpuMs, readFile.cpuMs)} its CPU`
      : `  vs Node's readFile: not measured${rep.size > 2 ** 31 - 1 ? ' (readFile refuses files over 2 GiB)' : ''}`,
  );
  if (leanest && leanest !== best && leanest.cpuMs < best.cpuMs) {
    out.push(
      `dmaload's least CPU on fresh memory: ${label(leanest)}: ${leanest.cpuMs.toFixed(0)} ms${readFile ? `, ${x(leanest.cpuMs, readFile.cpuMs)} readFile's` : ''}, ${leanest.mbps} MB/s`,
    );
  }
  if (reload) {
    const parts = [
      `${reload.mbps} MB/s`,
      fio ? `${x(reload.mbps, fio.mbps)} fio's speed` : undefined,
      `CPU ${reload.cpuMs.toFixed(0)} ms`,
      readFile ? `${x(reload.cpuMs, readFile.cpuMs)} readFile's CPU` : undefined,
    ];
    out.push(`reload into memory already faulted in (${label(reload)}): ${parts.filter(Boolean).join(', ')}`);
  }
  const v = rep.rows.find((r) => r.hashMs !== undefined && r.supported);
  if (v && rep.hashAlone) {
    const inLoad = rep.size / v.hashMs! / 1e6;
    const starved = inLoad < 0.6 * rep.hashAlone.gbps;
    out.push(
      `hash inside the verified load: ${inLoad.toFixed(2)} GB/s (${v.hashMs!.toFixed(0)} ms); this machine's SHA-256 alone (${rep.hashAlone.impl}): ${rep.hashAlone.gbps.toFixed(2)} GB/s` +
        (starved ? ' — under 0.6× of it: the load and the hash competed for CPUs' : ''),
    );
  }
  if (notCold.length) out.push(`warning: cold rounds of ${notCold.join(', ')} started with pages of the file still cached (mapped or locked by a process)`);
  return out;
}

/** A fixed-width table for a terminal. */
export function table(rep: BenchReport): string {
  const rows = displayRows(rep);
  const w = COLS.map((c, j) => Math.max(c.length, ...rows.filter((r) => !r[9]!.startsWith('unsupported') || j < 2).map((r) => r[j]!.length)));
  const line = (cs: readonly string[]) => {
    if (cs[9]!.startsWith('unsupported')) return `${cs[0]!.padStart(w[0]!)}  ${cs[1]!.padEnd(w[1]!)}  ${cs[9]}`;
    return cs.map((c, j) => (j === 1 ? c.padEnd(w[j]!) : c.padStart(w[j]!))).join('  ');
  };
  const sum = summary(rep);
  return [header(rep), ...sum, '', line(COLS), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line), IO_PCT_LEGEND, '', ...sum].join('\n') + '\n';
}

/** A Markdown table. */
export function markdown(rep: BenchReport): string {
  const rows = displayRows(rep);
  const sum = summary(rep).map((l) => `    ${l}`);
  return (
    [
      `${header(rep)}\n`,
      ...sum,
      '',
      `| ${COLS.join(' | ')} |`,
      `|${COLS.map((_, j) => (j === 1 ? ' --- ' : ' ---: ')).join('|')}|`,
      ...rows.map((r) => `| ${r.join(' | ')} |`),
      '',
      IO_PCT_LEGEND,
      '',
      ...sum,
    ].join('\n') + '\n'
  );
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A horizontal bar chart: MB/s per row (CPU ms as a thin bar under it), fio's speed as a dashed line. */
export function svg(rep: BenchReport): string {
  const rows = rep.rows.filter((r) => r.supported);
  const labelW = 260;
  const chartW = 560;
  const rowH = 30;
  const top = 56;
  const h = top + rows.length * rowH + 40;
  const maxMb = Math.max(1, ...rows.map((r) => r.max.mbps));
  const maxCpu = Math.max(1, ...rows.map((r) => r.cpuMs));
  const x = (mb: number) => labelW + (chartW * mb) / maxMb;
  const fio = rows.find((r) => r.method === 'fio');
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + chartW + 200}" height="${h}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="10" y="20" font-size="14" font-weight="bold">${esc(`dmaload bench: ${formatBytes(rep.size)}, ${rep.cache} cache`)}</text>`);
  out.push(
    `<text x="10" y="38" fill="#555">${esc(`${rep.machine.kernel}, ${rep.machine.fs}. Bars: MB/s (median, whisker min–max); thin bar: CPU ms (max ${maxCpu.toFixed(0)})`)}</text>`,
  );
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const ours = r.method === 'dmaload';
    out.push(`<text x="${labelW - 8}" y="${y + 14}" text-anchor="end"${ours ? ' font-weight="bold"' : ''}>${esc(label(r))}</text>`);
    out.push(
      `<rect x="${labelW}" y="${y + 2}" width="${(x(r.mbps) - labelW).toFixed(1)}" height="14" fill="${ours ? '#1f77b4' : r.method === 'fio' ? '#888' : '#9ecae1'}"/>`,
    );
    out.push(`<line x1="${x(r.min.mbps).toFixed(1)}" x2="${x(r.max.mbps).toFixed(1)}" y1="${y + 9}" y2="${y + 9}" stroke="#333"/>`);
    out.push(`<rect x="${labelW}" y="${y + 19}" width="${((chartW * r.cpuMs) / maxCpu).toFixed(1)}" height="4" fill="#d62728"/>`);
    out.push(`<text x="${(x(r.max.mbps) + 6).toFixed(1)}" y="${y + 14}">${r.mbps} MB/s · ${r.cpuMs.toFixed(0)} ms CPU</text>`);
  });
  if (fio) {
    const fx = x(fio.mbps).toFixed(1);
    out.push(`<line x1="${fx}" x2="${fx}" y1="${top - 6}" y2="${top + rows.length * rowH}" stroke="#444" stroke-dasharray="4 3"/>`);
    out.push(`<text x="${fx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#444">fio ${fio.mbps} MB/s</text>`);
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
