/** load(): a file into a target, every byte, by direct I/O where the file system allows. */
import { fstatSync, promises as fsp } from 'node:fs';
import type { LoadStats, LoadedBuffer } from './buffer.js';
import { AbortError, DmaloadError, invalidType, invalidValue, outOfRange } from '../core/errors.js';
import { formatBytes, msSince, roundUp } from '../core/util.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';
import { decideHugePages, decideShmemFolios, measureIfWanted } from '../engine/first-touch.js';
import { dropAdded, residentPages, uncachedRead } from '../pipeline/cache.js';
import { rateBook } from '../pipeline/io-rates.js';
import type { RateBook } from '../pipeline/io-rates.js';
import { place } from '../pipeline/plan.js';
import type { FileRange, Placement } from '../pipeline/plan.js';
import { JobGroup, schedule } from '../pipeline/schedule.js';
import type { ScheduleResult } from '../pipeline/schedule.js';
import { fileChanged } from '../pipeline/source.js';
import { openRef } from '../pipeline/sources/open.js';
import { scrubbed } from '../pipeline/sources/resolve.js';
import { HashStream, expectedFor, expectedFrom, gaps, hashRanges, settle } from '../pipeline/verify.js';
import type { Expected } from '../pipeline/verify.js';
import type { OpenedFile } from '../pipeline/source.js';
import type { Allocation } from '../targets/index.js';
import { check } from './load-options.js';
import type { Checked, LoadOptions } from './load-options.js';
import { finish, finishReused } from './load-result.js';
import type { LoadDone } from './load-result.js';
import { thpSetting } from './options.js';
import type { VerifyOption } from './options.js';
import { allocateFresh } from './pages.js';
import type { FreshAllocation } from './pages.js';

// The options are load-options.ts's; load() is where callers (and the package's index) find them.
export { LOAD_OPTION_NAMES, LOAD_OPTIONS } from './load-options.js';
export type { LoadOptions, LoadProgress } from './load-options.js';

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
  if (o.target === 'memory' && !o.into && !ranges && !o.hugetlb && !opened) await measureFirstTouch(path, o);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  if (o.signal?.aborted) throw new AbortError(undefined, { cause: o.signal.reason });
  // A load into a buffer reserves it first: a closed or busy buffer is refused before anything is opened.
  const reserved = o.into?.reserve();
  let src: OpenedFile | undefined = opened;
  let alloc: Allocation | undefined;
  let hash: HashStream | undefined;
  try {
    src ??= await openRef(path, o.io, { ...o.source, signal: o.signal, cache: o.cache });
    const plan = planLoad(src, ranges, reserved ? Infinity : o.budget);
    const check = await verification(src, plan.segments, o.verify);
    if (reserved && plan.capacity > reserved.room) throw tooSmall(src, plan, reserved.room);
    if (o.signal?.aborted) throw new AbortError(undefined, { cause: o.signal.reason });
    const tAlloc = performance.now();
    // Fresh process memory: huge pages or not, as this machine's measurement says (or the option); a fresh memfd:
    // huge folios where the kernel makes them; hugetlb pages only where the caller asked for them.
    const freshPages = !reserved && !o.hugetlb;
    const huge =
      freshPages && o.target === 'memory'
        ? await decideHugePages(plan.capacity, thpSetting(o.hugePages))
        : freshPages && o.target === 'memfd'
          ? decideShmemFolios(plan.capacity, thpSetting(o.hugePages), o.numa?.node === 'interleave' && (o.numa.nodes?.length ?? 0) > 1)
          : undefined;
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
    const rates = o.io === 'auto' && src.direct && src.stat ? rateBook(src.stat.dev) : undefined;
    const { r, extra } = await readAll(src, alloc, plan, o, { resident, rates, fresh: !reserved }, check, hash);
    r.allocMs += allocMs;
    // A file that shrank (a short read) or grew while we read it: our copy may mix old and new bytes.
    const now = src.remote || src.checkedByCaller ? src.size : fstatSync(src.fd).size;
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
    const done: LoadDone = { src, plan, r, o, t0, c0, hidden: seen === null, verified };
    const buffer = reserved ? finishReused(done, alloc, reserved, o.into!) : finish(done, alloc, huge, fresh);
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
 * Once per machine: the first touch of fresh memory with and without huge pages, measured before this load's clock
 * starts (it is not this load's cost).
 */
async function measureFirstTouch(path: string, o: Checked): Promise<void> {
  const st = await fsp.stat(path).catch(() => undefined);
  if (st?.isFile()) await measureIfWanted(st.size, o.hugePages !== undefined || thpSetting(undefined) !== undefined);
}

/** ERR_BUFFER_TOO_SMALL: the into buffer cannot hold the file. */
function tooSmall(src: OpenedFile, plan: Placement & { size: number }, room: number): DmaloadError {
  return new DmaloadError(
    'ERR_BUFFER_TOO_SMALL',
    `'${src.path}' needs ${formatBytes(plan.capacity)} (${plan.size} bytes, rounded up to the direct-I/O block) but the into buffer holds ${formatBytes(room)}; load it into a larger buffer or without into`,
    { path: src.path },
  );
}

/** What a load checks (see verification()): the expected hash, and the bytes read only to hash them. */
type Verification = { expected: Expected; gaps: Array<{ offset: number; length: number }> };

/**
 * Reads the plan into `alloc` and, to be hashed only, the bytes no range covers (`extra`: how many), alongside it in
 * one JobGroup: a failure of either stops the other.
 */
async function readAll(
  src: OpenedFile,
  alloc: Allocation,
  plan: Placement & { size: number },
  o: Checked,
  how: { resident: Uint8Array | undefined; rates: RateBook | undefined; fresh: boolean },
  check: Verification | undefined,
  hash: HashStream | undefined,
): Promise<{ r: ScheduleResult; extra: Promise<number> | undefined }> {
  const group = new JobGroup(o.signal);
  const extra = check && check.gaps.length > 0 ? group.add(hashRanges(src, check.gaps, hash!, { tuning: o.tuning, signal: group.signal })) : undefined;
  const r = await uncachedRead(src.fd, src.direct ? 0 : src.rwFlags, src.size, 0, () =>
    schedule({
      src,
      alloc,
      segments: plan.segments,
      tuning: o.tuning,
      overlap: o.overlap,
      ...how,
      group,
      hash,
      onProgress:
        o.onProgress &&
        ((bytes) => {
          const n = src.remote?.stats;
          o.onProgress!({ bytes, total: plan.bytesRead, ...(n ? { network: { connections: n.connections, retries: n.retries } } : {}) });
        }),
    }),
  );
  return { r, extra };
}

/**
 * What this load checks: the expected hash and the file's bytes that the load itself does not read (loadRanges), or
 * undefined. With verify 'auto' a load that would have to read more than an eighth of the file again only to hash
 * it checks nothing; a hash the caller gave is always checked.
 */
async function verification(src: OpenedFile, segments: readonly number[], verify: VerifyOption): Promise<Verification | undefined> {
  // A local copy is put in place only with the object's SHA-256: computed, at least.
  const v = src.remote?.wantsHash && verify === 'auto' ? true : verify;
  const expected = src.remote ? expectedFrom(src.remote.sha256, v, src.remote.sha256From) : await expectedFor(src.path, verify, src.resolvedPath);
  if (!expected) return undefined;
  const missing = gaps(segments, src.size);
  const extra = missing.reduce((n, g) => n + g.length, 0);
  if (verify === 'auto' && extra > src.size / 8) return undefined; // 'auto' never multiplies a partial load's reads
  return { expected, gaps: missing };
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
