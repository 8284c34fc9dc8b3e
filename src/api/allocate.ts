/** allocate(): an empty buffer of any target, for readInto and writeFrom. */
import { LoadedBuffer } from './buffer.js';
import type { LoadStats } from './buffer.js';
import * as engine from '../engine/engine.js';
import { outOfRange } from '../core/errors.js';
import { PAGE_SIZE } from '../engine/binding.js';
import type { TargetName } from '../targets/index.js';
import { roundUp } from '../core/util.js';
import type { NumaNode } from '../engine/numa.js';
import { hugePagesOption, numaNodeOption, optionNames, optionsObject, partSizeOption, targetOption, thpSetting } from './options.js';
import type { HugePages } from './options.js';
import { allocateFresh, hugetlbRequest, numaRequest } from './pages.js';

export interface AllocateOptions {
  /** Default 'memory'. */
  target?: TargetName;
  /** Bytes per part (a multiple of the page size): one dma-buf each. Default: the target's. */
  partSize?: number;
  /** dma-heap target: the heap's name. Default 'system'. */
  heap?: string;
  /**
   * As load()'s: `true` / `false` (memory target: MADV_HUGEPAGE or not; memfd target: huge folios or not; default
   * false, or DMALOAD_HUGE_PAGES=1),
   * `'hugetlb'` (memory, memfd, udmabuf: pages from the hugetlb pool, the buffer rounded up to whole huge pages,
   * ERR_HUGETLB_POOL when the pool is short) or `'hugetlb-or-small'` (small pages then). Env DMALOAD_HUGE_PAGES.
   */
  hugePages?: HugePages;
  /**
   * As load()'s: the NUMA node the memory comes from (memory, memfd, udmabuf), bound before the buffer is faulted
   * in, or 'interleave' over every node with memory. Env DMALOAD_NUMA_NODE. `stats.numa` says what was done.
   */
  numaNode?: NumaNode;
}

const ALLOCATE_OPTIONS = optionNames<AllocateOptions>()(['target', 'partSize', 'heap', 'hugePages', 'numaNode']);

/** An empty buffer of `size` bytes in the chosen target, page-aligned, for readInto and writeFrom. */
export async function allocate(size: number, options: AllocateOptions = {}): Promise<LoadedBuffer> {
  if (!Number.isSafeInteger(size) || size < 1) throw outOfRange('size', 'an integer >= 1', size);
  optionsObject(options, ALLOCATE_OPTIONS, 'allocate()');
  const targetName = targetOption(options.target);
  const partSize = partSizeOption(options.partSize);
  const want = hugetlbRequest(hugePagesOption(options.hugePages), targetName);
  const numa = numaRequest(numaNodeOption(options.numaNode), targetName, false);
  const t0 = performance.now();
  const capacity = roundUp(size, PAGE_SIZE);
  // The memory target's transparent huge pages: the option, else DMALOAD_HUGE_PAGES=1 or 0 (resolved here, once).
  const thp = thpSetting(hugePagesOption(options.hugePages));
  const fresh = allocateFresh(
    targetName,
    { size, capacity, partSize, path: '<allocate>', options: { ...options, ...(thp ? { hugePages: thp.huge } : {}) } },
    want,
    numa,
  );
  const alloc = fresh.alloc;
  try {
    for (let k = 0; k < alloc.layout.length; k++) await alloc.allocPart(k);
    const parts = alloc.finish(size);
    const ms = Math.round((performance.now() - t0) * 100) / 100;
    const stats: LoadStats = {
      io: 'buffered',
      directBytes: 0,
      copiedBytes: 0,
      engine: engine.engine().engine,
      ms,
      allocMs: ms,
      ioMs: 0,
      parts: alloc.layout.map((p) => ({ offset: p.offset, size: Math.min(p.length, size - p.offset), allocMs: 0, ioMs: 0 })),
      overlap: false,
      cpuMs: 0,
      bytesPerSec: 0,
      pageCacheBytes: 0,
      bytesRead: 0,
      chunkSize: 0,
      queueDepth: 0,
      ...(fresh.reason === undefined ? {} : { memoryReason: fresh.reason }),
      ...(fresh.hugetlb ? { hugetlb: fresh.hugetlb } : {}),
      ...(fresh.numa ? { numa: fresh.numa } : {}),
    };
    return new LoadedBuffer('<allocate>', size, targetName, alloc, parts, stats);
  } catch (e) {
    alloc.close();
    throw e;
  }
}
