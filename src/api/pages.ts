/**
 * Which pages a fresh allocation gets from the hugetlb pool: only where the caller asked (`hugePages: 'hugetlb'` or
 * 'hugetlb-or-small', or DMALOAD_HUGE_PAGES=hugetlb…), never by a decision of the library's own. The automatic
 * choice between small pages and transparent huge pages stays engine/first-touch.ts's.
 */
import { invalidValue } from '../core/errors.js';
import { formatBytes } from '../core/util.js';
import { HugetlbPoolError, hugetlbPageSize } from '../engine/hugetlb.js';
import { targets } from '../targets/index.js';
import type { Allocation, TargetName } from '../targets/index.js';
import type { AllocateRequest } from '../targets/types.js';
import { hugePagesEnv } from './options.js';
import type { HugePages } from './options.js';

/** The targets whose memory can come from the hugetlb pool. */
export const HUGETLB_TARGETS: readonly TargetName[] = ['memory', 'memfd', 'udmabuf'];

/** A caller's request for hugetlb pages: where it came from, and whether small pages may stand in. */
export interface HugetlbRequest {
  /** `hugePages: 'hugetlb'` or `DMALOAD_HUGE_PAGES=hugetlb`: for stats.memoryReason. */
  label: string;
  /** 'hugetlb-or-small': small pages when the pool is short (or the kernel has none). */
  fallback: boolean;
}

/**
 * The hugetlb request of a fresh allocation into `target`, or undefined: the option (checked by hugePagesOption)
 * when given, else DMALOAD_HUGE_PAGES. The option names a target that cannot take hugetlb pages (dma-heap: the heap
 * allocates its own) as ERR_INVALID_ARG_VALUE; the variable is a default and applies only where it can.
 */
export function hugetlbRequest(option: HugePages | undefined, target: TargetName): HugetlbRequest | undefined {
  if (option !== undefined) {
    if (typeof option === 'boolean') return undefined;
    if (!HUGETLB_TARGETS.includes(target)) {
      throw invalidValue('hugePages', option, `applies to targets ${HUGETLB_TARGETS.map((t) => `'${t}'`).join(', ')}, not '${target}' (a DMA heap allocates its own pages)`);
    }
    return { label: `hugePages: '${option}'`, fallback: option === 'hugetlb-or-small' };
  }
  const env = hugePagesEnv();
  if (typeof env !== 'string' || !HUGETLB_TARGETS.includes(target)) return undefined;
  return { label: `DMALOAD_HUGE_PAGES=${env}`, fallback: env === 'hugetlb-or-small' };
}

export interface FreshAllocation {
  alloc: Allocation;
  /** Set when the memory came from the hugetlb pool. */
  hugetlb?: { pageSize: number; pages: number } | undefined;
  /** Why the memory is what it is, when hugetlb pages were asked for. */
  reason?: string | undefined;
}

/**
 * Allocates `req` in `target`, from the hugetlb pool when `want` says so. A pool too small (checked before anything
 * is made; the mmap's own ENOMEM too) is ERR_HUGETLB_POOL with nothing left allocated, or, for 'hugetlb-or-small',
 * small pages and a reason that says why.
 */
export function allocateFresh(target: TargetName, req: AllocateRequest, want: HugetlbRequest | undefined): FreshAllocation {
  if (!want) return { alloc: targets[target].allocate(req) };
  try {
    const pageSize = hugetlbPageSize(req.path);
    const alloc = targets[target].allocate({ ...req, hugetlb: pageSize });
    const pages = Math.ceil(req.capacity / pageSize);
    return { alloc, hugetlb: { pageSize, pages }, reason: `${want.label}: ${pages} huge pages of ${formatBytes(pageSize)} from the hugetlb pool` };
  } catch (e) {
    if (!want.fallback || !(e instanceof HugetlbPoolError)) throw e;
    const alloc = targets[target].allocate({ ...req, hugetlb: undefined, options: { ...req.options, hugePages: false } });
    const short = e.pageSize > 0 ? `the hugetlb pool has ${e.pagesAvailable} of the ${e.pagesNeeded} huge pages of ${formatBytes(e.pageSize)} needed` : 'this kernel has no hugetlb pages';
    return { alloc, reason: `${want.label}: small pages: ${short}` };
  }
}
