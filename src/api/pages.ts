/**
 * Which pages a fresh allocation gets from the hugetlb pool: only where the caller asked (`hugePages: 'hugetlb'` or
 * 'hugetlb-or-small', or DMALOAD_HUGE_PAGES=hugetlb…), never by a decision of the library's own. The automatic
 * choice between small pages and transparent huge pages stays engine/first-touch.ts's. And on which NUMA node they
 * land (`numaNode`): the one spot every fresh allocation passes between its mmap and its first fault.
 */
import { invalidValue, outOfRange } from '../core/errors.js';
import { formatBytes, roundUp } from '../core/util.js';
import { HugetlbPoolError, hugetlbPageSize } from '../engine/hugetlb.js';
import { NODE_DIR, bindRegion, checkNodePools, memoryNodes } from '../engine/numa.js';
import type { NumaNode } from '../engine/numa.js';
import { targets } from '../targets/index.js';
import type { Allocation, TargetName } from '../targets/index.js';
import type { AllocateRequest } from '../targets/types.js';
import { hugePagesEnv, numaNodeEnv } from './options.js';
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
      throw invalidValue(
        'hugePages',
        option,
        `applies to targets ${HUGETLB_TARGETS.map((t) => `'${t}'`).join(', ')}, not '${target}' (a DMA heap allocates its own pages)`,
      );
    }
    return { label: `hugePages: '${option}'`, fallback: option === 'hugetlb-or-small' };
  }
  const env = hugePagesEnv();
  if (typeof env !== 'string' || !HUGETLB_TARGETS.includes(target)) return undefined;
  return { label: `DMALOAD_HUGE_PAGES=${env}`, fallback: env === 'hugetlb-or-small' };
}

/** The targets whose memory can be bound to a NUMA node: those whose memory dmaload maps itself. */
export const NUMA_TARGETS: readonly TargetName[] = ['memory', 'memfd', 'udmabuf'];

/** A caller's request for NUMA placement, checked against the nodes this machine has. */
export interface NumaRequest {
  node: NumaNode;
  /** `numaNode: 1` or `DMALOAD_NUMA_NODE=1`: for stats.numa.reason. */
  label: string;
  /** The nodes to bind to (all nodes with memory for 'interleave'); undefined on a kernel without NUMA: nothing to do. */
  nodes: number[] | undefined;
}

/**
 * The NUMA placement of a fresh allocation into `target`, or undefined: the option (its form checked by
 * numaNodeOption) when given, else DMALOAD_NUMA_NODE. The option with `into` (the buffer keeps its memory, pages and
 * all) or a target whose memory the kernel allocates (dma-heap) is ERR_INVALID_ARG_VALUE; the variable is a default
 * and applies only where it can. A node without memory, or one this machine lacks, is ERR_OUT_OF_RANGE naming the
 * nodes there are. On a kernel without NUMA, node 0 and 'interleave' are all its memory: nothing to bind.
 */
export function numaRequest(option: NumaNode | undefined, target: TargetName, into: boolean): NumaRequest | undefined {
  let node: NumaNode;
  let name: string;
  if (option !== undefined) {
    if (into) throw invalidValue('numaNode', option, 'cannot be given with into: the buffer keeps its memory, and its pages stay on the nodes they are on');
    if (!NUMA_TARGETS.includes(target)) {
      throw invalidValue(
        'numaNode',
        option,
        `applies to targets ${NUMA_TARGETS.map((t) => `'${t}'`).join(', ')}, not '${target}' (a DMA heap allocates its own pages)`,
      );
    }
    node = option;
    name = 'numaNode';
  } else {
    const env = numaNodeEnv();
    if (env === undefined || into || !NUMA_TARGETS.includes(target)) return undefined;
    node = env;
    name = 'DMALOAD_NUMA_NODE';
  }
  const label = name === 'numaNode' ? `numaNode: ${typeof node === 'number' ? node : `'${node}'`}` : `DMALOAD_NUMA_NODE=${node}`;
  const have = memoryNodes();
  if (have === undefined) {
    if (node === 0 || node === 'interleave') return { node, label, nodes: undefined };
    throw outOfRange(name, `0 or 'interleave': this kernel has no NUMA (no ${NODE_DIR}), all its memory is node 0`, node);
  }
  if (node === 'interleave') return { node, label, nodes: have };
  if (!have.includes(node))
    throw outOfRange(name, `a node with memory (${have.length === 1 ? 'this machine has node' : 'nodes'} ${have.join(', ')}) or 'interleave'`, node);
  return { node, label, nodes: [node] };
}

/** What was done about NUMA placement (stats.numa). */
export interface NumaPlacement {
  /** As asked: a node or 'interleave'. */
  node: NumaNode;
  /** The nodes the memory was bound to; empty when nothing was bound (a kernel without NUMA). */
  nodes: number[];
  reason: string;
}

export interface FreshAllocation {
  alloc: Allocation;
  /** Set when the memory came from the hugetlb pool. */
  hugetlb?: { pageSize: number; pages: number } | undefined;
  /** Why the memory is what it is, when hugetlb pages were asked for. */
  reason?: string | undefined;
  /** Set when NUMA placement was asked for. */
  numa?: NumaPlacement | undefined;
}

/**
 * Allocates `req` in `target` (from the hugetlb pool when `want` says so) and, when `numa` says so, binds the
 * mapping to its node(s) before any page is faulted in: the targets only map (allocPart and the reads fault the
 * pages in later), so every page lands where the policy says. A failed mbind frees what was allocated.
 */
export function allocateFresh(target: TargetName, req: AllocateRequest, want: HugetlbRequest | undefined, numa?: NumaRequest): FreshAllocation {
  const fresh = allocatePages(target, req, want, numa);
  if (!numa) return fresh;
  const interleave = numa.node === 'interleave';
  if (!numa.nodes) {
    fresh.numa = { node: numa.node, nodes: [], reason: `${numa.label}: nothing to bind: this kernel has no NUMA (no ${NODE_DIR}), all its memory is node 0` };
    return fresh;
  }
  try {
    if (fresh.alloc.region) bindRegion(fresh.alloc.region, numa.nodes, interleave, req.path);
  } catch (e) {
    fresh.alloc.close();
    throw e;
  }
  const how = interleave
    ? `pages interleaved over node${numa.nodes.length === 1 ? '' : 's'} ${numa.nodes.join(', ')} (MPOL_INTERLEAVE)`
    : `every page on node ${numa.nodes[0]} (MPOL_BIND)`;
  fresh.numa = { node: numa.node, nodes: numa.nodes, reason: `${numa.label}: ${how}, bound before the pages were faulted in` };
  return fresh;
}

/**
 * Allocates `req` in `target`, from the hugetlb pool when `want` says so. A pool too small (checked before anything
 * is made; the mmap's own ENOMEM too) is ERR_HUGETLB_POOL with nothing left allocated, or, for 'hugetlb-or-small',
 * small pages and a reason that says why.
 */
function allocatePages(target: TargetName, req: AllocateRequest, want: HugetlbRequest | undefined, numa: NumaRequest | undefined): FreshAllocation {
  if (!want) return { alloc: targets[target].allocate(req) };
  try {
    const pageSize = hugetlbPageSize(req.path);
    // Bound huge pages come from their node's own pool: check it too, so that a short one falls back like the rest.
    if (numa?.nodes && req.capacity > 0) checkNodePools(roundUp(req.capacity, pageSize), pageSize, numa.nodes, numa.node === 'interleave', req.path);
    const alloc = targets[target].allocate({ ...req, hugetlb: pageSize });
    const pages = Math.ceil(req.capacity / pageSize);
    return { alloc, hugetlb: { pageSize, pages }, reason: `${want.label}: ${pages} huge pages of ${formatBytes(pageSize)} from the hugetlb pool` };
  } catch (e) {
    if (!want.fallback || !(e instanceof HugetlbPoolError)) throw e;
    const alloc = targets[target].allocate({ ...req, hugetlb: undefined, options: { ...req.options, hugePages: false } });
    const short =
      e.pageSize > 0
        ? `the hugetlb pool has ${e.pagesAvailable} of the ${e.pagesNeeded} huge pages of ${formatBytes(e.pageSize)} needed`
        : 'this kernel has no hugetlb pages';
    return { alloc, reason: `${want.label}: small pages: ${short}` };
  }
}
