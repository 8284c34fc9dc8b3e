/**
 * Scheduling a load's reads over the parts of its buffer: part k+1 is allocated while part k is read, part k+1's
 * reads start while part k's last ones finish, and io 'auto' copies cached ranges while reading the rest directly,
 * both at once. Every job belongs to one {@link JobGroup}: the first failure stops the others, and the schedule
 * settles only once every job it started has ended — memory and fds are never freed under a running job.
 */
import { msSince } from '../core/util.js';
import * as engine from '../engine/engine.js';
import type { Tuning } from '../engine/engine.js';
import { PAGE_SIZE, native } from '../engine/binding.js';
import type { Hasher, Region, TransferResult } from '../engine/binding.js';
import { DIRECT_WINS_BY, type RateBook } from './io-rates.js';
import type { Allocation } from '../targets/types.js';
import { COPY_MIN_RUN, clip, splitByResidency, unionMs } from './plan.js';
import type { OpenedFile } from './source.js';

/**
 * The jobs one call started. The caller's abort or the first failure aborts the others (through `signal`);
 * `settle()` waits for every job, however it ended; `failure` is the first error, which the call rethrows (the
 * AbortErrors it caused in the other jobs are its echoes).
 */
export class JobGroup {
  readonly signal: AbortSignal;
  #ac = new AbortController();
  #jobs = new Set<Promise<unknown>>();
  #failure: { error: unknown } | undefined;

  constructor(user?: AbortSignal) {
    this.signal = user ? AbortSignal.any([user, this.#ac.signal]) : this.#ac.signal;
  }

  /** Tracks `p`; resolves and rejects as it does. */
  add<T>(p: Promise<T>): Promise<T> {
    this.#jobs.add(p);
    p.then(
      () => this.#jobs.delete(p),
      (e: unknown) => {
        this.#jobs.delete(p);
        if (this.#failure === undefined) {
          this.#failure = { error: e };
          this.#ac.abort(e);
        }
      },
    );
    return p;
  }

  get failure(): { error: unknown } | undefined {
    return this.#failure;
  }

  /** Resolves once every job added so far (and any added meanwhile) has ended. */
  async settle(): Promise<void> {
    while (this.#jobs.size > 0) await Promise.allSettled([...this.#jobs]);
  }
}

export interface ScheduleRequest {
  src: OpenedFile;
  alloc: Allocation;
  /** Flat [fileOffset, bufOffset, length, …], in buffer order. */
  segments: number[];
  tuning: Tuning;
  /** Allocate part k+1 while part k is read. */
  overlap: boolean;
  /** io 'auto': the file's resident pages (1 byte per page), or undefined to read everything one way. */
  resident: Uint8Array | undefined;
  group: JobGroup;
  /** Verification: every read's bytes go to this hash as they arrive. */
  hash?: { hasher: Hasher } | undefined;
  /** io 'auto': this machine's measured rates for the file's device (undefined: io not 'auto'). */
  rates?: RateBook | undefined;
  /** The target's memory is fresh (rates are measured and kept only for fresh memory). */
  fresh?: boolean;
  onProgress: ((bytes: number) => void) | undefined;
}

/** One part's share of a load: where it is, and its allocation and I/O wall times. */
export interface PartStats {
  offset: number;
  size: number;
  allocMs: number;
  ioMs: number;
}

export interface ScheduleResult {
  /** Bytes read, direct and copied. */
  read: number;
  directBytes: number;
  copiedBytes: number;
  /** A read ended early: the file shrank. */
  short: boolean;
  /** io 'auto': bytes of the ranges that were in the page cache (copied, or read directly when that was free first). */
  cachedBytes: number;
  /** io 'auto': the longest each way (direct, copy) ran in one part, for the rates ioReason gives. */
  directMs: number;
  copyMs: number;
  /** io 'auto': how the first part with cached ranges chose (see SplitResult). */
  decided?: 'rates' | 'switched' | 'copy' | undefined;
  allocMs: number;
  ioMs: number;
  parts: PartStats[];
}

/** Allocates and reads every part. Resolves or rejects only when no job of the request runs any more. */
export async function schedule(r: ScheduleRequest): Promise<ScheduleResult> {
  const out: ScheduleResult = { read: 0, directBytes: 0, copiedBytes: 0, short: false, cachedBytes: 0, directMs: 0, copyMs: 0, allocMs: 0, ioMs: 0, parts: [] };
  try {
    await scheduleParts(r, out);
  } catch (e) {
    // What the loop tripped over may be an echo (an AbortError of a job the first failure stopped): report the first.
    r.group.add(Promise.reject(e)).catch(() => {});
  }
  await r.group.settle();
  if (r.group.failure) throw r.group.failure.error;
  return out;
}

async function scheduleParts(r: ScheduleRequest, out: ScheduleResult): Promise<void> {
  const { alloc, group } = r;
  const layout = alloc.layout;
  // One part of ordinary memory: its pages are faulted in by the read job itself, just ahead of the reads.
  const inJob = layout.length === 1 && alloc.populateInJob && r.overlap;
  const partDone = layout.map(() => 0);
  const report = r.onProgress && (() => r.onProgress!(partDone.reduce((a, b) => a + b, 0)));
  const busy: Array<[number, number]> = [];
  const allocate = (k: number): Promise<number> => {
    if (inJob) return Promise.resolve(0);
    const t = performance.now();
    return group.add(alloc.allocPart(k).then(() => msSince(t)));
  };
  const readPart = async (k: number, segs: number[]): Promise<number> => {
    const t = performance.now();
    alloc.beginWrite?.(k);
    try {
      const counts = [0, 0, 0, 0];
      const progress = report && ((slot: number, bytes: number) => ((counts[slot] = bytes), (partDone[k] = counts.reduce((a, b) => a + b, 0)), report()));
      const res = await readSplit(r, segs, inJob, progress);
      out.read += res.direct + res.copied;
      out.directBytes += res.direct;
      out.copiedBytes += res.copied;
      out.short ||= res.short;
      out.cachedBytes += res.cached ?? 0;
      out.directMs = Math.max(out.directMs, res.directMs ?? 0);
      out.copyMs = Math.max(out.copyMs, res.copyMs ?? 0);
      out.decided ??= res.decided;
    } finally {
      alloc.endWrite?.(k);
    }
    busy.push([t, performance.now()]);
    return msSince(t);
  };

  const allocs: Array<Promise<number>> = layout.length > 0 ? [allocate(0)] : [];
  const reads: Array<Promise<number>> = [];
  for (let k = 0; k < layout.length; k++) {
    const p = layout[k]!;
    const aMs = await allocs[k]!;
    if (r.overlap && k + 1 < layout.length) allocs[k + 1] = allocate(k + 1);
    out.allocMs += aMs;
    out.parts.push({ offset: p.offset, size: p.length, allocMs: aMs, ioMs: 0 });
    const segs = clip(r.segments, p.offset, p.offset + p.length);
    reads[k] = segs.length > 0 ? group.add(readPart(k, segs)) : Promise.resolve(0);
    // At most two parts' reads in flight: the queue never drains between parts.
    if (!r.overlap || k + 1 === layout.length) await reads[k];
    else if (k > 0) await reads[k - 1];
    if (!r.overlap && k + 1 < layout.length) allocs[k + 1] = allocate(k + 1);
  }
  for (let k = 0; k < reads.length; k++) out.parts[k]!.ioMs = await reads[k]!;
  out.ioMs = unionMs(busy);
}

/**
 * Faults in the segments' pages in buffer order, 32 MiB at a time, until `done` (MADV_POPULATE_WRITE keeps bytes);
 * `huge`: in huge folios where the mapping allows (Allocation.hugeFolios).
 */
async function populateAhead(region: Region, segments: readonly number[], done: { yes: boolean }, huge: boolean): Promise<void> {
  const step = 32 << 20;
  for (let i = 0; i < segments.length && !done.yes; i += 3) {
    const start = Math.floor(segments[i + 1]! / PAGE_SIZE) * PAGE_SIZE;
    const end = segments[i + 1]! + segments[i + 2]!;
    for (let at = start; at < end && !done.yes; at += step) await native.populate(region, at, Math.min(step, end - at), huge);
  }
}

/** How CopyProbe times the copy: from PROBE_FROM bytes on (start-up is not its rate), over these many bytes and ms. */
const PROBE_FROM = 4 << 20;
const PROBE_BYTES = 32 << 20;
const PROBE_MS = 20;

/** What readSplit moved: bytes each way, the cached bytes of io 'auto' and how long each way ran. */
interface SplitResult {
  direct: number;
  copied: number;
  short: boolean;
  /** Bytes of ranges that were in the page cache (io 'auto'), whichever way they were read. */
  cached?: number;
  /**
   * io 'auto' with cached ranges: 'rates' (read directly: known rates said so), 'switched' (the copy proved slower
   * and direct I/O took the rest), 'copy' (copying kept), undefined (too little to tell).
   */
  decided?: 'rates' | 'switched' | 'copy' | undefined;
  directMs?: number;
  copyMs?: number;
}

/**
 * Times the copy of cached ranges (io 'auto' with no copy rate known) from when it has moved PROBE_FROM bytes over
 * PROBE_BYTES and PROBE_MS at least, against direct I/O running beside it (or, with none running, the device's known
 * rate); when direct I/O is faster by DIRECT_WINS_BY, `lose()` hands the rest to it. A copy timed alone, into fresh
 * memory and with no hash setting the pace, is kept as this machine's copy rate.
 */
class CopyProbe {
  decided: 'copy' | 'switched' | undefined;
  #moved = [0, 0];
  #from: { t: number; copy: number; direct: number } | undefined;

  constructor(
    readonly book: RateBook,
    readonly keep: boolean,
    readonly directRunning: () => boolean,
    readonly lose: () => void,
  ) {}

  /** Progress of slot 0 (direct I/O) or 1 (the copy). */
  see(slot: number, bytes: number): void {
    if (slot > 1 || this.decided) return;
    this.#moved[slot] = bytes;
    if (slot !== 1 || bytes < PROBE_FROM) return;
    const now = performance.now();
    const from = (this.#from ??= { t: now, copy: bytes, direct: this.#moved[0]! });
    const dt = now - from.t;
    if (bytes - from.copy < PROBE_BYTES || dt < PROBE_MS) return;
    const copyRate = (bytes - from.copy) / dt;
    const alone = !this.directRunning();
    const directRate = alone ? this.book.direct : (this.#moved[0]! - from.direct) / dt;
    if (alone && this.keep) this.book.note('copy', bytes - from.copy, dt, PROBE_BYTES);
    this.decided = directRate && directRate > DIRECT_WINS_BY * copyRate ? 'switched' : 'copy';
    if (this.decided === 'switched') this.lose();
  }
}

/** Reads segments into the buffer from a network source, its fresh pages faulted in ahead on a native thread. */
async function readRemote(
  r: ScheduleRequest,
  segments: number[],
  populate: boolean,
  progress: ((slot: number, bytes: number) => void) | undefined,
): Promise<SplitResult> {
  const { src, alloc } = r;
  // As the engine does for file reads: otherwise every first write to a page faults on the JS thread that parses the
  // responses.
  const done = { yes: false };
  const fill = populate ? r.group.add(populateAhead(alloc.region!, segments, done, alloc.hugeFolios === true)) : undefined;
  try {
    const n = await r.group.add(
      src.remote!.readInto(alloc.region!, segments, { signal: r.group.signal, hash: r.hash?.hasher, onProgress: progress && ((b) => progress(1, b)) }),
    );
    return { direct: 0, copied: n, short: false };
  } finally {
    done.yes = true;
    await fill?.catch(() => {});
  }
}

/**
 * Reads segments into the buffer: io 'auto''s cached ranges copied or read directly (as this machine's measured
 * rates say, or as timing the copy shows), the rest direct (or all one way), the jobs at once.
 */
async function readSplit(
  r: ScheduleRequest,
  segments: number[],
  populate: boolean,
  progress: ((slot: number, bytes: number) => void) | undefined,
): Promise<SplitResult> {
  const { src, alloc } = r;
  if (src.remote) return readRemote(r, segments, populate, progress);
  let [direct, copy] = !src.direct ? [[], segments] : r.resident ? splitByResidency(segments, r.resident, COPY_MIN_RUN) : [segments, []];
  const cached = src.direct ? copy.reduce((n, v, i) => (i % 3 === 2 ? n + v : n), 0) : 0;
  const book = src.direct ? r.rates : undefined;
  // Cached ranges are copied unless this machine's measured rates say direct I/O of the same bytes is faster (a host
  // that caches the disk, costly fresh pages: 0.7 GB/s copying against 2.5 direct on one VM).
  let decided: SplitResult['decided'];
  if (cached > 0 && book?.copy && book.direct) decided = book.direct > DIRECT_WINS_BY * book.copy ? 'rates' : 'copy';
  if (decided === 'rates') [direct, copy] = [segments, []];
  // The copy takes the cached ranges from the front of a share; direct I/O, once the copy lost, from its back.
  const share = src.direct && copy.length > 0 ? native.workShare(copy) : undefined;
  const ms = [0, 0, 0, 0];
  const job = (segs: number[], isDirect: boolean, slot: number, withShare = share) => {
    const t = performance.now();
    return r.group.add(
      engine
        .run({
          fd: isDirect ? src.directFd : src.fd,
          write: false,
          direct: isDirect,
          target: alloc.region!,
          segments: segs,
          padTo: isDirect ? src.align.offsetAlign : 1,
          bounce: isDirect && !alloc.directInto,
          populate,
          collapse: populate && alloc.hugeFolios === true,
          // Uncached buffered reads where there is no O_DIRECT (io 'uncached', or 'auto' where the file system takes
          // them); io 'auto''s copies of cached ranges stay plain (what they add is dropped afterwards).
          rwFlags: isDirect || src.direct ? 0 : src.rwFlags,
          hash: r.hash?.hasher,
          ...(withShare ? { share: withShare, shareBack: isDirect } : {}),
          tuning: r.tuning,
          path: src.path,
          signal: r.group.signal,
          // Only when someone listens: each report is a call onto the JS thread.
          onProgress:
            probe || progress
              ? (bytes) => {
                  probe?.see(slot, bytes);
                  progress?.(slot, bytes);
                }
              : undefined,
        })
        .then((res) => ((ms[slot] = msSince(t)), res)),
    );
  };
  let late: Promise<TransferResult> | undefined;
  let directDone = direct.length === 0;
  const probe =
    share && book && !decided
      ? new CopyProbe(
          book,
          Boolean(r.fresh && !r.hash),
          () => !directDone,
          () => {
            native.workShareSwitch(share);
            // Another direct job takes from the back: the first may be past its last request already.
            late = job([], true, 2);
          },
        )
      : undefined;
  const [d, c] = await Promise.all([
    direct.length || share ? job(direct, true, 0).finally(() => (directDone = true)) : undefined,
    copy.length ? job(share ? [] : copy, false, 1) : undefined,
  ]);
  const l = await late;
  decided ??= probe?.decided;
  // What no direct read could take (an unaligned end of file) is copied.
  const rest = share && decided === 'switched' ? native.workShareRest(share) : [];
  const tail = rest.length ? await job(rest, false, 3, undefined) : undefined;
  const out = {
    direct: (d?.bytes ?? 0) + (l?.bytes ?? 0),
    copied: (c?.bytes ?? 0) + (tail?.bytes ?? 0),
    short: Boolean(d?.short || c?.short || l?.short || tail?.short),
    cached,
    directMs: Math.max(ms[0]!, ms[2]!),
    copyMs: ms[1]!,
    decided,
  };
  // Rates of one way running alone, into fresh memory, with no hash setting the pace.
  if (book && r.fresh && !r.hash && !late) {
    if (out.copied === 0) book.note('direct', out.direct, out.directMs);
    else if (direct.length === 0) book.note('copy', out.copied, out.copyMs);
  }
  return out;
}
