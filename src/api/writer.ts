/**
 * createWriter: sequential writes at device speed. Callers write Uint8Arrays of any size; the writer batches them
 * into aligned staging slots, keeps several direct writes in flight on one persistent native queue (one thread and
 * one ring for the writer's whole life), applies backpressure (write() resolves when the bytes are taken and there
 * is room for more), and close() writes the tail, syncs and reports. Atomic by default: the file has no name until
 * close() (O_TMPFILE), so a killed writer leaves nothing behind and readers see the old file or the new one.
 *
 * States: open → closing → closed, or → failed (any error or abort, after which only abort() does anything).
 */
import fs from 'node:fs';
import { promisify } from 'node:util';
import { AbortError, DmaloadError, invalidType } from '../core/errors.js';
import { MiB, roundUp } from '../core/util.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';
import type { Region, TransferTarget } from '../engine/binding.js';
import { IoQueue } from '../engine/engine.js';
import { anonymous, withBytes, zero } from '../engine/memory.js';
import { openDestination } from '../pipeline/destination.js';
import type { Destination } from '../pipeline/destination.js';
import type { IoMode } from '../pipeline/source.js';
import { aliased, boolOption, byteCountOption, DEFAULTS, ioOption, knob, modeOption, optionNames, optionsObject, pathOption, signalOption } from './options.js';

export interface WriterOptions {
  /**
   * 'auto' (default) writes with O_DIRECT where the file system allows, else uncached (RWF_DONTCACHE) where it
   * allows that; 'direct' requires O_DIRECT; 'uncached' requires RWF_DONTCACHE; 'buffered' through the cache.
   */
  io?: IoMode;
  /** Writes in flight. Default 8; env DMALOAD_QUEUE_DEPTH. */
  queueDepth?: number;
  /** Bytes per write (one staging slot). Default 8 MiB, a multiple of 4096; env DMALOAD_CHUNK_SIZE. */
  chunkSize?: number;
  /** @deprecated The former name of `chunkSize`. */
  bufferSize?: number;
  /**
   * Write an unnamed file and give it the destination's name only at close(): readers see the old file or the new
   * one, and a crash leaves nothing. Default true (since 0.2; it was false for createWriter before).
   */
  atomic?: boolean;
  /** fsync the file (and, when atomic, its folder) at close(). Default true. */
  fsync?: boolean;
  /**
   * Bytes the file will hold, when known: allocated at once for direct writes (save() passes it), otherwise in
   * steps. Buffered writes are not preallocated.
   */
  expectedSize?: number;
  /** File mode. Default: the replaced file's mode, else 0o644 (exact, whatever the umask). */
  mode?: number;
  signal?: AbortSignal;
}

export interface WriterResult {
  bytes: number;
  ms: number;
  bytesPerSec: number;
  /** 'uncached': buffered writes that left no page cache (RWF_DONTCACHE). */
  io: 'direct' | 'buffered' | 'uncached';
}

export interface Writer {
  /**
   * Takes the bytes and resolves when there is room for more. Small or unaligned chunks are copied into staging
   * slots; a chunk of at least `chunkSize` bytes at an aligned address is written in place by direct I/O (no copy)
   * — do not change a chunk until its write() resolves, and await each write() before the next.
   * `copy: true` forces the copy (for memory that direct I/O cannot read from, such as a dma-heap mapping).
   */
  write(chunk: Uint8Array, opts?: { copy?: boolean }): Promise<void>;
  /** Writes the tail, syncs, names the file (atomic) and reports. */
  close(): Promise<WriterResult>;
  /** Stops, closes the file and discards it (atomic) or keeps what was written; idempotent. */
  abort(reason?: unknown): Promise<void>;
  readonly bytesWritten: number;
}

const fdatasync = promisify(fs.fdatasync);
const ftruncate = promisify(fs.ftruncate);
/** Space is allocated ahead in steps of this much when the final size is not known. */
const PREALLOC_STEP = 256 * MiB;

/** Creates `path` (or replaces it at close(), atomic) and returns a writer for it. */
export async function createWriter(path: string, options: WriterOptions = {}): Promise<Writer> {
  return openWriter(path, optionsObject(options, WRITER_OPTIONS, 'createWriter()'));
}

/** createWriter()'s option names; save() takes the same but expectedSize (it knows the size). */
export const WRITER_OPTIONS = optionNames<WriterOptions>()([
  'io',
  'queueDepth',
  'chunkSize',
  'bufferSize',
  'atomic',
  'fsync',
  'expectedSize',
  'mode',
  'signal',
]);

/** @internal The writer with the methods save() and copy() use to write from regions. */
export async function openWriter(path: string, options: WriterOptions = {}): Promise<CaptureWriter> {
  pathOption('path', path);
  const o = optionsObject(options);
  const chunk = knob(
    'chunkSize',
    aliased(o as Record<string, unknown>, 'chunkSize', 'bufferSize'),
    DEFAULTS.write.chunkSize,
    o.chunkSize === undefined && o.bufferSize !== undefined ? 'bufferSize' : 'chunkSize',
  );
  const depth = knob('queueDepth', o.queueDepth, DEFAULTS.write.queueDepth);
  const io = ioOption(o.io);
  const atomic = boolOption('atomic', o.atomic, true);
  const sync = boolOption('fsync', o.fsync, true);
  const expected = byteCountOption('expectedSize', o.expectedSize);
  const mode = modeOption(o.mode);
  const signal = signalOption(o.signal);
  signal?.throwIfAborted();
  const dest = await openDestination(path, { atomic, io, mode });
  let staging: Region | undefined;
  let queue: IoQueue | undefined;
  try {
    // Huge pages, as copy()'s ring: fewer, larger device requests from the staging slots (README, "Copy and
    // capture"); not for a file known to be small, whose one huge page would cost more to fault in than it saves.
    staging = anonymous(chunk * depth, expected === undefined || expected >= 2 * MiB, path);
    queue = new IoQueue(dest.direct ? dest.directFd : dest.fd, { write: true, direct: dest.direct, depth, path, rwFlags: dest.direct ? 0 : dest.rwFlags });
  } catch (e) {
    if (staging) native.munmap(staging);
    await dest.close();
    throw e;
  }
  const w = new CaptureWriter(dest, queue, staging, { chunk, depth, sync, signal });
  if (expected !== undefined) w.preallocate(expected);
  return w;
}

/** @internal */
export class CaptureWriter implements Writer {
  #dest: Destination;
  #queue: IoQueue;
  #staging: Region;
  #chunk: number;
  #depth: number;
  #sync: boolean;
  #signal: AbortSignal | undefined;
  #block: number;
  #memAlign: number;
  #t0 = performance.now();
  #state: 'open' | 'closing' | 'closed' | 'failed' = 'open';
  #busy = false;
  #failure: { error: unknown } | undefined;
  /** Staging slots not in flight; the slot being filled is `#cur`, holding `#fill` bytes. */
  #free: number[];
  #cur: number;
  #fill = 0;
  /** File offset of the next byte taken; bytes whose writes completed. */
  #fileOff = 0;
  #written = 0;
  #inflight = new Set<Promise<void>>();
  #allocated = 0;
  #canAllocate: boolean;

  constructor(dest: Destination, queue: IoQueue, staging: Region, o: { chunk: number; depth: number; sync: boolean; signal: AbortSignal | undefined }) {
    this.#dest = dest;
    this.#queue = queue;
    this.#staging = staging;
    this.#chunk = o.chunk;
    this.#depth = o.depth;
    this.#sync = o.sync;
    this.#signal = o.signal;
    this.#block = dest.direct ? Math.max(dest.align.offsetAlign, 1) : 1;
    // Buffered writes allocate as they go (ext4 delays it to writeback); on tmpfs fallocate would zero every page
    // that a write then fills anyway.
    this.#canAllocate = dest.direct;
    this.#memAlign = Math.max(dest.align.memAlign, 1);
    this.#free = Array.from({ length: o.depth }, (_, i) => o.depth - 1 - i);
    this.#cur = this.#free.pop()!;
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  #onAbort = (): void => this.#fail(new AbortError(undefined, { cause: this.#signal?.reason }));

  get bytesWritten(): number {
    return this.#written;
  }

  /**
   * Allocates the file's space ahead of direct writes (fallocate moves its size): on ext4 a direct write that
   * extends the file takes the inode lock exclusively, so extending writes cannot run in parallel. close() cuts the
   * file to the bytes written.
   */
  preallocate(upTo: number): void {
    if (!this.#canAllocate || upTo <= this.#allocated) return;
    const want = Math.max(upTo, this.#allocated + PREALLOC_STEP);
    const r = native.fallocate(this.#dest.fd, 0, this.#allocated, want - this.#allocated);
    // EOPNOTSUPP and friends: writes just extend the file as they go; ENOSPC shows up in the writes themselves.
    if (r < 0) this.#canAllocate = false;
    else this.#allocated = want;
  }

  async write(chunk: Uint8Array, opts?: { copy?: boolean }): Promise<void> {
    if (!(chunk instanceof Uint8Array)) throw invalidType('chunk', 'a Uint8Array', chunk);
    const zeroCopy = opts?.copy !== true && chunk.buffer instanceof ArrayBuffer ? { target: chunk.buffer, offset: chunk.byteOffset } : undefined;
    await this.#guarded(() => this.#take(chunk.length, zeroCopy, (off, n, dst) => dst.set(chunk.subarray(off, off + n))));
  }

  /** @internal Writes `length` bytes of a region from `offset`: in place where direct I/O can read it, else copied. */
  async writeRegion(region: Region, offset: number, length: number, opts: { copy: boolean }): Promise<void> {
    await this.#guarded(() =>
      this.#take(length, opts.copy ? undefined : { target: region, offset }, (off, n, dst) => withBytes(region, offset + off, n, (src) => dst.set(src))),
    );
  }

  /**
   * @internal Queues `length` bytes of a region at the next file offset and resolves once they are queued (there is
   * room for more), with `written`, which settles once the region's bytes are on their way no more: whole chunks
   * at an aligned address are written in place (the region must stay unchanged until `written`), the rest copied.
   * For copy(): its reads and these writes stay in flight across calls.
   */
  async queueRegion(region: Region, offset: number, length: number): Promise<{ written: Promise<void> }> {
    const mine: Array<Promise<void>> = [];
    await this.#guarded(() => this.#take(length, { target: region, offset }, (off, n, dst) => withBytes(region, offset + off, n, (src) => dst.set(src)), mine));
    return { written: Promise.all(mine).then(() => {}) };
  }

  async #guarded(fn: () => Promise<void>): Promise<void> {
    if (this.#state === 'failed' && this.#failure) throw this.#failure.error;
    if (this.#state !== 'open') throw this.#closedError();
    if (this.#busy)
      throw new DmaloadError('ERR_WRITER_BUSY', `A write to '${this.#dest.path}' is still pending; await each write() before the next`, {
        path: this.#dest.path,
      });
    if (this.#failure) throw this.#failure.error;
    this.#signal?.throwIfAborted();
    this.#busy = true;
    try {
      await fn();
    } catch (e) {
      this.#fail(e);
      throw e;
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Takes `length` bytes: whole chunks in place when `inPlace` memory is aligned, the rest through staging. With
   * `pending`, the in-place writes are handed back there instead of waited for.
   */
  async #take(
    length: number,
    inPlace: { target: TransferTarget; offset: number } | undefined,
    copyInto: (off: number, n: number, dst: Uint8Array) => void,
    pending?: Array<Promise<void>>,
  ): Promise<void> {
    let off = 0;
    // In place: any memory for buffered writes, aligned memory for direct ones (a copy into staging cost a second
    // pass over every byte, and the staging's fresh pages, where the kernel copies anyway).
    if (
      inPlace &&
      this.#fill === 0 &&
      length >= this.#chunk &&
      (!this.#dest.direct || (native.address(inPlace.target) + BigInt(inPlace.offset)) % BigInt(this.#memAlign) === 0n)
    ) {
      const len = length - (length % this.#block);
      this.preallocate(this.#fileOff + len);
      // The caller may reuse the memory once write() resolves: wait for these writes, not just for room.
      const mine: Array<Promise<void>> = pending ?? [];
      for (let at = 0; at < len; at += this.#chunk) {
        await this.#room();
        mine.push(this.#submit(inPlace.target, inPlace.offset + at, Math.min(this.#chunk, len - at)));
      }
      off = len;
      if (!pending) {
        await Promise.all(mine);
        if (this.#failure) throw this.#failure.error;
      }
    }
    while (off < length) {
      const n = Math.min(this.#chunk - this.#fill, length - off);
      withBytes(this.#staging, this.#cur * this.#chunk + this.#fill, n, (dst) => copyInto(off, n, dst));
      this.#fill += n;
      off += n;
      if (this.#fill === this.#chunk) await this.#flushSlot(this.#chunk);
    }
  }

  /** Submits the slot being filled (`len` bytes, padding included) and takes the next free one. */
  async #flushSlot(len: number): Promise<void> {
    const slot = this.#cur;
    const p = this.#submit(this.#staging, slot * this.#chunk, len);
    void p.then(
      () => this.#free.push(slot),
      () => this.#free.push(slot),
    );
    this.#fill = 0;
    await this.#room();
    this.#cur = this.#free.pop()!;
  }

  /** One write of `len` bytes at the current file offset, tracked until it completes. */
  #submit(target: TransferTarget, offset: number, len: number): Promise<void> {
    const at = this.#fileOff;
    this.#fileOff += len;
    this.preallocate(at + len + this.#chunk * this.#depth);
    const p = this.#queue.submit(target, offset, at, len).then(
      (n) => {
        this.#written += n;
      },
      (e: unknown) => this.#fail(e),
    );
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
    return p;
  }

  /** Waits until a staging slot is free and fewer than queueDepth writes are in flight. */
  async #room(): Promise<void> {
    while (this.#inflight.size >= this.#depth || (this.#free.length === 0 && this.#inflight.size > 0)) await Promise.race(this.#inflight);
    if (this.#failure) throw this.#failure.error;
  }

  #fail(e: unknown): void {
    if (this.#failure) return;
    this.#failure = { error: e };
    if (this.#state === 'open') this.#state = 'failed';
    this.#queue.cancel();
  }

  #closedError(): DmaloadError {
    return new DmaloadError('ERR_WRITER_CLOSED', `The writer for '${this.#dest.path}' is closed`, { path: this.#dest.path });
  }

  async close(): Promise<WriterResult> {
    if (this.#state !== 'open') throw this.#failure && this.#state === 'failed' ? this.#failure.error : this.#closedError();
    if (this.#busy)
      throw new DmaloadError('ERR_WRITER_BUSY', `A write to '${this.#dest.path}' is still pending; await it before close()`, { path: this.#dest.path });
    this.#state = 'closing';
    try {
      const size = this.#fileOff + this.#fill;
      if (this.#fill > 0) {
        // The tail, padded with zeros to a whole block for direct I/O; the truncate below cuts the padding off.
        const padded = roundUp(this.#fill, this.#block);
        zero(this.#staging, this.#cur * this.#chunk + this.#fill, padded - this.#fill);
        const tail = this.#fill;
        void this.#submit(this.#staging, this.#cur * this.#chunk, padded).then(() => (this.#written -= padded - tail));
        this.#fill = 0;
      }
      await this.#drain();
      if (this.#failure) throw this.#failure.error;
      if (this.#allocated > 0 || size % this.#block !== 0) await ftruncate(this.#dest.fd, size);
      if (this.#sync) await fdatasync(this.#dest.fd);
      if (!this.#dest.direct && this.#dest.rwFlags && size > 0) {
        // Uncached writes leave no page behind, but cutting the preallocated space off at a partial page makes the
        // file system read that page back in to zero its tail: write it back (it is one page) and drop it.
        const last = size - (size % PAGE_SIZE || PAGE_SIZE);
        native.syncRange(this.#dest.fd, last, size - last, C.SYNC_FILE_RANGE_WAIT_BEFORE | C.SYNC_FILE_RANGE_WRITE | C.SYNC_FILE_RANGE_WAIT_AFTER);
        native.fadvise(this.#dest.fd, 0, 0, C.POSIX_FADV_DONTNEED);
      }
      await this.#dest.commit(this.#sync);
      await this.#release();
      this.#state = 'closed';
      const ms = Math.round((performance.now() - this.#t0) * 100) / 100;
      return {
        bytes: size,
        ms,
        bytesPerSec: ms > 0 ? Math.round(size / (ms / 1000)) : 0,
        io: this.#dest.direct ? 'direct' : this.#dest.rwFlags ? 'uncached' : 'buffered',
      };
    } catch (e) {
      this.#fail(e);
      this.#state = 'failed';
      await this.#release();
      throw e;
    }
  }

  async abort(reason?: unknown): Promise<void> {
    if (this.#state === 'closed') return;
    this.#fail(reason ?? new AbortError());
    this.#state = 'failed';
    await this.#release();
  }

  async #drain(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }

  #released = false;
  /** Waits for every write, then closes the queue, the file (discarding an uncommitted one) and the staging. */
  async #release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    await this.#drain();
    await this.#queue.close().catch(() => {});
    // A kept (non-atomic) file holds what was written, not the space allocated ahead.
    if (this.#state !== 'closed' && this.#allocated > 0) await ftruncate(this.#dest.fd, this.#written).catch(() => {});
    await this.#dest.close();
    native.munmap(this.#staging);
  }
}
