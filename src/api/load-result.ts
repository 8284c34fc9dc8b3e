/**
 * What a load that read every byte returns: the LoadedBuffer (fresh memory sealed and exported, or the into buffer's
 * memory moved to a new buffer) and its stats (what was read how, what it cost, what was checked).
 */
import { LoadedBuffer } from './buffer.js';
import type { LoadStats } from './buffer.js';
import { cpuMsSince, formatBytes, msSince } from '../core/util.js';
import * as engine from '../engine/engine.js';
import { zero } from '../engine/memory.js';
import { RESIDENCY_HIDDEN, pageCacheBytes } from '../pipeline/cache.js';
import type { Placement } from '../pipeline/plan.js';
import { ioRatesPath } from '../pipeline/io-rates.js';
import type { ScheduleResult } from '../pipeline/schedule.js';
import type { OpenedFile } from '../pipeline/source.js';
import type { Allocation, Part } from '../targets/index.js';
import type { Checked } from './load-options.js';
import type { FreshAllocation } from './pages.js';

/** A load whose bytes are all in place: what it read, how, and what it checked. */
export interface LoadDone {
  src: OpenedFile;
  plan: Placement & { size: number };
  r: ScheduleResult;
  o: Checked;
  /** When the load's clock started (performance.now()), and the CPU time then. */
  t0: number;
  c0: NodeJS.CpuUsage;
  /** The page cache's residency was hidden from this user (null from residentPages): all of it by direct I/O. */
  hidden: boolean;
  verified: LoadStats['verified'];
}

/** Clears the padding, seals, exports the parts, and wraps it all in a LoadedBuffer with its stats. */
export function finish(
  done: LoadDone,
  alloc: Allocation,
  huge: { huge: boolean; reason: string } | undefined,
  fresh: FreshAllocation | undefined,
): LoadedBuffer {
  const { src, plan, o } = done;
  const parts = alloc.finish(plan.size);
  const s = stats(done, 'fresh', fresh?.reason ?? huge?.reason);
  if (huge) s.hugePages = huge.huge;
  // hugetlb asked for: the pool's pages, or small ones where 'hugetlb-or-small' fell back.
  else if (fresh?.reason !== undefined && o.target === 'memory' && !fresh.hugetlb) s.hugePages = false;
  if (fresh?.hugetlb) s.hugetlb = fresh.hugetlb;
  if (fresh?.numa) s.numa = fresh.numa;
  const buffer = new LoadedBuffer(src.path, plan.size, o.target, alloc, parts, s);
  if (done.hidden) buffer.stats.ioReason ??= RESIDENCY_HIDDEN;
  if (done.verified) buffer.stats.verified = done.verified;
  return buffer;
}

/** load({ into }): the into buffer's memory, its padding cleared, moved into a new LoadedBuffer (`into` is closed). */
export function finishReused(done: LoadDone, alloc: Allocation, reserved: ReturnType<LoadedBuffer['reserve']>, into: LoadedBuffer): LoadedBuffer {
  const { src, plan } = done;
  // The padding past the file that whole-block reads filled; what lies beyond keeps its bytes.
  if (plan.capacity > plan.size) zero(alloc.region!, plan.size, plan.capacity - plan.size);
  const s = stats(done, 'reused', "the into buffer's memory, already faulted in");
  if (done.hidden) s.ioReason ??= RESIDENCY_HIDDEN;
  if (done.verified) s.verified = done.verified;
  // The memory keeps its NUMA placement, and the stats keep saying what it is (a pool matches on it).
  if (into.stats.numa) s.numa = into.stats.numa;
  // So are its pages: still the hugetlb pool's (a pool matches on it too).
  if (into.stats.hugetlb) s.hugetlb = into.stats.hugetlb;
  return reserved.moveTo(src.path, plan.size, reuseParts(into.parts, plan.size), s);
}

/** The into buffer's parts holding a file of `size` bytes: each part's share of it (parts past the end dropped). */
function reuseParts(parts: readonly Part[], size: number): Part[] {
  return parts
    .map((p, k) => ({ ...p, size: Math.max(0, Math.min(size - p.offset, (parts[k + 1]?.offset ?? Infinity) - p.offset)) }))
    .filter((p) => p.size > 0 || p.offset === 0);
}

/**
 * io 'auto' copied from the page cache: why the load was not direct, and how to see a cold one. A first load of a
 * file just written is all in the cache, and "io buffered" alone reads like a failure.
 */
function cachedReason(src: OpenedFile, r: ScheduleResult): string | undefined {
  if (!src.direct || r.cachedBytes === 0) return undefined;
  const what = r.cachedBytes >= r.read ? 'the whole file was' : `${formatBytes(r.cachedBytes)} of the file were`;
  const rate = (bytes: number, ms: number) => (ms > 0 && bytes > 0 ? ` at ${((bytes / ms) * 1e-6).toFixed(2)} GB/s` : '');
  const how = {
    rates: `io 'auto' read it by direct I/O${rate(r.directBytes, r.directMs)}, which this machine's measured rates say is faster than copying from the cache (${ioRatesPath()})`,
    switched: `io 'auto' began copying from it${rate(r.copiedBytes, r.copyMs)} and, that being slower here than direct I/O, read the rest directly (${formatBytes(r.directBytes)}${rate(r.directBytes, r.directMs)})`,
    copy: `io 'auto' copied ${formatBytes(r.copiedBytes)} from it${rate(r.copiedBytes, r.copyMs)}, faster here than reading the device again`,
  }[r.decided ?? 'copy'];
  return `${what} in the page cache: ${how}; load --evict or evict() first to measure a cold load`;
}

function stats({ src, plan, r, o, t0, c0 }: LoadDone, memory: 'fresh' | 'reused', memoryReason?: string): LoadStats {
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
