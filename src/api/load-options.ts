/**
 * load()'s options: what each means (LoadOptions, the public TSDoc), their names, and check(), which turns what a
 * caller gave into the values one load uses, against the one schema in options.ts.
 */
import { LoadedBuffer } from './buffer.js';
import { invalidType, invalidValue } from '../core/errors.js';
import type { Tuning } from '../engine/engine.js';
import type { NumaNode } from '../engine/numa.js';
import type { IoMode } from '../pipeline/source.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import type { TargetName } from '../targets/index.js';
import {
  boolOption,
  budgetOption,
  cacheOption,
  functionOption,
  hugePagesOption,
  ioOption,
  numaNodeOption,
  optionNames,
  optionsObject,
  partSizeOption,
  pathOption,
  signalOption,
  sourceOption,
  targetOption,
  tuning,
  verifyOption,
} from './options.js';
import type { HugePages, VerifyOption } from './options.js';
import { hugetlbRequest, numaRequest } from './pages.js';
import type { HugetlbRequest, NumaRequest } from './pages.js';

export interface LoadProgress {
  bytes: number;
  total: number;
  /** A network source: the most connections used at once so far, and the retries so far. */
  network?: { connections: number; retries: number } | undefined;
}

export interface LoadOptions {
  /** Where the bytes land. Default 'memory'. */
  target?: TargetName;
  /**
   * 'direct' (O_DIRECT, no page cache; ERR_DIRECT_IO_UNSUPPORTED on a file system without it), 'buffered' (through
   * the page cache), 'uncached' (buffered reads that leave no page cache, RWF_DONTCACHE; ERR_UNCACHED_IO_UNSUPPORTED
   * where the kernel or file system lacks it), or 'auto' (default): ranges of the file already in the page cache are
   * copied from it, the rest is read by direct I/O, both at once; a file system without direct I/O is read uncached
   * where it allows, else buffered, and `stats.ioReason` says why.
   */
  io?: IoMode;
  /** Bytes per request (task size); a multiple of 4096. Env DMALOAD_CHUNK_SIZE. */
  chunkSize?: number;
  /** Requests in flight. Env DMALOAD_QUEUE_DEPTH. */
  queueDepth?: number;
  /**
   * Split the buffer into parts of this many bytes (a multiple of the page size; CLI --part-size): each part is
   * allocated while the previous one is read, and becomes one dma-buf. Default: one part, except udmabuf (its
   * size_limit_mb).
   */
  partSize?: number;
  /** Allocate part k+1 while part k is read (default true); false runs them one after the other, to compare. */
  overlap?: boolean;
  /** io 'auto': keep pages that copying brought into the page cache. Default false: leave the cache as found. */
  keepCache?: boolean;
  /** dma-heap target: the heap's name under /dev/dma_heap. Default 'system'. */
  heap?: string;
  /**
   * Which pages fresh memory gets (env DMALOAD_HUGE_PAGES=1, 0, hugetlb or hugetlb-or-small decides when not given):
   * - `true` / `false`, memory target: transparent huge pages (MADV_HUGEPAGE), or not. Default: as this machine's
   *   measurement says (the first touch of a GiB with and without them, measured once and cached; see
   *   `stats.memoryReason`). Memfd target: huge folios (each whole 2 MiB extent collapsed as it is faulted in,
   *   MADV_COLLAPSE, Linux 6.1+), or small pages. Default: huge folios where the kernel makes them.
   * - `'hugetlb'`, targets memory, memfd and udmabuf: pages from the hugetlb pool the administrator reserved
   *   (`sysctl vm.nr_hugepages=N`; MAP_HUGETLB / MFD_HUGETLB). The memory is the file's size rounded up to whole huge
   *   pages (`size` and the views stay the file's). A pool without enough available pages is ERR_HUGETLB_POOL
   *   before anything is read, nothing allocated; the message says how many pages are needed and free.
   * - `'hugetlb-or-small'`: the same, but small pages when the pool is short (`stats.memoryReason` says so).
   * Never hugetlb unless asked for. Ignored with `into` (the buffer keeps its memory).
   */
  hugePages?: HugePages;
  /**
   * The NUMA node the memory comes from (targets memory, memfd and udmabuf; env DMALOAD_NUMA_NODE): the mapping is
   * bound to it (mbind MPOL_BIND) before any page is faulted in, so every page lands there; `'interleave'` spreads
   * the pages round-robin over every node with memory (MPOL_INTERLEAVE). A node without memory, or one this machine
   * lacks, is ERR_OUT_OF_RANGE naming the nodes there are (`probe().numa`); the dma-heap target (the heap allocates)
   * and `into` (the buffer keeps its memory) are ERR_INVALID_ARG_VALUE. With hugetlb pages, the node's own pool must
   * hold them (ERR_HUGETLB_POOL). On a kernel without NUMA, 0 and 'interleave' bind nothing (all memory is node 0).
   * `stats.numa` says what was done. Default: the kernel's own policy (usually the node of the faulting CPU).
   */
  numaNode?: NumaNode;
  /** Refuse files larger than this many bytes before allocating. Default: MemAvailable. */
  memoryBudget?: number;
  /** Called as bytes arrive, at most ~60 times a second, and once at the end. */
  onProgress?: (p: LoadProgress) => void;
  /** Aborting stops within one request, frees everything and rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Load into this buffer's memory instead of new memory (load() only): a LoadedBuffer from load() or allocate(),
   * of any target, at least as large as the file (ERR_BUFFER_TOO_SMALL otherwise). Its pages are already faulted
   * in, so a reload costs I/O, not page faults. On success the memory moves into the returned buffer (`size` = the
   * file's) and `into` is closed; bytes past the file's size keep what they held, except the last direct-I/O block's
   * padding, which is zeroed (a memfd keeps its sealed size: `parts[].size` says how much is the file). On failure
   * `into` stays open and the caller's, its bytes partly overwritten. `target` must be the buffer's, and `partSize`
   * cannot be given (the buffer keeps its parts).
   */
  into?: LoadedBuffer;
  /**
   * Check the file's SHA-256 while it is read: the hash runs on a native thread over the bytes in file order as the
   * reads complete, overlapped with them, never as a second pass. A mismatch is ERR_CHECKSUM_MISMATCH (naming the
   * file, `expected` and `actual`); nothing is returned and nothing stays allocated.
   * - `'auto'` (default): a path that resolves into a Hugging Face hub cache blob named by its SHA-256
   *   (`models--ORG--NAME/blobs/<64 hex>`, what `snapshots/<rev>/<file>` links to) is checked against that name;
   *   anything else (a git-SHA-1 blob name included) is not checked.
   * - `{ sha256: '<64 hex digits>' }`: checked against that.
   * - `true`: as 'auto', and otherwise the SHA-256 is computed and reported in `stats.verified` (source 'computed').
   * - `false`: nothing is checked.
   * loadRanges (and loadModel) read the bytes no range covers too, only to hash them (`stats.verified.extraBytes`):
   * always with a given hash, with 'auto' only when they are at most an eighth of the file. `stats.verified` says
   * what was checked.
   */
  verify?: VerifyOption;
  /**
   * For a URL or a Hugging Face reference (instead of a path): `headers` to send, a `ca` to trust, `token` and
   * `endpoint` for the hub (default HF_TOKEN and HF_ENDPOINT), the most `connections` (default 32), a fixed
   * `chunkSize`, `attempts` per range (default 8) and `stallMs` (default 15 000). See docs/sources.md.
   */
  source?: SourceOptions;
  /**
   * For a URL or a hub reference: also write what is fetched to a local copy, put in place only once complete and
   * verified, which the next load of the same reference reads locally; an interrupted load resumes from what is on
   * disk. `true`: the hub cache for `hf://` (huggingface_hub and transformers find the files there offline
   * afterwards), `~/.cache/dmaload` for URLs; a folder: that folder. Default false.
   */
  cache?: boolean | string;
}

/** The names of load()'s options, as a tuple: loadModel() takes them and its own. */
export const LOAD_OPTION_NAMES = [
  'target',
  'io',
  'chunkSize',
  'queueDepth',
  'partSize',
  'overlap',
  'keepCache',
  'heap',
  'hugePages',
  'numaNode',
  'memoryBudget',
  'onProgress',
  'signal',
  'into',
  'verify',
  'source',
  'cache',
] as const;

/** load()'s and loadRanges()'s option names (an unknown one is ERR_INVALID_ARG_VALUE). */
export const LOAD_OPTIONS = optionNames<LoadOptions>()(LOAD_OPTION_NAMES);

/** load()'s options, checked once against the schema. */
export interface Checked {
  target: TargetName;
  io: IoMode;
  tuning: Tuning;
  partSize: number | undefined;
  overlap: boolean;
  keepCache: boolean;
  budget: number;
  onProgress: ((p: LoadProgress) => void) | undefined;
  signal: AbortSignal | undefined;
  into: LoadedBuffer | undefined;
  hugePages: HugePages | undefined;
  /** Fresh memory from the hugetlb pool: asked for by the option or DMALOAD_HUGE_PAGES. */
  hugetlb: HugetlbRequest | undefined;
  verify: VerifyOption;
  /** NUMA placement of fresh memory: asked for by the option or DMALOAD_NUMA_NODE. */
  numa: NumaRequest | undefined;
  source: SourceOptions;
  cache: boolean | string;
}

export function check(path: unknown, options: LoadOptions | undefined, call: string): Checked {
  pathOption('path', path);
  const o = optionsObject(options, LOAD_OPTIONS, call);
  const into = o.into;
  if (into !== undefined) {
    if (!(into instanceof LoadedBuffer)) throw invalidType('into', 'a LoadedBuffer (from load() or allocate())', into);
    if (o.target !== undefined && o.target !== into.target)
      throw invalidValue('target', o.target, `must be the into buffer's own target ('${into.target}') or left out`);
    if (o.partSize !== undefined) throw invalidValue('partSize', o.partSize, 'cannot be given with into: the buffer keeps its parts');
  }
  const target = into ? into.target : targetOption(o.target);
  const hugePages = hugePagesOption(o.hugePages);
  return {
    into,
    hugePages,
    hugetlb: into ? undefined : hugetlbRequest(hugePages, target),
    numa: numaRequest(numaNodeOption(o.numaNode), target, into !== undefined),
    target,
    io: ioOption(o.io),
    tuning: tuning('read', o),
    partSize: partSizeOption(o.partSize),
    overlap: boolOption('overlap', o.overlap, true),
    keepCache: boolOption('keepCache', o.keepCache, false),
    budget: budgetOption(o.memoryBudget),
    onProgress: functionOption('onProgress', o.onProgress),
    signal: signalOption(o.signal),
    verify: verifyOption(o.verify),
    source: sourceOption(o.source),
    cache: cacheOption(o.cache),
  };
}
