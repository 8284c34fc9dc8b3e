/**
 * copy(): file to file by direct I/O on both sides, streaming through a small ring of aligned buffers (reads of
 * the next slots run while earlier ones are written), replacing the destination atomically. Memory use is the
 * ring, whatever the file size; neither file is left in the page cache.
 */
import { fstatSync, statSync } from 'node:fs';
import { DmaloadError } from '../core/errors.js';
import { roundUp } from '../core/util.js';
import { native } from '../engine/binding.js';
import * as engine from '../engine/engine.js';
import { anonymous } from '../engine/memory.js';
import { dropAdded, residentPages } from '../pipeline/cache.js';
import { fileChanged, openFile } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import { aliased, DEFAULTS, functionOption, ioOption, knob, modeOption, optionsObject, pathOption, signalOption, tuning } from './options.js';
import { openWriter } from './writer.js';
import type { WriterResult } from './writer.js';

export interface CopyOptions {
  /**
   * 'auto' (default): direct I/O on both sides where the file systems allow (else uncached where they allow that);
   * 'direct' requires it; 'uncached' (RWF_DONTCACHE) requires that; 'buffered'.
   */
  io?: IoMode;
  /** Bytes per ring part (one read ahead of the writes). Default 128 MiB, a multiple of 4096. */
  partSize?: number;
  /** Parts in the ring. Default 2. */
  parts?: number;
  /** Bytes per request, reads and writes. Default 8 MiB; env DMALOAD_CHUNK_SIZE. */
  chunkSize?: number;
  /** Requests in flight, reads and writes each. Default 16; env DMALOAD_QUEUE_DEPTH. */
  queueDepth?: number;
  /** @deprecated The former name of `partSize`. */
  slotSize?: number;
  /** @deprecated The former name of `parts`. */
  slots?: number;
  /** File mode of a new destination. Default: the replaced file's, else the source's. */
  mode?: number;
  onProgress?: (p: { bytes: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface CopyResult extends WriterResult {
  readIo: 'direct' | 'buffered' | 'uncached';
}

/** Copies `src` to `dst`; refuses the same file (ERR_SAME_FILE) and a folder as destination. */
export async function copy(src: string, dst: string, options: CopyOptions = {}): Promise<CopyResult> {
  pathOption('src', src);
  pathOption('dst', dst);
  const o = optionsObject(options) as CopyOptions & Record<string, unknown>;
  const io = ioOption(o.io);
  // Measured (README, npm run bench:cp): this disk wants a lot in flight when reads and writes mix.
  const partSize = knob('partSize', aliased(o, 'partSize', 'slotSize'), DEFAULTS.copy.partSize, o.partSize === undefined && o.slotSize !== undefined ? 'slotSize' : 'partSize');
  const parts = knob('parts', aliased(o, 'parts', 'slots'), DEFAULTS.copy.parts, o.parts === undefined && o.slots !== undefined ? 'slots' : 'parts');
  const tune = tuning('copy', o);
  const mode = modeOption(o.mode);
  const onProgress = functionOption<NonNullable<CopyOptions['onProgress']>>('onProgress', o.onProgress);
  const signal = signalOption(o.signal);
  signal?.throwIfAborted();
  const source = await openFile(src, 'read', io);
  try {
    const d = statSync(dst, { throwIfNoEntry: false });
    if (d && d.ino === source.stat.ino && d.dev === source.stat.dev) throw new DmaloadError('ERR_SAME_FILE', `'${src}' and '${dst}' are the same file`, { path: dst });
    if (d?.isDirectory()) throw new DmaloadError('ERR_IS_DIRECTORY', `'${dst}' is a directory; give the destination file's full path`, { path: dst });
    const size = source.size;
    // A small file needs no more ring than itself.
    const slot = Math.max(4096, Math.min(partSize, roundUp(size, 4096)));
    const ring = anonymous(slot * parts, false, src);
    try {
      const writer = await openWriter(dst, { io, mode: mode ?? (d ? d.mode & 0o7777 : source.stat.mode & 0o7777), chunkSize: Math.min(slot, tune.chunk), queueDepth: tune.depth, expectedSize: size, signal });
      try {
        // Reads run ahead of the loop's awaits: mark them handled now, the loop (or the finally) sees their errors.
        const read = (i: number) => {
          const p = engine.run({
            fd: source.direct ? source.directFd : source.fd,
            write: false,
            direct: source.direct,
            target: ring,
            segments: [i * slot, (i % parts) * slot, Math.min(slot, size - i * slot)],
            padTo: source.direct ? source.align.offsetAlign : 1,
            bounce: false,
            populate: false,
            rwFlags: source.direct ? 0 : source.rwFlags,
            tuning: tune,
            path: src,
            signal,
          });
          p.catch(() => {});
          return p;
        };
        // Uncached reads (no O_DIRECT): what they leave in the page cache is dropped at the end.
        const before = !source.direct && source.rwFlags ? residentPages(source.fd, size) : undefined;
        const n = Math.ceil(size / slot);
        const reads: Array<ReturnType<typeof read>> = [];
        for (let i = 0; i < Math.min(n, parts - 1); i++) reads[i] = read(i);
        let done = 0;
        try {
          for (let i = 0; i < n; i++) {
            const r = await reads[i]!;
            const len = Math.min(slot, size - i * slot);
            if (r.short || r.bytes !== len) fileChanged(src, 'copy', size, fstatSync(source.fd).size);
            // One part stays free for this write while the next reads fill the others.
            if (i + parts - 1 < n) reads[i + parts - 1] = read(i + parts - 1);
            await writer.writeRegion(ring, (i % parts) * slot, len, { copy: false });
            done += len;
            onProgress?.({ bytes: done, total: size });
          }
        } finally {
          await Promise.allSettled(reads);
          if (before) dropAdded(source.fd, before, size);
        }
        if (fstatSync(source.fd).size !== size) fileChanged(src, 'copy', size, fstatSync(source.fd).size);
        return { ...(await writer.close()), readIo: source.direct ? 'direct' : source.rwFlags ? 'uncached' : 'buffered' };
      } catch (e) {
        await writer.abort(e);
        throw e;
      }
    } finally {
      native.munmap(ring);
    }
  } finally {
    await source.close();
  }
}
