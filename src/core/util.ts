/** Small shared helpers: sizes, alignment, option parsing with environment defaults, memory facts. */
import { readFileSync } from 'node:fs';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export function roundUp(n: number, to: number): number {
  return to > 1 ? Math.ceil(n / to) * to : n;
}

/**
 * The units a size may be written with, in any case: every one a power of 1024, whatever its spelling (1M = 1MB =
 * 1MiB = 1048576 bytes, as the CLI's docs say), since the sizes dmaload takes are of memory and must often be whole
 * pages; a decimal 32 MB (32 000 000 bytes) is not a whole number of them.
 */
const UNITS: Record<string, number> = { '': 1, b: 1 };
for (const [letter, bytes] of [
  ['k', KiB],
  ['m', MiB],
  ['g', GiB],
  ['t', TiB],
] as const) {
  for (const suffix of ['', 'b', 'ib']) UNITS[letter + suffix] = bytes;
}
const SIZE = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/;

/**
 * Parses `4096`, `4k`, `4KB`, `32MiB`, `32mb`, `1.5GiB`, `1T` into a byte count: B, K, M, G or T, alone or followed
 * by B or iB, in any case, each a power of 1024; undefined when it is not a size ({@link sizeError} says why).
 */
export function parseSize(s: string): number | undefined {
  const m = SIZE.exec(s);
  if (!m) return undefined;
  const unit = UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  const n = Math.round(Number(m[1]) * unit);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** The spellings parseSize takes, for a message. */
export const SIZE_UNITS_TEXT = 'B, K, M, G or T, alone or followed by B or iB, in any case, each a power of 1024: 1M = 1MB = 1MiB';

/** Why `s` is not a size (the unit not understood, or the whole of it), or undefined when parseSize takes it. */
export function sizeError(s: string): string | undefined {
  const m = SIZE.exec(s);
  if (!m) return `'${s}' is not a size: write a number and a unit such as 32MiB; the units are ${SIZE_UNITS_TEXT}`;
  if (UNITS[(m[2] ?? '').toLowerCase()] === undefined) return `unknown unit '${m[2]}' in '${s.trim()}'; the units are ${SIZE_UNITS_TEXT}`;
  if (parseSize(s) === undefined) return `'${s}' is too large a size`;
  return undefined;
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
