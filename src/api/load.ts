/** load(): a file into a target, every byte, by direct I/O where the file system allows. */
import { fstatSync, promises as fsp } from 'node:fs';
import { LoadedBuffer } from './buffer.js';
import type { LoadStats } from './buffer.js';
import { DmaloadError, invalidType, invalidValue, outOfRange } from '../core/errors.js';
import { cpuMsSince, formatBytes, msSince, roundUp } from '../core/util.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';
import * as engine from '../engine/engine.js';
import { zero } from '../engine/memory.js';
import { decideHugePages, measureIfWanted } from '../engine/first-touch.js';
import type { Tuning } from '../engine/engine.js';
import { RESIDENCY_HIDDEN, dropAdded, pageCacheBytes, residentPages, uncachedRead } from '../pipeline/cache.js';
import { place } from '../pipeline/plan.js';
import type { FileRange, Placement } from '../pipeline/plan.js';
import { JobGroup, schedule } from '../pipeline/schedule.js';
import type { ScheduleResult } from '../pipeline/schedule.js';
import { fileChanged } from '../pipeline/source.js';
import { openRef } from '../pipeline/sources/open.js';
import { scrubbed } from '../pipeline/sources/resolve.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import { HashStream, expectedFor, expectedFrom, gaps, hashRanges, settle } from '../pipeline/verify.js';
import type { Expected } from '../pipeline/verify.js';
import type { IoMode, OpenedFile } from '../pipeline/source.js';
import type { Allocation, Part, TargetName } from '../targets/index.js';
import type { NumaNode } from '../engine/numa.js';
import {
  boolOption,
  budgetOption,
  functionOption,
  hugePagesOption,
  ioOption,
  numaNodeOption,
  optionNames,
  optionsObject,
  thpSetting,
  partSizeOption,
  pathOption,
  signalOption,
  sourceOption,
  cacheOption,
  targetOption,
  tuning,
  verifyOption,
} from './options.js';
import type { HugePages, VerifyOption } from './options.js';
import { allocateFresh, hugetlbRequest, numaRequest } from './pages.js';
import type { FreshAllocation, HugetlbRequest, NumaRequest } from './pages.js';

export interface LoadProgress {
  bytes: number;
  total: number;
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
   *   `stats.memoryReason`).
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

/**
 * Loads the whole file at `path` into a new buffer of the chosen target and resolves once every byte is there.
 *
 * Errors: system errors carry `code` (ENOENT, EISDIR, …), `syscall` and `path`; the library's own codes are
 * ERR_NOT_REGULAR_FILE, ERR_MEMORY_BUDGET, ERR_FILE_CHANGED (the file's size changed during the load) and
 * ERR_INVALID_ARG_* for bad options. Nothing stays allocated when it rejects.
 */
export async function load(path: string, options: LoadOptions = {}): Promise<LoadedBuffer> {
  try {
    return (await loadInternal(path, options, undefined)).buffer;
  } catch (e) {
    throw scrubbed(e, path);
  }
}

export type { FileRange } from '../pipeline/plan.js';

/**
 * Loads only some byte ranges of a file, each placed at a page-aligned spot of one new buffer so that a byte keeps
 * its file alignment modulo 4096 (and the direct-I/O block). Resolves with the buffer and, for each range, the
 * offset in `buffer.bytes` of the range's first byte. Ranges must be sorted and not overlap; `stats.bytesRead` says
 * how much was read (the ranges rounded out to whole blocks).
 */
export async function loadRanges(path: string, ranges: readonly FileRange[], options: LoadOptions = {}): Promise<{ buffer: LoadedBuffer; offsets: number[] }> {
  if (!Array.isArray(ranges)) throw invalidType('ranges', 'an array of { offset, length }', ranges);
  let end = 0;
  for (const [i, r] of (ranges as readonly FileRange[]).entries()) {
    if (r === null || typeof r !== 'object') throw invalidType(`ranges[${i}]`, 'an object { offset, length }', r);
    if (!Number.isSafeInteger(r.offset) || r.offset < end)
      throw outOfRange(`ranges[${i}].offset`, `an integer >= ${end} (ranges sorted, not overlapping)`, r.offset);
    if (!Number.isSafeInteger(r.length) || r.length < 1) throw outOfRange(`ranges[${i}].length`, 'an integer >= 1', r.length);
    end = r.offset + r.length;
  }
  if (options?.into !== undefined) throw invalidValue('into', '<LoadedBuffer>', 'is an option of load() only');
  return loadInternal(path, options, ranges).catch((e: unknown) => Promise.reject(scrubbed(e, path)));
}

/** load()'s options, checked once against the schema. */
interface Checked {
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

function check(path: unknown, options: LoadOptions | undefined, call: string): Checked {
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

/**
 * load() of a reference already opened (the share server opens one to learn its identity first): `src` is this
 * call's to close, whatever happens.
 * @internal
 */
export async function loadOpened(src: OpenedFile, options: LoadOptions): Promise<LoadedBuffer> {
  try {
    check(src.path, options, 'load()');
    options.signal?.throwIfAborted();
  } catch (e) {
    await src.close();
    throw e;
  }
  return (await loadInternal(src.path, options, undefined, src)).buffer;
}

async function loadInternal(
  path: string,
  options: LoadOptions,
  ranges: readonly FileRange[] | undefined,
  opened?: OpenedFile,
): Promise<{ buffer: LoadedBuffer; offsets: number[] }> {
  const o = check(path, options, ranges ? 'loadRanges()' : 'load()');
  if (o.target === 'memory' && !o.into && !ranges && !o.hugetlb && !opened) {
    // Once per machine: the first touch of fresh memory with and without huge pages, measured before this load's
    // clock starts (it is not this load's cost).
    const st = await fsp.stat(path).catch(() => undefined);
    if (st?.isFile()) await measureIfWanted(st.size, o.hugePages !== undefined || thpSetting(undefined) !== undefined);
  }
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  o.signal?.throwIfAborted();
  // A load into a buffer reserves it first: a closed or busy buffer is refused before anything is opened.
  const reserved = o.into?.reserve();
  let src: OpenedFile | undefined = opened;
  let alloc: Allocation | undefined;
  let hash: HashStream | undefined;
  try {
    src ??= await openRef(path, o.io, { ...o.source, signal: o.signal, cache: o.cache });
    const plan = planLoad(src, ranges, reserved ? Infinity : o.budget);
    const check = await verification(src, plan.segments, o.verify);
    if (reserved && plan.capacity > reserved.room) {
      throw new DmaloadError(
        'ERR_BUFFER_TOO_SMALL',
        `'${src.path}' needs ${formatBytes(plan.capacity)} (${plan.size} bytes, rounded up to the direct-I/O block) but the into buffer holds ${formatBytes(reserved.room)}; load it into a larger buffer or without into`,
        { path: src.path },
      );
    }
    o.signal?.throwIfAborted();
    const tAlloc = performance.now();
    // Fresh process memory: huge pages or not, as this machine's measurement says (or the option); hugetlb pages
    // only where the caller asked for them.
    const huge = !reserved && o.target === 'memory' && !o.hugetlb ? await decideHugePages(plan.capacity, thpSetting(o.hugePages)) : undefined;
    const targetOptions = huge ? { ...options, hugePages: huge.huge } : options;
    let fresh: FreshAllocation | undefined;
    if (reserved) {
      alloc = reuse(reserved.alloc, plan.capacity);
    } else {
      fresh = allocateFresh(
        o.target,
        { size: plan.size, capacity: plan.capacity, partSize: o.partSize, path, options: targetOptions as Record<string, unknown> },
        o.hugetlb,
        o.numa,
      );
      alloc = fresh.alloc;
    }
    const allocMs = msSince(tAlloc);
    // io 'auto': ranges already in the page cache are copied from it, the rest read by direct I/O.
    const seen = o.io === 'auto' && src.direct && plan.bytesRead > 0 ? residentPages(src.fd, src.size) : undefined;
    // Residency this user cannot see (null): everything by direct I/O, and the stats say why.
    const resident = seen ?? undefined;
    if (resident?.includes(1)) native.fadvise(src.fd, 0, 0, C.POSIX_FADV_RANDOM); // no readahead of what is not cached
    if (check) hash = new HashStream(src.size, src.path);
    const group = new JobGroup(o.signal);
    // Bytes no range covers, read only to be hashed, alongside the load (a failure of either stops the other).
    const extra = check && check.gaps.length > 0 ? group.add(hashRanges(src, check.gaps, hash!, { tuning: o.tuning, signal: group.signal })) : undefined;
    const r = await uncachedRead(src.fd, src.direct ? 0 : src.rwFlags, src.size, 0, () =>
      schedule({
        src: src!,
        alloc: alloc!,
        segments: plan.segments,
        tuning: o.tuning,
        overlap: o.overlap,
        resident,
        group,
        hash,
        onProgress: o.onProgress && ((bytes) => o.onProgress!({ bytes, total: plan.bytesRead })),
      }),
    );
    r.allocMs += allocMs;
    // A file that shrank (a short read) or grew while we read it: our copy may mix old and new bytes.
    const now = src.remote ? src.size : fstatSync(src.fd).size;
    if (r.short || r.read !== plan.bytesRead || now !== src.size) fileChanged(src.path, 'load', src.size, now);
    let verified: LoadStats['verified'];
    if (check && hash) {
      const extraBytes = (await extra) ?? 0;
      const h = await settle(hash, src.path, check.expected);
      hash = undefined;
      verified = { algorithm: 'sha256', sha256: h.sha256, source: check.expected.source, hashMs: h.hashMs, extraBytes, impl: native.sha256Impl };
    }
    if (resident && r.copiedBytes > 0 && !o.keepCache) dropAdded(src.fd, resident, src.size);
    // Every byte verified: the local copy (cache option) gets its final name.
    if (src.remote?.complete && verified) await src.remote.complete(verified.sha256);
    if (reserved) {
      // The padding past the file that whole-block reads filled; what lies beyond keeps its bytes.
      if (plan.capacity > plan.size) zero(alloc.region!, plan.size, plan.capacity - plan.size);
      const s = stats(src, plan, r, o, t0, c0, 'reused', "the into buffer's memory, already faulted in");
      if (seen === null) s.ioReason ??= RESIDENCY_HIDDEN;
      if (verified) s.verified = verified;
      // The memory keeps its NUMA placement, and the stats keep saying what it is (a pool matches on it).
      if (o.into!.stats.numa) s.numa = o.into!.stats.numa;
      // So are its pages: still the hugetlb pool's (a pool matches on it too).
      if (o.into!.stats.hugetlb) s.hugetlb = o.into!.stats.hugetlb;
      const buffer = reserved.moveTo(src.path, plan.size, reuseParts(o.into!.parts, plan.size), s);
      alloc = undefined;
      return { buffer, offsets: plan.offsets };
    }
    const buffer = finish(src, alloc, plan, r, o, t0, c0, huge, fresh);
    if (seen === null) buffer.stats.ioReason ??= RESIDENCY_HIDDEN;
    if (verified) buffer.stats.verified = verified;
    alloc = undefined;
    return { buffer, offsets: plan.offsets };
  } catch (e) {
    // Bytes that failed verification are never resumed from.
    if ((e as { code?: string }).code === 'ERR_CHECKSUM_MISMATCH') await src?.remote?.discard?.();
    throw e;
  } finally {
    // A load that failed before its hash ended: stop the hash thread (it pins the pages it has not hashed yet).
    if (hash) await hash.cancel();
    if (reserved) reserved.release();
    else alloc?.close();
    await src?.close();
  }
}

/**
 * What this load checks: the expected hash and the file's bytes that the load itself does not read (loadRanges), or
 * undefined. With verify 'auto' a load that would have to read more than an eighth of the file again only to hash
 * it checks nothing; a hash the caller gave is always checked.
 */
async function verification(
  src: OpenedFile,
  segments: readonly number[],
  verify: VerifyOption,
): Promise<{ expected: Expected; gaps: Array<{ offset: number; length: number }> } | undefined> {
  // A local copy is put in place only with the object's SHA-256: computed, at least.
  const v = src.remote?.wantsHash && verify === 'auto' ? true : verify;
  const expected = src.remote ? expectedFrom(src.remote.sha256, v, src.remote.sha256From) : await expectedFor(src.path, verify);
  if (!expected) return undefined;
  const missing = gaps(segments, src.size);
  const extra = missing.reduce((n, g) => n + g.length, 0);
  if (verify === 'auto' && extra > src.size / 8) return undefined; // 'auto' never multiplies a partial load's reads
  return { expected, gaps: missing };
}

/** The into buffer's parts holding a file of `size` bytes: each part's share of it (parts past the end dropped). */
function reuseParts(parts: readonly Part[], size: number): Part[] {
  return parts
    .map((p, k) => ({ ...p, size: Math.max(0, Math.min(size - p.offset, (parts[k + 1]?.offset ?? Infinity) - p.offset)) }))
    .filter((p) => p.size > 0 || p.offset === 0);
}

/** The into buffer's allocation as the schedule sees it: already allocated and faulted in, its parts up to `capacity`. */
function reuse(a: Allocation, capacity: number): Allocation {
  return {
    ...a,
    layout: a.layout
      .filter((p) => p.offset < capacity || p.offset === 0)
      .map((p) => ({ offset: p.offset, length: Math.min(p.length, Math.max(0, capacity - p.offset)) })),
    populateInJob: false,
    allocPart: async () => {},
    finish: () => [],
    close: () => {},
  };
}

/** Where the bytes go: the whole file, or the ranges placed at their file alignment; refused over the budget. */
function planLoad(src: OpenedFile, ranges: readonly FileRange[] | undefined, budget: number): Placement & { size: number } {
  const block = Math.max(PAGE_SIZE, src.align.offsetAlign);
  let plan: Placement;
  if (ranges) {
    const last = ranges.at(-1);
    if (last && last.offset + last.length > src.size) {
      throw new DmaloadError('ERR_OUT_OF_RANGE', `range ${last.offset}+${last.length} is past the end of '${src.path}' (${src.size} bytes)`, {
        path: src.path,
      });
    }
    plan = place(ranges, src.size, block);
  } else {
    const n = src.size;
    plan = { segments: n ? [0, 0, n] : [], offsets: [], capacity: n === 0 ? 0 : roundUp(n, block), bytesRead: n };
  }
  if (plan.capacity > budget) {
    throw new DmaloadError(
      'ERR_MEMORY_BUDGET',
      `'${src.path}' needs ${formatBytes(plan.capacity)} but the memory budget is ${formatBytes(budget)}; free memory or raise the memoryBudget option`,
      { path: src.path },
    );
  }
  // The buffer's own length: the whole file, or the placed ranges.
  return { ...plan, size: ranges ? plan.capacity : src.size };
}

/** Clears the padding, seals, exports the parts, and wraps it all in a LoadedBuffer with its stats. */
function finish(
  src: OpenedFile,
  alloc: Allocation,
  plan: Placement & { size: number },
  r: ScheduleResult,
  o: Checked,
  t0: number,
  c0: NodeJS.CpuUsage,
  huge: { huge: boolean; reason: string } | undefined,
  fresh: FreshAllocation | undefined,
): LoadedBuffer {
  const parts = alloc.finish(plan.size);
  const s = stats(src, plan, r, o, t0, c0, 'fresh', fresh?.reason ?? huge?.reason);
  if (huge) s.hugePages = huge.huge;
  // hugetlb asked for: the pool's pages, or small ones where 'hugetlb-or-small' fell back.
  else if (fresh?.reason !== undefined && o.target === 'memory' && !fresh.hugetlb) s.hugePages = false;
  if (fresh?.hugetlb) s.hugetlb = fresh.hugetlb;
  if (fresh?.numa) s.numa = fresh.numa;
  return new LoadedBuffer(src.path, plan.size, o.target, alloc, parts, s);
}

/**
 * io 'auto' copied from the page cache: why the load was not direct, and how to see a cold one. A first load of a
 * file just written is all in the cache, and "io buffered" alone reads like a failure.
 */
function cachedReason(src: OpenedFile, r: ScheduleResult): string | undefined {
  if (!src.direct || r.copiedBytes === 0) return undefined;
  const what = r.directBytes === 0 ? 'the whole file was' : `${formatBytes(r.copiedBytes)} of the file were`;
  return `${what} in the page cache, so io 'auto' copied from it, faster than reading the device again; load --evict or evict() first to measure a cold load`;
}

function stats(
  src: OpenedFile,
  plan: Placement & { size: number },
  r: ScheduleResult,
  o: Checked,
  t0: number,
  c0: NodeJS.CpuUsage,
  memory: 'fresh' | 'reused',
  memoryReason?: string,
): LoadStats {
  const ms = msSince(t0);
  const eng = engine.engine();
  return {
    io: src.remote
      ? 'network'
      : !src.direct
        ? src.rwFlags
          ? 'uncached'
          : 'buffered'
        : r.copiedBytes === 0
          ? 'direct'
          : r.directBytes > 0
            ? 'mixed'
            : 'buffered',
    directBytes: src.direct ? r.directBytes : 0,
    copiedBytes: src.direct ? r.copiedBytes : r.read,
    ioReason: src.fallbackReason ?? cachedReason(src, r),
    engine: eng.engine,
    engineReason: eng.reason,
    ms,
    allocMs: Math.round(r.allocMs * 100) / 100,
    ioMs: Math.round(r.ioMs * 100) / 100,
    parts: r.parts.map((p) => ({ ...p, size: Math.min(p.size, Math.max(0, plan.size - p.offset)) })),
    overlap: o.overlap,
    cpuMs: cpuMsSince(c0),
    bytesPerSec: ms > 0 ? Math.round(plan.bytesRead / (ms / 1000)) : 0,
    // Network bytes go straight into the buffer: none of them is in the page cache.
    pageCacheBytes: src.remote ? 0 : pageCacheBytes(src.fd, src.size),
    ...(src.remote ? { network: { requests: src.remote.stats.requests, retries: src.remote.stats.retries, connections: src.remote.stats.connections } } : {}),
    bytesRead: plan.bytesRead,
    chunkSize: o.tuning.chunk,
    queueDepth: o.tuning.depth,
    memory,
    memoryReason,
  };
}
