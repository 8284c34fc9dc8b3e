/**
 * copy(): file to file by direct I/O on both sides, streaming through a ring of aligned slots: reads on one
 * persistent queue run ahead into free slots while earlier slots are written in place on the writer's queue, and a
 * slot is read again as soon as its write is done, replacing the destination atomically. Memory use is the ring,
 * whatever the file size; neither file is left in the page cache.
 */
import { setMaxListeners } from 'node:events';
import { fstatSync, statSync } from 'node:fs';
import { DmaloadError } from '../core/errors.js';
import { roundUp } from '../core/util.js';
import { native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { IoQueue } from '../engine/engine.js';
import { anonymous } from '../engine/memory.js';
import { dropAdded, residentPages } from '../pipeline/cache.js';
import { fileChanged } from '../pipeline/source.js';
import { openRef } from '../pipeline/sources/open.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import type { IoMode, OpenedFile } from '../pipeline/source.js';
import { HashStream, expectedFor, expectedFrom, settle } from '../pipeline/verify.js';
import type { Expected, VerifiedStats } from '../pipeline/verify.js';
import {
  aliased,
  DEFAULTS,
  functionOption,
  ioOption,
  knob,
  modeOption,
  optionNames,
  optionsObject,
  pathOption,
  signalOption,
  sourceOption,
  tuning,
  verifyOption,
} from './options.js';
import type { VerifyOption } from './options.js';
import { openWriter } from './writer.js';
import type { CaptureWriter, WriterResult } from './writer.js';

export interface CopyOptions {
  /**
   * 'auto' (default): direct I/O on both sides where the file systems allow (else uncached where they allow that);
   * 'direct' requires it; 'uncached' (RWF_DONTCACHE) requires that; 'buffered'.
   */
  io?: IoMode;
  /**
   * The ring's memory is partSize × parts (default 128 MiB × 2), in slots of one request (chunkSize) each; reads
   * run ahead into free slots while earlier ones are written. A multiple of 4096.
   */
  partSize?: number;
  /** See partSize. Default 2. */
  parts?: number;
  /** Bytes per request, reads and writes. Default 8 MiB; env DMALOAD_CHUNK_SIZE. */
  chunkSize?: number;
  /** Requests in flight, reads and writes each (one persistent queue each). Default 16; env DMALOAD_QUEUE_DEPTH. */
  queueDepth?: number;
  /** @deprecated The former name of `partSize`. */
  slotSize?: number;
  /** @deprecated The former name of `parts`. */
  slots?: number;
  /** File mode of a new destination. Default: the replaced file's, else the source's. */
  mode?: number;
  onProgress?: (p: { bytes: number; total: number }) => void;
  signal?: AbortSignal;
  /**
   * Check the source's SHA-256 while it is copied, as load()'s option: 'auto' (default: a hub-cache blob's name),
   * true (also compute and report it with nothing to compare), false, or `{ sha256 }`. A mismatch is
   * ERR_CHECKSUM_MISMATCH and no destination appears (the one there stays as it was).
   */
  verify?: VerifyOption;
  /** For a URL or a hub reference as `src`: load()'s network options (docs/sources.md). */
  source?: SourceOptions;
}

export interface CopyResult extends WriterResult {
  readIo: 'direct' | 'buffered' | 'uncached' | 'network';
  /** What was verified, when something was. */
  verified?: VerifiedStats | undefined;
}

const COPY_OPTIONS = optionNames<CopyOptions>()([
  'io',
  'partSize',
  'parts',
  'chunkSize',
  'queueDepth',
  'slotSize',
  'slots',
  'mode',
  'onProgress',
  'signal',
  'verify',
  'source',
]);

/** copy()'s options, checked against the schema. */
function checkCopy(src: string, dst: string, options: CopyOptions) {
  pathOption('src', src);
  pathOption('dst', dst);
  const o = optionsObject(options, COPY_OPTIONS, 'copy()') as CopyOptions & Record<string, unknown>;
  const io = ioOption(o.io);
  // Measured (README, npm run bench:cp): this disk wants a lot in flight when reads and writes mix.
  const partSize = knob(
    'partSize',
    aliased(o, 'partSize', 'slotSize'),
    DEFAULTS.copy.partSize,
    o.partSize === undefined && o.slotSize !== undefined ? 'slotSize' : 'partSize',
  );
  const parts = knob('parts', aliased(o, 'parts', 'slots'), DEFAULTS.copy.parts, o.parts === undefined && o.slots !== undefined ? 'slots' : 'parts');
  const tune = tuning('copy', o);
  const mode = modeOption(o.mode);
  const onProgress = functionOption<NonNullable<CopyOptions['onProgress']>>('onProgress', o.onProgress);
  const signal = signalOption(o.signal);
  const verify = verifyOption(o.verify);
  const net = sourceOption(o.source);
  return { io, partSize, parts, tune, mode, onProgress, signal, verify, net };
}

/** Copies `src` to `dst`; refuses the same file (ERR_SAME_FILE) and a folder as destination. */
export async function copy(src: string, dst: string, options: CopyOptions = {}): Promise<CopyResult> {
  const o = checkCopy(src, dst, options);
  o.signal?.throwIfAborted();
  const source = await openRef(src, o.io, { ...o.net, signal: o.signal });
  // The hash thread, once stream() starts one: cancelled here if the copy fails before the hash is settled.
  const hashing: { stream?: HashStream | undefined } = {};
  try {
    const expected = source.remote ? expectedFrom(source.remote.sha256, o.verify, source.remote.sha256From) : await expectedFor(source.path, o.verify);
    const d = statSync(dst, { throwIfNoEntry: false });
    if (d && source.stat && d.ino === source.stat.ino && d.dev === source.stat.dev)
      throw new DmaloadError('ERR_SAME_FILE', `'${src}' and '${dst}' are the same file`, { path: dst });
    if (d?.isDirectory()) throw new DmaloadError('ERR_IS_DIRECTORY', `'${dst}' is a directory; give the destination file's full path`, { path: dst });
    const size = source.size;
    // The ring: slots of one request each (chunkSize), as much memory as partSize × parts (256 MiB by default),
    // never more than the file needs. Reads run ahead on one persistent queue, writes on the writer's; a slot is
    // read again once its write is done, so both queues stay full with no pause between parts.
    // A network source: one ranged GET per slot, big enough that a request's first-byte wait is small beside it.
    const chunk = Math.min(source.remote ? Math.max(o.tune.chunk, 16 << 20) : o.tune.chunk, roundUp(Math.max(size, 1), 4096));
    const nChunks = Math.ceil(size / chunk);
    const nSlots = Math.max(1, Math.min(nChunks, Math.max(2, Math.floor((o.partSize * o.parts) / chunk))));
    // Transparent huge pages: physically contiguous 2 MiB runs let one device request carry a whole chunk where a
    // driver takes few segments per request (virtio-blk here: 254, so about 1 MiB of 4 KiB pages). Measured on
    // the reference machine: a cold 1 GiB copy 0.9–1.4 s with them, 1.6–1.9 s without (README).
    const ring = anonymous(chunk * nSlots, true, src);
    let readQ: IoQueue | undefined;
    try {
      readQ = source.remote
        ? undefined
        : new IoQueue(source.direct ? source.directFd : source.fd, {
            write: false,
            direct: source.direct,
            depth: o.tune.depth,
            path: src,
            rwFlags: source.direct ? 0 : source.rwFlags,
          });
      const writer = await openWriter(dst, {
        io: o.io,
        mode: o.mode ?? (d ? d.mode & 0o7777 : (source.stat?.mode ?? 0o644) & 0o7777),
        chunkSize: chunk,
        queueDepth: o.tune.depth,
        expectedSize: size,
        signal: o.signal,
      });
      return await stream({ src, source, ring, q: readQ, writer, chunk, nChunks, nSlots, expected, hashing, onProgress: o.onProgress, signal: o.signal });
    } finally {
      await readQ?.close();
      native.munmap(ring);
    }
  } finally {
    if (hashing.stream) await hashing.stream.cancel();
    await source.close();
  }
}

/** What one copy streams: the source and its read queue (none for a network source), the writer, the ring. */
interface Stream {
  src: string;
  source: OpenedFile;
  ring: Region;
  q: IoQueue | undefined;
  writer: CaptureWriter;
  /** Bytes per slot (one request), chunks in the file, slots in the ring. */
  chunk: number;
  nChunks: number;
  nSlots: number;
  expected: Expected | undefined;
  hashing: { stream?: HashStream | undefined };
  onProgress: CopyOptions['onProgress'];
  signal: AbortSignal | undefined;
}

/**
 * The ring at work: reads run ahead into free slots, each slot is written (and hashed) in file order and read into
 * again once done; then the hash is checked and the destination put in place. On a failure the reads are stopped
 * and the writer aborted (the destination stays as it was).
 */
async function stream({ src, source, ring, q, writer, chunk, nChunks, nSlots, expected, hashing, onProgress, signal }: Stream): Promise<CopyResult> {
  const size = source.size;
  const remote = source.remote;
  const stopRemote = new AbortController();
  // Every slot's read listens to it: as many listeners as slots, not a leak.
  setMaxListeners(2 * nSlots + 16, stopRemote.signal);
  const onAbort = () => (q ? q.cancel() : stopRemote.abort(signal?.reason));
  signal?.addEventListener('abort', onAbort, { once: true });
  // Uncached reads (no O_DIRECT): what they leave in the page cache is dropped at the end.
  const before = !source.direct && source.rwFlags ? residentPages(source.fd, size) : undefined;
  const reads: Array<Promise<number>> = [];
  if (expected) hashing.stream = new HashStream(size, src);
  const hash = hashing.stream;
  const slotFree: Array<Promise<void>> = Array.from({ length: nSlots }, () => Promise.resolve());
  const lengthOf = (i: number) => Math.min(chunk, size - i * chunk);
  // Reads run ahead of the loop's awaits: mark them handled now, the loop (or the finally) sees their errors.
  const read = (i: number) => {
    const s = i % nSlots;
    const len = lengthOf(i);
    const asked = source.direct ? roundUp(len, source.align.offsetAlign) : len;
    const p = slotFree[s]!.then(() =>
      q ? q.submit(ring, s * chunk, i * chunk, asked) : remote!.readInto(ring, [i * chunk, s * chunk, len], { signal: stopRemote.signal }),
    );
    p.catch(() => {});
    reads[i] = p;
  };
  try {
    for (let i = 0; i < Math.min(nSlots, nChunks); i++) read(i);
    let done = 0;
    for (let i = 0; i < nChunks; i++) {
      const len = lengthOf(i);
      const got = await reads[i]!;
      if (got < len) fileChanged(src, 'copy', size, remote ? got : fstatSync(source.fd).size);
      // The hash follows the reads on its own thread; a slot is read into again once written and hashed.
      hash?.feed(ring, (i % nSlots) * chunk, i * chunk, len);
      const { written } = await writer.queueRegion(ring, (i % nSlots) * chunk, len);
      slotFree[i % nSlots] = hash ? Promise.all([written, hash.waitFor(i * chunk + len, signal)]).then(() => {}) : written;
      if (i + nSlots < nChunks) read(i + nSlots);
      done += len;
      onProgress?.({ bytes: done, total: size });
    }
    if (!remote && fstatSync(source.fd).size !== size) fileChanged(src, 'copy', size, fstatSync(source.fd).size);
    // Checked before the destination is put in place: a corrupt source never replaces it.
    let verified: VerifiedStats | undefined;
    if (hash && expected) {
      const h = await settle(hash, src, expected);
      hashing.stream = undefined;
      verified = { algorithm: 'sha256', sha256: h.sha256, source: expected.source, hashMs: h.hashMs, extraBytes: 0, impl: native.sha256Impl };
    }
    const readIo = remote ? 'network' : source.direct ? 'direct' : source.rwFlags ? 'uncached' : 'buffered';
    return { ...(await writer.close()), readIo, ...(verified ? { verified } : {}) };
  } catch (e) {
    if (q) q.cancel();
    else stopRemote.abort(e);
    await writer.abort(e);
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await Promise.allSettled(reads);
    if (before) dropAdded(source.fd, before, size);
  }
}
