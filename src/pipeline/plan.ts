/**
 * Planning a transfer, pure arithmetic: where each requested file range lands in the buffer (place), which part of
 * a plan falls in one allocation part (clip), and which ranges to copy from the page cache instead of reading them
 * directly (splitByResidency).
 */
import { PAGE_SIZE } from '../engine/binding.js';
import { roundUp } from '../core/util.js';

/** A byte range of a file. */
export interface FileRange {
  offset: number;
  length: number;
}

/** Where a load's bytes go. */
export interface Placement {
  /** Flat [fileOffset, bufOffset, length, …] for the engine, in buffer order. */
  segments: number[];
  /** For each requested range, the buffer offset of its first byte. */
  offsets: number[];
  /** Bytes the buffer must hold (whole blocks, whole pages). */
  capacity: number;
  /** Bytes the segments add up to. */
  bytesRead: number;
}

/** Where each range goes: segments for the engine, and the buffer offset of each range's first byte. */
export function place(ranges: readonly FileRange[], size: number, block: number): Placement {
  const segs: Array<{ file: number; buf: number; len: number }> = [];
  const offsets: number[] = [];
  let cursor = 0;
  for (const r of ranges) {
    const from = Math.floor(r.offset / block) * block;
    const to = Math.min(roundUp(r.offset + r.length, block), size);
    const prev = segs.at(-1);
    if (prev && from < prev.file + roundUp(prev.len, block)) {
      // Neighbours sharing a block: grow the previous segment rather than read the block twice.
      prev.len = Math.max(prev.len, to - prev.file);
    } else {
      segs.push({ file: from, buf: roundUp(cursor, PAGE_SIZE), len: to - from });
    }
    const seg = segs.at(-1)!;
    offsets.push(seg.buf + (r.offset - seg.file));
    cursor = seg.buf + roundUp(seg.len, block);
  }
  return {
    segments: segs.flatMap((g) => [g.file, g.buf, g.len]),
    offsets,
    capacity: roundUp(cursor, PAGE_SIZE),
    bytesRead: segs.reduce((n, g) => n + g.len, 0),
  };
}

/**
 * The shortest run of cached pages worth copying instead of reading directly: below it, the extra request costs
 * more than reading a few cached pages from the device again.
 */
export const COPY_MIN_RUN = 1024 * 1024;

/**
 * Splits segments (flat [file, buf, len]…) into those to read directly and those to copy from the page cache,
 * by the residency of their pages. Boundaries fall on page edges, which keeps direct reads aligned.
 */
export function splitByResidency(segments: number[], pages: Uint8Array, minRun: number): [direct: number[], copy: number[]] {
  const direct: number[] = [];
  const copy: number[] = [];
  const minPages = Math.max(1, Math.floor(minRun / PAGE_SIZE));
  const push = (to: number[], f: number, b: number, n: number) => {
    const l = to.length;
    // Merge with the previous run when it ends exactly where this one starts, in the file and in the buffer.
    if (l >= 3 && to[l - 3]! + to[l - 1]! === f && to[l - 2]! + to[l - 1]! === b) to[l - 1]! += n;
    else to.push(f, b, n);
  };
  for (let i = 0; i < segments.length; i += 3) {
    const [f, b, n] = [segments[i]!, segments[i + 1]!, segments[i + 2]!];
    let pos = f;
    while (pos < f + n) {
      const p0 = Math.floor(pos / PAGE_SIZE);
      const res = pages[p0] === 1;
      let p = p0;
      while (p * PAGE_SIZE < f + n && (pages[p] === 1) === res) p++;
      const end = Math.min(p * PAGE_SIZE, f + n);
      const cached = res && p - p0 >= minPages;
      push(cached ? copy : direct, pos, b + (pos - f), end - pos);
      pos = end;
    }
  }
  return [direct, copy];
}

/** Total length of time intervals, overlaps counted once: the wall time during which some read was running. */
export function unionMs(intervals: Array<[number, number]>): number {
  let total = 0;
  let end = -Infinity;
  for (const [a, b] of [...intervals].sort((x, y) => x[0] - y[0])) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}

/** The parts of `segments` (flat [file, buf, len]…) that fall in buffer range [lo, hi), cut at its edges. */
export function clip(segments: number[], lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < segments.length; i += 3) {
    const [f, b, n] = [segments[i]!, segments[i + 1]!, segments[i + 2]!];
    const from = Math.max(b, lo);
    const to = Math.min(b + n, hi);
    if (to > from) out.push(f + (from - b), from, to - from);
  }
  return out;
}
