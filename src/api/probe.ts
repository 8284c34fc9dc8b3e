/** probe(): what this kernel and machine offer dmaload, each fact measured by trying, never assumed. */
import { constants as FS, existsSync, readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { engine } from '../engine/engine.js';
import { cachedFirstTouch, firstTouchCachePath, measureFirstTouch, measuredDecision } from '../engine/first-touch.js';
import type { FirstTouch } from '../engine/first-touch.js';
import { hugetlbPools } from '../engine/hugetlb.js';
import type { HugetlbPool } from '../engine/hugetlb.js';
import { memoryNodes, numaNodes } from '../engine/numa.js';
import type { NumaNodeInfo } from '../engine/numa.js';
import { dioAlign, openRegular, uncachedErrorCode, uncachedSupport } from '../pipeline/source.js';
import { boolOption, optionNames, optionsObject, pathOption } from './options.js';

export interface ProbeResult {
  kernel: string;
  ioUring: { usable: boolean; reason?: string | undefined };
  /** Direct-I/O alignment for FILE's file system (statx STATX_DIOALIGN), when a file was given. */
  file?: {
    path: string;
    directIo: boolean;
    memAlign: number;
    offsetAlign: number;
    /** Uncached buffered I/O (RWF_DONTCACHE) on this file: supported, or the error code it gets (EOPNOTSUPP). */
    uncached: { supported: boolean; error?: string | undefined };
  };
  /** Transparent huge pages mode for anonymous memory (the bracketed word of /sys/kernel/mm/transparent_hugepage/enabled). */
  thp: string;
  /**
   * The hugetlb pools, one per huge page size (/sys/kernel/mm/hugepages/hugepages-*kB/): page size in bytes, total,
   * free, reserved (promised to mappings, not available), surplus, overcommit limit, what a new mapping can get
   * (`available`), and which is the default size (`hugePages: 'hugetlb'` uses it). Empty without CONFIG_HUGETLBFS.
   */
  hugetlb: HugetlbPool[];
  /**
   * NUMA nodes with memory (/sys/devices/system/node: has_memory, nodeN/meminfo), what `numaNode` can name, with
   * their total and free bytes; `available: false` on a kernel without NUMA (one node 0, nothing to bind).
   */
  numa: { available: boolean; nodes: NumaNodeInfo[] };
  udmabuf: { present: boolean; device: string; sizeLimitMb?: number | undefined; listLimit?: number | undefined };
  dmaHeaps: string[];
  /** RLIMIT_MEMLOCK soft limit in bytes, or 'unlimited'. */
  memlock: number | 'unlimited';
  cpus: number;
  memoryBytes: number;
  /**
   * Huge pages for fresh memory on this machine: the cached measurement of the first touch of a GiB with and without
   * MADV_HUGEPAGE (`probe(path, { firstTouch: true })` measures it now), or undefined when not measured yet.
   */
  firstTouch?: { hugePages: boolean; summary: string; cache: string; measurement: FirstTouch } | undefined;
}

function readTrim(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function memlock(): number | 'unlimited' {
  const m = /^Max locked memory\s+(\S+)/m.exec(readTrim('/proc/self/limits') ?? '');
  if (!m || m[1] === 'unlimited') return 'unlimited';
  return Number(m[1]);
}

/**
 * Reports the kernel facts dmaload depends on; with `path`, also the direct-I/O alignment of its file system and
 * whether it takes uncached I/O. `firstTouch: true` (re)measures the first-touch cost of fresh memory with and
 * without huge pages (a few seconds; the result is cached for every later load).
 */
const PROBE_OPTIONS = optionNames<{ firstTouch?: boolean }>()(['firstTouch']);

export async function probe(path?: string, options: { firstTouch?: boolean } = {}): Promise<ProbeResult> {
  optionsObject(options, PROBE_OPTIONS, 'probe()');
  if (path !== undefined) pathOption('path', path);
  const eng = engine();
  const thpRaw = readTrim('/sys/kernel/mm/transparent_hugepage/enabled') ?? '';
  const limit = readTrim('/sys/module/udmabuf/parameters/size_limit_mb');
  const listLimit = readTrim('/sys/module/udmabuf/parameters/list_limit');
  let heaps: string[] = [];
  try {
    heaps = readdirSync('/dev/dma_heap').sort();
  } catch {
    // no DMA heaps on this kernel
  }
  const result: ProbeResult = {
    kernel: os.release(),
    ioUring: { usable: eng.engine === 'uring', reason: eng.reason },
    thp: /\[(\w+)\]/.exec(thpRaw)?.[1] ?? 'unavailable',
    hugetlb: hugetlbPools(),
    numa: { available: memoryNodes() !== undefined, nodes: numaNodes() },
    udmabuf: {
      present: existsSync('/dev/udmabuf'),
      device: '/dev/udmabuf',
      sizeLimitMb: limit === undefined ? undefined : Number(limit),
      listLimit: listLimit === undefined ? undefined : Number(listLimit),
    },
    dmaHeaps: heaps,
    memlock: memlock(),
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
  };
  const ft = boolOption('firstTouch', options.firstTouch, false) ? await measureFirstTouch() : cachedFirstTouch();
  if (ft) {
    // What loads decide from it: the same rule as load() (free page reporting overrides the measurement).
    const d = measuredDecision(ft);
    result.firstTouch = { hugePages: d.huge, summary: d.reason, cache: firstTouchCachePath(), measurement: ft };
  }
  if (path !== undefined) {
    const fh = await openRegular(path, FS.O_RDONLY);
    try {
      const a = dioAlign(fh.fd);
      const u = uncachedSupport(fh.fd);
      result.file = {
        path,
        directIo: a.memAlign > 0,
        memAlign: a.memAlign,
        offsetAlign: a.offsetAlign,
        uncached: { supported: u === 0, error: u < 0 ? uncachedErrorCode(u) : undefined },
      };
    } finally {
      await fh.close();
    }
  }
  return result;
}
