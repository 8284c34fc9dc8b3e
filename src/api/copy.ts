/**
 * copy(): file to file by direct I/O on both sides, streaming through a small ring of aligned buffers (reads of
 * the next slots run while earlier ones are written), replacing the destination atomically. Memory use is the
 * ring, whatever the file size; neither file is left in the page cache.
 */
import { fstatSync, statSync } from 'node:fs';
import * as engine from '../engine/engine.js';
import { DmaloadError, invalidType, requireMultiple } from '../core/errors.js';
import { fileChanged, openSource } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import { native } from '../engine/binding.js';
import { anonymous } from '../engine/memory.js';
import { MiB, enumOption, intOption, roundUp } from '../core/util.js';
import { createWriter } from './writer.js';
import type { WriterResult } from './writer.js';

export interface CopyOptions {
  io?: IoMode;
  /** Bytes per ring slot. Default 128 MiB. */
  slotSize?: number;
  /** Slots in the ring (reads ahead of the writes). Default 2. */
  slots?: number;
  /** File mode of a new destination. Default: the replaced file's, else the source's. */
  mode?: number;
  onProgress?: (p: { bytes: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface CopyResult extends WriterResult {
  readIo: 'direct' | 'buffered';
}

/** Copies `src` to `dst`; refuses the same file (ERR_SAME_FILE) and a folder as destination. */
export async function copy(src: string, dst: string, options: CopyOptions = {}): Promise<CopyResult> {
  if (typeof src !== 'string' || src === '') throw invalidType('src', 'a non-empty string', src);
  if (typeof dst !== 'string' || dst === '') throw invalidType('dst', 'a non-empty string', dst);
  const io = enumOption('io', options.io, ['auto', 'direct', 'buffered'] as const, 'auto');
  // Measured (README, npm run bench:cp): this disk wants a lot in flight when reads and writes mix.
  const slotSize = intOption('slotSize', options.slotSize, 'DMALOAD_COPY_SLOT', 128 * MiB, 4096, 1024 * MiB, true);
  const slots = intOption('slots', options.slots, 'DMALOAD_COPY_SLOTS', 2, 2, 64);
  requireMultiple('slotSize', slotSize, 4096);
  const signal = options.signal;
  signal?.throwIfAborted();
  const source = await openSource(src, io === 'auto' ? 'direct' : io);
  try {
    const d = (() => {
      try {
        return statSync(dst);
      } catch {
        return undefined;
      }
    })();
    if (d && d.ino === source.stat.ino && d.dev === source.stat.dev) throw new DmaloadError('ERR_SAME_FILE', `'${src}' and '${dst}' are the same file`, { path: dst });
    if (d?.isDirectory()) throw new DmaloadError('ERR_IS_DIRECTORY', `'${dst}' is a directory; give the destination file's full path`, { path: dst });
    const size = source.size;
    // A small file needs no more ring than itself.
    const slot = Math.max(4096, Math.min(slotSize, roundUp(size, 4096)));
    const ring = anonymous(slot * slots, false, src);
    try {
      const writer = await createWriter(dst, { io, atomic: true, mode: options.mode ?? (d ? d.mode & 0o7777 : source.stat.mode & 0o7777), bufferSize: Math.min(slot, 8 * MiB), queueDepth: 16, expectedSize: size, signal });
      try {
        const tune = engine.tuning({ chunkSize: process.env.DMALOAD_CHUNK_SIZE ? undefined : 8 * MiB, queueDepth: process.env.DMALOAD_QUEUE_DEPTH ? undefined : 16 });
        const read = (i: number) =>
          engine.run({
            fd: source.fd,
            write: false,
            direct: source.direct,
            buffer: ring,
            segments: [i * slot, (i % slots) * slot, Math.min(slot, size - i * slot)],
            padTo: source.direct ? source.align.offsetAlign : 1,
            bounce: false,
            populate: false,
            tuning: tune,
            path: src,
            signal,
          });
        const n = Math.ceil(size / slot);
        const reads: Array<ReturnType<typeof read>> = [];
        for (let i = 0; i < Math.min(n, slots - 1); i++) reads[i] = read(i);
        let done = 0;
        try {
          for (let i = 0; i < n; i++) {
            const r = await reads[i]!;
            const len = Math.min(slot, size - i * slot);
            if (r.short || r.bytes !== len) fileChanged(src, 'copy', size, fstatSync(source.fd).size);
            // One slot stays free for this write while the next reads fill the others.
            if (i + slots - 1 < n) reads[i + slots - 1] = read(i + slots - 1);
            await writer.write(new Uint8Array(ring, (i % slots) * slot, len));
            done += len;
            options.onProgress?.({ bytes: done, total: size });
          }
        } finally {
          await Promise.allSettled(reads);
        }
        if (fstatSync(source.fd).size !== size) fileChanged(src, 'copy', size, fstatSync(source.fd).size);
        return { ...(await writer.close()), readIo: source.direct ? 'direct' : 'buffered' };
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
