/**
 * NUMA placement: which nodes this machine has (from sysfs), and binding a fresh mapping to one of them — or
 * interleaving it over all of them — before its pages are faulted in. mbind(2) only decides where pages come from
 * when they are first touched: a page already there stays where it is, so the bind must come between mmap and the
 * populate (src/api/pages.ts does it right after the target maps its memory). On a shared memfd mapping the kernel
 * keeps the policy as the file's shared policy (shmem), so every later fault of the file follows it, the udmabuf
 * target's included; on a hugetlb mapping it decides which node's pool the huge pages come from.
 */
import { readFileSync } from 'node:fs';
import { DmaloadSystemError } from '../core/errors.js';
import { KiB, formatBytes } from '../core/util.js';
import { C, native } from './binding.js';
import type { Region } from './binding.js';
import { HugetlbPoolError } from './hugetlb.js';

export const NODE_DIR = '/sys/devices/system/node';

/** One NUMA node with memory: its number and its memory (/sys/devices/system/node/nodeN/meminfo). */
export interface NumaNodeInfo {
  node: number;
  totalBytes: number;
  freeBytes: number;
}

/** What `numaNode` takes: a node number, or 'interleave' (pages spread round-robin over every node with memory). */
export type NumaNode = number | 'interleave';

/** Parses a sysfs node list such as "0-3,5" (empty: none). */
export function parseNodeList(s: string): number[] {
  const out: number[] = [];
  for (const part of s.trim().split(',')) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) continue;
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    for (let n = lo; n <= hi; n++) out.push(n);
  }
  return out;
}

/**
 * The nodes a mapping can be bound to: those with memory (has_memory; `online` on kernels older than 2.6.34 that
 * lack it), ascending. Undefined on a kernel without NUMA (CONFIG_NUMA off: no /sys/devices/system/node), where all
 * memory is one node 0 and mbind does not exist.
 */
export function memoryNodes(dir = NODE_DIR): number[] | undefined {
  for (const f of ['has_memory', 'online']) {
    try {
      return parseNodeList(readFileSync(`${dir}/${f}`, 'utf8'));
    } catch {
      // try the next list
    }
  }
  return undefined;
}

/** Every node with memory and its total and free bytes; empty on a kernel without NUMA. */
export function numaNodes(dir = NODE_DIR): NumaNodeInfo[] {
  const out: NumaNodeInfo[] = [];
  for (const node of memoryNodes(dir) ?? []) {
    let text: string;
    try {
      text = readFileSync(`${dir}/node${node}/meminfo`, 'utf8');
    } catch {
      continue; // went offline meanwhile
    }
    const kb = (k: string) => Number(new RegExp(`^Node ${node} ${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * KiB;
    out.push({ node, totalBytes: kb('MemTotal'), freeBytes: kb('MemFree') });
  }
  return out;
}

/** Free huge pages of `pageSize` on `node` (nodeN/hugepages/hugepages-<size>kB/free_hugepages); 0 when unknown. */
export function nodeFreeHugePages(node: number, pageSize: number, dir = NODE_DIR): number {
  try {
    const n = Number(readFileSync(`${dir}/node${node}/hugepages/hugepages-${pageSize / KiB}kB/free_hugepages`, 'utf8').trim());
    return Number.isSafeInteger(n) ? n : 0;
  } catch {
    return 0;
  }
}

/**
 * Binds all of `region` to `nodes`: MPOL_BIND to the one node, or MPOL_INTERLEAVE over several. Only pages faulted
 * in afterwards follow: call it before populating. Throws the system error (mbind) otherwise.
 */
export function bindRegion(region: Region, nodes: readonly number[], interleave: boolean, path: string): void {
  const rc = native.mbind(region, 0, native.regionSize(region), interleave ? C.MPOL_INTERLEAVE : C.MPOL_BIND, [...nodes], 0);
  if (rc < 0) throw new DmaloadSystemError(rc, 'mbind', path);
}

/**
 * Throws ERR_HUGETLB_POOL unless each node of `nodes` has the free huge pages its share of `bytes` needs: the pool's
 * reservation at mmap counts the whole machine, but a bound fault takes its page from the node's own pool and has
 * nowhere else to go (a SIGBUS, or EFAULT from the populate). Interleaved, each node gets its share rounded up.
 */
export function checkNodePools(bytes: number, pageSize: number, nodes: readonly number[], interleave: boolean, path: string, dir = NODE_DIR): void {
  const need = Math.ceil(bytes / pageSize);
  const share = interleave ? Math.ceil(need / nodes.length) : need;
  for (const node of nodes) {
    const free = nodeFreeHugePages(node, pageSize, dir);
    if (free >= share) continue;
    const file = `${dir}/node${node}/hugepages/hugepages-${pageSize / KiB}kB/nr_hugepages`;
    let total = 0;
    try {
      total = Number(readFileSync(file, 'utf8').trim()) || 0;
    } catch {
      // no pool of this size on that node
    }
    throw new HugetlbPoolError(
      `${path === '<allocate>' ? 'allocate()' : `'${path}'`} needs ${share} huge pages of ${formatBytes(pageSize)} on NUMA node ${node} but that node's hugetlb pool has ${free} free ` +
        `(${total} in it); reserve ${share - free} more there as root: echo ${total + share - free} > ${file}, or ask for hugePages: 'hugetlb-or-small' to fall back to small pages`,
      { path, pagesNeeded: share, pagesAvailable: free, pageSize },
    );
  }
}
