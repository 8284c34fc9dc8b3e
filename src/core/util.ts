/** Small shared helpers: sizes, alignment, option parsing with environment defaults, memory facts. */
import { readFileSync } from 'node:fs';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export function roundUp(n: number, to: number): number {
  return to > 1 ? Math.ceil(n / to) * to : n;
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: KiB,
  kb: 1e3,
  kib: KiB,
  m: MiB,
  mb: 1e6,
  mib: MiB,
  g: GiB,
  gb: 1e9,
  gib: GiB,
  t: GiB * KiB,
  tb: 1e12,
  tib: GiB * KiB,
};

/** Parses `4096`, `4KiB`, `32MiB`, `1.5GB`, `1g` into a byte count; undefined when it is not a size. */
export function parseSize(s: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(s);
  if (!m) return undefined;
  const unit = UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  const n = Math.round(Number(m[1]) * unit);
  return Number.isSafeInteger(n) ? n : undefined;
}

export function formatBytes(n: number): string {
  if (n < KiB) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / KiB;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** MemAvailable from /proc/meminfo, in bytes. */
export function memAvailable(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * KiB : Number.MAX_SAFE_INTEGER;
}

/** Wall-clock milliseconds since `t0` (from performance.now()), rounded to 0.01 ms. */
export function msSince(t0: number): number {
  return Math.round((performance.now() - t0) * 100) / 100;
}

/** CPU milliseconds (user + system, every thread of the process) since `c0` (from process.cpuUsage()). */
export function cpuMsSince(c0: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(c0);
  return Math.round((d.user + d.system) / 10) / 100;
}

/**
 * `s` with the characters that can forge or disguise text written as escapes, for printing strings that come from a
 * file or a client (a tensor name, a path in a log line): C0, DEL and C1 controls as `\xHH` (raw, ESC or CSI sequences
 * would clear the screen or recolor the terminal), and the line and paragraph separators and bidirectional controls
 * (U+061C, U+200E-F, U+2028-E, U+2066-9) as `\u{HHHH}` (they break a log line or reorder what it shows). `keep` lists
 * the ones to leave as they are (the line breaks of a message).
 */
export function printable(s: string, keep = ''): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what this escapes
  return s.replace(/[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g, (c) => {
    if (keep.includes(c)) return c;
    const n = c.charCodeAt(0);
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u{${n.toString(16)}}`;
  });
}
