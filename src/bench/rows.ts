/**
 * The rows a bench run measures: the default rows, the hugetlb and verification rows, the full matrix of method ×
 * target × io (planRows), and each row's label. bench.ts runs them.
 * @module
 */
import type { TargetName } from '../targets/index.js';
import { formatBytes } from '../core/util.js';
import { defaultPool } from '../engine/hugetlb.js';
import type { Method, RowIo, RowSpec } from './methods.js';

export const DEFAULT_TARGETS: TargetName[] = ['memory', 'memfd', 'udmabuf', 'dma-heap'];

const IOS: Record<Method, RowIo[]> = {
  read: ['buffered', 'direct', 'uncached'],
  'read-write': ['buffered', 'direct'],
  sendfile: ['buffered', 'direct'],
  splice: ['buffered', 'direct'],
  copy_file_range: ['buffered', 'direct'],
  dmaload: ['direct', 'buffered', 'uncached', 'auto'],
  'dmaload-reload': ['auto'],
  'node-readFile': ['buffered'],
  fio: ['direct'],
};

/**
 * The default run: the rows that answer whether dmaload beats its peers, beside the peers (each reads the file once
 * per round: the run's time is rows × rounds × the file at the disk's speed).
 * `--all` (or a --methods list) gives the full matrix.
 */
export const DEFAULT_ROWS: readonly RowSpec[] = [
  { method: 'read', target: 'memory', io: 'buffered' },
  { method: 'read', target: 'memory', io: 'direct' },
  { method: 'dmaload', target: 'memory', io: 'auto' },
  { method: 'dmaload', target: 'memory', io: 'direct' },
  { method: 'dmaload', target: 'memory', io: 'uncached' },
  { method: 'dmaload-reload', target: 'memory', io: 'auto' },
  { method: 'dmaload', target: 'memfd', io: 'auto' },
  { method: 'dmaload', target: 'udmabuf', io: 'auto' },
  { method: 'dmaload', target: 'dma-heap', io: 'auto' },
];

/**
 * Rows with memory from the hugetlb pool, added where the pool holds enough free pages for the file (see
 * {@link hugetlbRows}): a fresh load and a reload into it, memory target; with `all`, a fresh load into each
 * target that takes hugetlb pages.
 */
export const HUGETLB_ROWS: readonly RowSpec[] = [
  { method: 'dmaload', target: 'memory', io: 'direct', hugePages: 'hugetlb' },
  { method: 'dmaload-reload', target: 'memory', io: 'auto', hugePages: 'hugetlb' },
];
const HUGETLB_TARGETS: readonly TargetName[] = ['memory', 'memfd', 'udmabuf'];

/** Rows with verification (bench --verify): a load that checks its SHA-256 while reading, and verifyFile() alone. */
export const VERIFY_ROWS: readonly RowSpec[] = [
  { method: 'dmaload', target: 'memory', io: 'direct', verify: 'load' },
  { method: 'dmaload', target: 'memory', io: 'direct', verify: 'file' },
];

/**
 * The rows of a run, peers (node-readFile, fio) once: with `all`, method × target × io; else the default rows of
 * these methods and targets. `hugetlb`: the hugetlb rows too (the pool holds enough pages).
 */
export function planRows(methods: readonly Method[], tgts: readonly TargetName[], all = true, hugetlb = false): RowSpec[] {
  const rows: RowSpec[] = [];
  if (!all) {
    rows.push(...DEFAULT_ROWS.filter((r) => methods.includes(r.method) && tgts.includes(r.target)));
    if (hugetlb) rows.push(...HUGETLB_ROWS.filter((r) => methods.includes(r.method) && tgts.includes(r.target)));
  } else {
    for (const target of tgts) {
      for (const method of methods) {
        if (method === 'fio' || method === 'node-readFile') continue;
        for (const io of IOS[method]) rows.push({ method, target, io });
        if (hugetlb && method === 'dmaload' && HUGETLB_TARGETS.includes(target)) rows.push({ method, target, io: 'direct', hugePages: 'hugetlb' });
        if (hugetlb && method === 'dmaload-reload' && target === 'memory') rows.push({ method, target, io: 'auto', hugePages: 'hugetlb' });
      }
    }
  }
  // Peers read into their own memory: listed once, under 'memory'.
  if (methods.includes('node-readFile')) rows.push({ method: 'node-readFile', target: 'memory', io: 'buffered' });
  if (methods.includes('fio')) rows.push({ method: 'fio', target: 'memory', io: 'direct' });
  return rows;
}

export function label(r: RowSpec): string {
  if (r.method === 'fio' || r.method === 'node-readFile') return r.method;
  const pages = (r.hugePages ? ` ${r.hugePages}` : '') + (r.verify === 'load' ? ' +verify' : r.verify === 'file' ? ' verifyFile' : '');
  if (r.method === 'dmaload-reload') return `${r.target} ${r.io} dmaload reload${pages}`;
  return `${r.target} ${r.io} ${r.method}${pages}`;
}

/**
 * Whether the hugetlb pool can hold a buffer of `size` bytes (the rows hold one buffer at a time); where a pool is
 * reserved but too small, why (a status line that says how to grow it). No rows are added unless it can.
 */
export function hugetlbRows(size: number): { ok: boolean; reason?: string } {
  const pool = defaultPool();
  if (!pool) return { ok: false };
  const need = Math.ceil(size / pool.pageSize) + 1;
  if (pool.available >= need) return { ok: true };
  if (pool.total === 0) return { ok: false }; // no pool reserved: nothing to say on every run
  return {
    ok: false,
    reason: `no hugetlb rows: the hugetlb pool has ${pool.available} of the ${need} pages of ${formatBytes(pool.pageSize)} a row takes (as root: sysctl vm.nr_hugepages=${pool.total + need - pool.available})`,
  };
}
