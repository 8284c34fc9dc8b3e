/** load(): a file into a target, every byte, by direct I/O where the file system allows. */
import { fstatSync } from 'node:fs';
import { LoadedBuffer } from '../core/buffer.js';
import type { LoadStats, PartStats } from '../core/buffer.js';
import * as engine from '../engine/engine.js';
import { DmaloadError, invalidType, invalidValue, outOfRange } from '../core/errors.js';
import { fileChanged, openSource } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import { dropAdded, pageCacheBytes, residentPages } from '../pipeline/cache.js';
import { COPY_MIN_RUN, clip, place, splitByResidency, unionMs } from '../pipeline/plan.js';
import type { FileRange } from '../pipeline/plan.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';
import { TARGET_NAMES, targets } from '../targets/index.js';
import type { Allocation, TargetName } from '../targets/index.js';
import { cpuMsSince, enumOption, formatBytes, intOption, memAvailable, msSince, roundUp } from '../core/util.js';

export interface LoadProgress {
  bytes: number;
  total: number;
}

export interface LoadOptions {
  /** Where the bytes land. Default 'memory'. */
  target?: TargetName;
  /**
   * 'direct' (O_DIRECT, no page cache), 'buffered' (through the page cache), or 'auto' (default): ranges of the
   * file already in the page cache are copied from it, the rest is read by direct I/O, both at once. A file system
   * without direct I/O falls back to buffered and says why in `stats.ioReason`.
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
  /** Memory target: request transparent huge pages (env DMALOAD_HUGE_PAGES=1). Default false. */
  hugePages?: boolean;
  /** Refuse files larger than this many bytes before allocating. Default: MemAvailable. */
  memoryBudget?: number;
  /** Called as bytes arrive, at most ~60 times a second, and once at the end. */
  onProgress?: (p: LoadProgress) => void;
  /** Aborting stops within one request, frees everything and rejects with an AbortError. */
  signal?: AbortSignal;
}

const IO_MODES: readonly IoMode[] = ['auto', 'direct', 'buffered'];

/**
 * Loads the whole file at `path` into a new buffer of the chosen target and resolves once every byte is there.
 *
 * Errors: system errors carry `code` (ENOENT, EISDIR, …), `syscall` and `path`; the library's own codes are
 * ERR_NOT_REGULAR_FILE, ERR_MEMORY_BUDGET, ERR_FILE_CHANGED (the file's size changed during the load) and
 * ERR_INVALID_ARG_* for bad options. Nothing stays allocated when it rejects.
 */
export async function load(path: string, options: LoadOptions = {}): Promise<LoadedBuffer> {
  return (await loadInternal(path, options, undefined)).buffer;
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
  for (const [i, r] of ranges.entries()) {
    if (r === null || typeof r !== 'object') throw invalidType(`ranges[${i}]`, 'an object { offset, length }', r);
    if (!Number.isSafeInteger(r.offset) || r.offset < end) throw outOfRange(`ranges[${i}].offset`, `an integer >= ${end} (ranges sorted, not overlapping)`, r.offset);
    if (!Number.isSafeInteger(r.length) || r.length < 1) throw outOfRange(`ranges[${i}].length`, 'an integer >= 1', r.length);
    end = r.offset + r.length;
  }
  return loadInternal(path, options, ranges);
}

async function loadInternal(path: string, options: LoadOptions, ranges: readonly FileRange[] | undefined): Promise<{ buffer: LoadedBuffer; offsets: number[] }> {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  if (typeof path !== 'string' || path === '') throw invalidType('path', 'a non-empty string', path);
  if (options === null || typeof options !== 'object') throw invalidType('options', 'an object', options);
  const targetName = enumOption('target', options.target, TARGET_NAMES, 'memory');
  const target = targets[targetName]!;
  const io = enumOption('io', options.io, IO_MODES, 'auto');
  const tune = engine.tuning(options);
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') throw invalidType('onProgress', 'a function', options.onProgress);
  const signal = options.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidType('signal', 'an AbortSignal', signal);
  const partSize = options.partSize === undefined ? undefined : intOption('partSize', options.partSize, '', 0, PAGE_SIZE, Number.MAX_SAFE_INTEGER);
  if (partSize !== undefined && partSize % PAGE_SIZE !== 0) throw outOfRange('partSize', `a multiple of ${PAGE_SIZE}`, partSize);
  const overlap = options.overlap ?? true;
  if (typeof overlap !== 'boolean') throw invalidType('overlap', 'a boolean', overlap);
  if (options.keepCache !== undefined && typeof options.keepCache !== 'boolean') throw invalidType('keepCache', 'a boolean', options.keepCache);
  const budget = options.memoryBudget ?? memAvailable();
  if (typeof budget !== 'number' || !(budget >= 0)) throw invalidValue('memoryBudget', budget, 'must be a non-negative number of bytes');
  signal?.throwIfAborted();

  const src = await openSource(path, io);
  let alloc: Allocation | undefined;
  try {
    const fileSize = src.size;
    const block = Math.max(PAGE_SIZE, src.align.offsetAlign);
    let plan: { segments: number[]; offsets: number[]; capacity: number; bytesRead: number };
    if (ranges) {
      const last = ranges.at(-1);
      if (last && last.offset + last.length > fileSize) {
        throw new DmaloadError('ERR_OUT_OF_RANGE', `range ${last.offset}+${last.length} is past the end of '${path}' (${fileSize} bytes)`, { path });
      }
      plan = place(ranges, fileSize, block);
    } else {
      plan = { segments: fileSize ? [0, 0, fileSize] : [], offsets: [], capacity: fileSize === 0 ? 0 : roundUp(fileSize, block), bytesRead: fileSize };
    }
    // The buffer's own length: the whole file, or the placed ranges.
    const size = ranges ? plan.capacity : fileSize;
    const capacity = plan.capacity;
    if (capacity > budget) {
      throw new DmaloadError(
        'ERR_MEMORY_BUDGET',
        `'${path}' needs ${formatBytes(capacity)} but the memory budget is ${formatBytes(budget)}; free memory or raise the memoryBudget option`,
        { path },
      );
    }
    signal?.throwIfAborted();
    alloc = target.allocate({ size, capacity, partSize, path, options: options as Record<string, unknown> });
    const eng = engine.engine();
    const total = plan.bytesRead;
    const onProgress = options.onProgress;
    // Progress over parts that may be read at the same time: each part's own count, summed.
    const partDone: number[] = [];
    const report = onProgress && (() => onProgress({ bytes: partDone.reduce((a, b) => a + (b ?? 0), 0), total }));
    // io 'auto': ranges already in the page cache are copied from it, the rest read by direct I/O, both at once.
    const cacheAware = io === 'auto' && src.direct && total > 0;
    const before = cacheAware ? residentPages(src.bufferedFd, fileSize) : undefined;
    if (before && before.includes(1)) native.fadvise(src.bufferedFd, 0, 0, C.POSIX_FADV_RANDOM); // no readahead of what is not cached
    let directBytes = 0;
    let copiedBytes = 0;
    const job = (k: number, segments: number[], direct: boolean, populate: boolean, counts: number[], slot: number) =>
      engine.run({
        fd: direct ? src.fd : src.bufferedFd,
        write: false,
        direct,
        buffer: alloc!.mapping!,
        segments,
        padTo: direct ? src.align.offsetAlign : 1,
        bounce: direct && !alloc!.directInto,
        populate,
        tuning: tune,
        path,
        signal,
        onProgress: report && ((bytes) => ((counts[slot] = bytes), (partDone[k] = counts[0]! + counts[1]!), report())),
      });
    const transferPart = async (k: number, segments: number[], populate = false) => {
      const [direct, copy] = before ? splitByResidency(segments, before, COPY_MIN_RUN) : src.direct ? [segments, []] : [[], segments];
      const counts = [0, 0];
      const rs = await Promise.all([direct.length ? job(k, direct, true, populate, counts, 0) : undefined, copy.length ? job(k, copy, false, populate, counts, 1) : undefined]);
      const [d, c] = rs.map((r) => r?.bytes ?? 0) as [number, number];
      directBytes += src.direct ? d : 0;
      copiedBytes += src.direct ? c : d + c;
      return { bytes: d + c, short: rs.some((r) => r?.short) };
    };
    let allocMs = msSince(t0);
    let ioMs = 0;
    const partStats: PartStats[] = [];
    let read = 0;
    if (alloc.layout.length === 1 && alloc.populateInJob && overlap) {
      // One part of ordinary memory: pages are faulted in on another thread just ahead of the reads.
      const tIo = performance.now();
      const r = total > 0 ? await transferPart(0, plan.segments, true) : undefined;
      read = r?.bytes ?? 0;
      if (r?.short) fileChanged(path, 'load', fileSize, fstatSync(src.fd).size);
      ioMs = msSince(tIo);
      partStats.push({ offset: 0, size, allocMs, ioMs });
    } else {
      // Parts. With overlap, part k+1 is allocated while part k is read, and part k+1's reads start while part
      // k's last ones finish (at most two parts' reads in flight), so the queue never drains between parts.
      // Without, each part is allocated, then read, one after the other.
      const layout = alloc.layout;
      const timed = (k: number) => {
        const t = performance.now();
        return alloc!.allocPart(k).then(() => msSince(t));
      };
      const busy: Array<[number, number]> = [];
      const readPart = (k: number, segs: number[]) => {
        const t = performance.now();
        alloc!.beginWrite?.(k);
        return transferPart(k, segs)
          .then((r) => {
            read += r.bytes;
            if (r.short) fileChanged(path, 'load', fileSize, fstatSync(src.fd).size);
            busy.push([t, performance.now()]);
            return msSince(t);
          })
          .finally(() => alloc!.endWrite?.(k));
      };
      const allocs: Array<Promise<number> | undefined> = layout.length > 0 ? [timed(0)] : [];
      const reads: Array<Promise<number>> = [];
      try {
        for (let k = 0; k < layout.length; k++) {
          const p = layout[k]!;
          const aMs = await allocs[k]!;
          if (overlap && k + 1 < layout.length) allocs[k + 1] = timed(k + 1);
          allocMs += aMs;
          partStats.push({ offset: p.offset, size: Math.min(p.length, Math.max(0, size - p.offset)), allocMs: aMs, ioMs: 0 });
          const segs = clip(plan.segments, p.offset, p.offset + p.length);
          reads[k] = segs.length > 0 ? readPart(k, segs) : Promise.resolve(0);
          // A failed read must not wait for the next allocation to surface.
          reads[k]!.catch(() => {});
          if (!overlap || k + 1 === layout.length) await reads[k];
          else if (k > 0) await reads[k - 1];
          if (!overlap && k + 1 < layout.length) allocs[k + 1] = timed(k + 1);
        }
        for (let k = 0; k < reads.length; k++) {
          const iMs = await reads[k]!;
          partStats[k]!.ioMs = iMs;
        }
        ioMs = unionMs(busy);
      } finally {
        // Never free memory that an allocation or a read still in flight is touching.
        await Promise.allSettled([...allocs, ...reads]);
      }
    }
    if (read !== total) fileChanged(path, 'load', fileSize, fstatSync(src.fd).size);
    // A file that grew (or shrank and grew back) while we read it: our copy may mix old and new bytes.
    const after = fstatSync(src.fd);
    if (after.size !== fileSize) fileChanged(path, 'load', fileSize, after.size);
    if (before && copiedBytes > 0 && !options.keepCache) dropAdded(src.bufferedFd, before, fileSize);
    const parts = alloc.finish(size);
    const ms = msSince(t0);
    const stats: LoadStats = {
      io: copiedBytes === 0 ? (src.direct ? 'direct' : 'buffered') : directBytes > 0 ? 'mixed' : 'buffered',
      directBytes,
      copiedBytes,
      ioReason: src.fallbackReason,
      engine: eng.engine,
      engineReason: eng.reason,
      ms,
      allocMs: Math.round(allocMs * 100) / 100,
      ioMs: Math.round(ioMs * 100) / 100,
      parts: partStats,
      overlap,
      cpuMs: cpuMsSince(c0),
      bytesPerSec: ms > 0 ? Math.round(total / (ms / 1000)) : 0,
      pageCacheBytes: pageCacheBytes(src.fd, fileSize),
      bytesRead: total,
      chunkSize: tune.chunk,
      queueDepth: tune.depth,
    };
    const buf = new LoadedBuffer(path, size, targetName, alloc, parts, stats);
    alloc = undefined;
    return { buffer: buf, offsets: plan.offsets };
  } finally {
    alloc?.close();
    await src.close();
  }
}

