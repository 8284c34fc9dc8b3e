/**
 * hugetlb pages: memory from the pool the administrator reserved (`sysctl vm.nr_hugepages=N`), asked for with
 * `hugePages: 'hugetlb'` and never chosen behind the caller's back. Measured on the reference VM: a pool used once
 * faults in at ~80 ms per GiB (fresh small pages 0.7–2.3 s, THP 2.7 s), and direct I/O into it costs 15–19 ms of CPU
 * per GiB instead of 65–77. The price: sizes round up to whole huge pages, and the pool must hold enough free pages.
 *
 * MAP_HUGETLB and MFD_HUGETLB mappings reserve their pages when they are mapped (never with MAP_NORESERVE here), so
 * a short pool fails the mmap with ENOMEM instead of a SIGBUS on first touch; both become ERR_HUGETLB_POOL, and the
 * pool is checked before anything is made so the message can say how many pages are missing.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { KiB, formatBytes, roundUp } from '../core/util.js';
import { C, native } from './binding.js';
import type { Region } from './binding.js';

export const HUGEPAGES_DIR = '/sys/kernel/mm/hugepages';

/** One hugetlb pool: one huge page size (the counts of /sys/kernel/mm/hugepages/hugepages-<size>kB/). */
export interface HugetlbPool {
  /** Bytes per page. */
  pageSize: number;
  /** The pool's pages (nr_hugepages), surplus ones included. */
  total: number;
  /** Pages not in use (free_hugepages), reserved ones included. */
  free: number;
  /** Free pages promised to mappings that have not faulted them in yet (resv_hugepages): not available. */
  reserved: number;
  /** Pages allocated past nr_hugepages under overcommit (surplus_hugepages). */
  surplus: number;
  /** The most surplus pages the kernel may add on demand (nr_overcommit_hugepages; 0 = none). */
  overcommit: number;
  /** Pages a new mapping can get now: free − reserved, plus the surplus overcommit still allows. */
  available: number;
  /** The size MAP_HUGETLB and MFD_HUGETLB use without a size flag (/proc/meminfo Hugepagesize). */
  default: boolean;
}

function readNumber(path: string): number {
  const n = Number(readFileSync(path, 'utf8').trim());
  return Number.isSafeInteger(n) ? n : 0;
}

/** The default huge page size in bytes (/proc/meminfo Hugepagesize), or undefined on a kernel without hugetlb. */
export function defaultHugePageSize(): number | undefined {
  try {
    const m = /^Hugepagesize:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) * KiB : undefined;
  } catch {
    return undefined;
  }
}

/** Every hugetlb pool of this kernel, smallest page size first (empty without CONFIG_HUGETLBFS). */
export function hugetlbPools(dir = HUGEPAGES_DIR): HugetlbPool[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const dflt = defaultHugePageSize();
  const pools: HugetlbPool[] = [];
  for (const name of names) {
    const m = /^hugepages-(\d+)kB$/.exec(name);
    if (!m) continue;
    const d = `${dir}/${name}`;
    try {
      const pageSize = Number(m[1]) * KiB;
      const total = readNumber(`${d}/nr_hugepages`);
      const free = readNumber(`${d}/free_hugepages`);
      const reserved = readNumber(`${d}/resv_hugepages`);
      const surplus = readNumber(`${d}/surplus_hugepages`);
      const overcommit = readNumber(`${d}/nr_overcommit_hugepages`);
      const available = Math.max(0, free - reserved) + Math.max(0, overcommit - surplus);
      pools.push({ pageSize, total, free, reserved, surplus, overcommit, available, default: pageSize === dflt });
    } catch {
      // a pool that vanished or cannot be read: not offered
    }
  }
  return pools.sort((a, b) => a.pageSize - b.pageSize);
}

/** The pool of the default huge page size (what MAP_HUGETLB and MFD_HUGETLB take), or undefined. */
export function defaultPool(): HugetlbPool | undefined {
  return hugetlbPools().find((p) => p.default);
}

/** ERR_HUGETLB_POOL: the pool cannot give a mapping the pages it needs. Nothing was allocated. */
export class HugetlbPoolError extends DmaloadError {
  /** Huge pages the mapping needs. */
  readonly pagesNeeded: number;
  /** Pages the pool could give when it was checked (free − reserved, plus what overcommit allows). */
  readonly pagesAvailable: number;
  /** Bytes per huge page; 0 on a kernel without hugetlb pages. */
  readonly pageSize: number;
  constructor(message: string, o: { path: string; pagesNeeded: number; pagesAvailable: number; pageSize: number; cause?: unknown }) {
    super('ERR_HUGETLB_POOL', message, { path: o.path, cause: o.cause });
    this.pagesNeeded = o.pagesNeeded;
    this.pagesAvailable = o.pagesAvailable;
    this.pageSize = o.pageSize;
  }
}

const FALLBACK_HINT =
  "or ask for hugePages: 'hugetlb-or-small' (--huge-pages hugetlb-or-small, DMALOAD_HUGE_PAGES=hugetlb-or-small) to fall back to small pages";

function who(path: string): string {
  return path === '<allocate>' ? 'allocate()' : `'${path}'`;
}

/** The pool error for `bytes` of huge pages of `pageSize`, with the pool's counts read now. */
export function poolError(bytes: number, pageSize: number, path: string, cause?: unknown): HugetlbPoolError {
  const pool = hugetlbPools().find((p) => p.pageSize === pageSize);
  const need = Math.ceil(bytes / pageSize);
  if (!pool) {
    return new HugetlbPoolError(
      `${who(path)} asked for hugetlb pages but this kernel has no pool of ${formatBytes(pageSize)} pages (CONFIG_HUGETLBFS); ${FALLBACK_HINT}`,
      {
        path,
        pagesNeeded: need,
        pagesAvailable: 0,
        pageSize,
        cause,
      },
    );
  }
  const missing = Math.max(1, need - pool.available);
  const setting = pool.default
    ? `sysctl vm.nr_hugepages=${pool.total + missing}`
    : `echo ${pool.total + missing} > ${HUGEPAGES_DIR}/hugepages-${pageSize / KiB}kB/nr_hugepages`;
  return new HugetlbPoolError(
    `${who(path)} needs ${need} huge pages of ${formatBytes(pageSize)} (${formatBytes(bytes)}) but the hugetlb pool has ${pool.available} available ` +
      `(${pool.free} free, ${pool.reserved} reserved for other mappings, ${pool.total} in the pool); reserve ${missing} more as root: ` +
      `${setting} (the kernel may find fewer: check HugePages_Free in /proc/meminfo), ${FALLBACK_HINT}`,
    { path, pagesNeeded: need, pagesAvailable: pool.available, pageSize, cause },
  );
}

/**
 * The default huge page size, or ERR_HUGETLB_POOL on a kernel without hugetlb pages: what `hugePages: 'hugetlb'`
 * rounds to and takes from.
 */
export function hugetlbPageSize(path: string): number {
  const size = defaultHugePageSize();
  if (size === undefined || size <= 0) {
    throw new HugetlbPoolError(
      `${who(path)} asked for hugetlb pages but this kernel has none (no Hugepagesize in /proc/meminfo: CONFIG_HUGETLBFS is off); ${FALLBACK_HINT}`,
      {
        path,
        pagesNeeded: 0,
        pagesAvailable: 0,
        pageSize: 0,
      },
    );
  }
  return size;
}

/** Bytes a hugetlb mapping of `capacity` bytes takes: whole huge pages. */
export function hugetlbLength(capacity: number, pageSize: number): number {
  return roundUp(capacity, pageSize);
}

/** Throws ERR_HUGETLB_POOL unless the pool can give `bytes` (whole huge pages) now; allocates nothing. */
export function checkPool(bytes: number, pageSize: number, path: string): void {
  if (bytes === 0) return;
  const pool = hugetlbPools().find((p) => p.pageSize === pageSize);
  if (!pool || pool.available < Math.ceil(bytes / pageSize)) throw poolError(bytes, pageSize, path);
}

/** A failed hugetlb mmap (or memfd_create, ftruncate) as the error to throw: ENOMEM (the pool ran short) becomes ERR_HUGETLB_POOL. */
export function hugetlbMapError(errno: number, syscall: string, bytes: number, pageSize: number, path: string): Error {
  const sys = new DmaloadSystemError(errno, syscall, path);
  return -Math.abs(errno) === -12 ? poolError(bytes, pageSize, path, sys) : sys;
}

/**
 * `bytes` (a multiple of `pageSize`) of private anonymous memory from the hugetlb pool of the default size,
 * huge-page aligned, reserved at mmap (no MAP_NORESERVE): a short pool is ERR_HUGETLB_POOL here, never a SIGBUS
 * later. MADV_DONTFORK like every mapping of the addon.
 */
export function hugetlbAnonymous(bytes: number, pageSize: number, path: string): Region {
  checkPool(bytes, pageSize, path);
  const r = native.mmap(bytes, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB, -1, 0, pageSize);
  if (typeof r === 'number') throw hugetlbMapError(r, 'mmap', bytes, pageSize, path);
  return r;
}
