/**
 * createWriter: sequential writes at device speed. Callers write Uint8Arrays of any size; the writer batches them
 * into aligned staging buffers, keeps several direct writes in flight, applies backpressure (write() resolves when
 * the bytes are taken and there is room for more), and close() writes the tail, syncs and reports. With
 * `atomic`, it writes a hidden temporary file beside the destination and renames it over the destination only
 * once every byte is on disk: a reader sees the old file or the new one, never a torn one.
 */
import fs, { constants as FS, promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import * as engine from '../engine/engine.js';
import { AbortError, DmaloadError, invalidType, requireMultiple } from '../core/errors.js';
import { dioAlign, directUnsupported, reopenDirect, requireRegular } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import { native } from '../engine/binding.js';
import { anonymous } from '../engine/memory.js';
import { MiB, enumOption, intOption, roundUp } from '../core/util.js';

export interface WriterOptions {
  /** 'auto' (default) and 'direct' write with O_DIRECT where the file system allows; 'buffered' through the cache. */
  io?: IoMode;
  /** Writes in flight. Default 8. */
  queueDepth?: number;
  /** Bytes per staging buffer (one write). Default 8 MiB; a multiple of 4096. */
  bufferSize?: number;
  /** Write a temporary file and rename it over `path` at close(). Default false. */
  atomic?: boolean;
  /** fsync the file (and, when atomic, its folder) at close(). Default true. */
  fsync?: boolean;
  /** Bytes the file will hold, when known: allocated at once (save() passes it). Otherwise allocated in steps. */
  expectedSize?: number;
  /** File mode for a new file. Default: the replaced file's mode, else 0o644. */
  mode?: number;
  signal?: AbortSignal;
}

export interface WriterResult {
  bytes: number;
  ms: number;
  bytesPerSec: number;
  io: 'direct' | 'buffered';
}

export interface Writer {
  /**
   * Takes the bytes and resolves when there is room for more. Small or unaligned chunks are copied into staging
   * buffers; a chunk of at least `bufferSize` bytes at an aligned address is written in place by direct I/O (no
   * copy) — do not change a chunk until its write() resolves, and await each write() before the next.
   * `copy: true` forces the copy (for memory that direct I/O cannot read from, such as a dma-heap mapping).
   */
  write(chunk: Uint8Array, opts?: { copy?: boolean }): Promise<void>;
  /** Writes the tail, syncs, renames (atomic) and reports. */
  close(): Promise<WriterResult>;
  /** Stops, closes the file and removes the temporary file (atomic); idempotent. */
  abort(reason?: unknown): Promise<void>;
  readonly bytesWritten: number;
}

const fsync = promisify(fs.fsync);
const PREALLOC_STEP = 256 * MiB;
const fdatasync = promisify(fs.fdatasync);
const ftruncate = promisify(fs.ftruncate);

/** A hidden name beside `path`, recognisable as ours: `.NAME.dmaload-PID-RANDOM.tmp`. */
export function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.dmaload-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
}

export async function createWriter(path: string, options: WriterOptions = {}): Promise<Writer> {
  if (typeof path !== 'string' || path === '') throw invalidType('path', 'a non-empty string', path);
  const io = enumOption('io', options.io, ['auto', 'direct', 'buffered'] as const, 'auto');
  const depth = intOption('queueDepth', options.queueDepth, 'DMALOAD_WRITE_DEPTH', 8, 1, 64);
  const bufferSize = intOption('bufferSize', options.bufferSize, 'DMALOAD_WRITE_BUFFER', 8 * MiB, 4096, 1024 * MiB, true);
  requireMultiple('bufferSize', bufferSize, 4096);
  const atomic = options.atomic ?? false;
  const doSync = options.fsync ?? true;
  if (typeof atomic !== 'boolean') throw invalidType('atomic', 'a boolean', atomic);
  if (typeof doSync !== 'boolean') throw invalidType('fsync', 'a boolean', doSync);
  if (options.expectedSize !== undefined && (!Number.isSafeInteger(options.expectedSize) || options.expectedSize < 0)) throw invalidType('expectedSize', 'a byte count', options.expectedSize);
  if (options.mode !== undefined && (!Number.isInteger(options.mode) || options.mode < 0 || options.mode > 0o7777)) throw invalidType('mode', 'a file mode such as 0o644', options.mode);
  const signal = options.signal;
  signal?.throwIfAborted();

  const existing = await fsp.stat(path).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  if (existing) requireRegular(existing, path);
  const mode = options.mode ?? (existing ? existing.mode & 0o7777 : 0o644);
  const file = atomic ? tempNameFor(path) : path;
  const t0 = performance.now();

  const handle = await fsp.open(file, FS.O_WRONLY | FS.O_CREAT | (atomic ? FS.O_EXCL : FS.O_TRUNC), mode);
  let direct: fsp.FileHandle | undefined;
  let staging: ArrayBuffer | undefined;
  try {
    if (atomic || options.mode !== undefined) await handle.chmod(mode); // exact, whatever the umask
    if (io !== 'buffered' && dioAlign(handle.fd).offsetAlign > 0) {
      direct = await reopenDirect(handle.fd, FS.O_WRONLY);
    }
    if (io === 'direct' && !direct) throw directUnsupported(path);
    staging = anonymous(bufferSize * depth, false);
  } catch (e) {
    await direct?.close().catch(() => {});
    await handle.close().catch(() => {});
    if (atomic) await fsp.unlink(file).catch(() => {});
    throw e;
  }
  const dio = dioAlign(handle.fd);
  const block = direct ? Math.max(dio.offsetAlign, 1) : 1;
  const memAlign = Math.max(dio.memAlign, 1);
  const wfd = direct ? direct.fd : handle.fd;
  const mem = staging;
  const free: number[] = Array.from({ length: depth }, (_, i) => depth - 1 - i);
  const inflight = new Map<number, Promise<void>>();
  let cur = free.pop()!;
  let fill = 0;
  let fileOff = 0;
  let written = 0;
  let failure: unknown;
  let state: 'open' | 'closing' | 'done' = 'open';
  const tune = { chunk: bufferSize, depth: 1 };

  // Space is allocated ahead of the writes (fallocate, which moves the file's size): on ext4 a direct write that
  // extends the file takes the inode lock exclusively, so extending writes cannot run in parallel. close() cuts the
  // file to the bytes written.
  let allocated = 0;
  let canAllocate = true;
  function preallocate(upTo: number): void {
    if (!canAllocate || upTo <= allocated) return;
    const want = Math.max(upTo, allocated + PREALLOC_STEP);
    const r = native.fallocate(handle.fd, 0, allocated, want - allocated);
    // EOPNOTSUPP and friends: writes just extend the file as they go; ENOSPC shows up in the writes themselves.
    if (r < 0) canAllocate = false;
    else allocated = want;
  }
  if (options.expectedSize !== undefined) preallocate(options.expectedSize);

  function submit(slot: number, len: number, at: number): void {
    preallocate(at + len + bufferSize * depth);
    const p = engine
      .run({ fd: wfd, write: true, direct: Boolean(direct), buffer: mem, segments: [at, slot * bufferSize, len], padTo: 1, bounce: false, populate: false, tuning: tune, path, signal })
      .then(
        () => {
          written += len;
        },
        (e: unknown) => {
          failure ??= e;
        },
      )
      .finally(() => {
        inflight.delete(slot);
        free.push(slot);
      });
    inflight.set(slot, p);
  }

  async function room(): Promise<void> {
    while (free.length === 0) await Promise.race(inflight.values());
    if (failure) throw failure;
  }

  async function cleanup(removeTemp: boolean): Promise<void> {
    await Promise.allSettled(inflight.values());
    await direct?.close().catch(() => {});
    await handle.close().catch(() => {});
    native.munmap(mem);
    if (removeTemp && atomic) await fsp.unlink(file).catch(() => {});
  }

  let busy = false;

  /** Zero-copy when it can: big, aligned memory at an aligned file offset is written by direct I/O in place. */
  async function take(chunk: Uint8Array, copy: boolean): Promise<void> {
    let off = 0;
    if (direct && !copy && fill === 0 && chunk.buffer instanceof ArrayBuffer && chunk.length >= bufferSize) {
      const addr = native.address(chunk.buffer) + BigInt(chunk.byteOffset);
      if (addr % BigInt(memAlign) === 0n) {
        const len = chunk.length - (chunk.length % block);
        preallocate(fileOff + len);
        try {
          await engine.run({ fd: wfd, write: true, direct: true, buffer: chunk.buffer, segments: [fileOff, chunk.byteOffset, len], padTo: 1, bounce: false, populate: false, tuning: { chunk: bufferSize, depth }, path, signal });
        } catch (e) {
          failure ??= e;
          throw e;
        }
        fileOff += len;
        written += len;
        off = len;
      }
    }
    while (off < chunk.length) {
      const n = Math.min(bufferSize - fill, chunk.length - off);
      new Uint8Array(mem, cur * bufferSize + fill, n).set(chunk.subarray(off, off + n));
      fill += n;
      off += n;
      if (fill === bufferSize) {
        submit(cur, bufferSize, fileOff);
        fileOff += bufferSize;
        fill = 0;
        await room();
        cur = free.pop()!;
      }
    }
  }

  const writer: Writer = {
    get bytesWritten() {
      return written;
    },
    async write(chunk: Uint8Array, opts?: { copy?: boolean }) {
      if (!(chunk instanceof Uint8Array)) throw invalidType('chunk', 'a Uint8Array', chunk);
      if (state !== 'open') throw new DmaloadError('ERR_WRITER_CLOSED', `The writer for '${path}' is closed`, { path });
      if (busy) throw new DmaloadError('ERR_WRITER_BUSY', `A write to '${path}' is still pending; await each write() before the next`, { path });
      if (failure) throw failure;
      signal?.throwIfAborted();
      busy = true;
      try {
        await take(chunk, opts?.copy === true);
      } finally {
        busy = false;
      }
    },
    async close() {
      if (state !== 'open') throw new DmaloadError('ERR_WRITER_CLOSED', `The writer for '${path}' is already closed`, { path });
      state = 'closing';
      try {
        if (failure) throw failure;
        if (fill > 0) {
          // The tail: padded with zeros to a whole block for direct I/O; the truncate below cuts the padding off.
          const padded = roundUp(fill, block);
          new Uint8Array(mem, cur * bufferSize + fill, padded - fill).fill(0);
          submit(cur, padded, fileOff);
          const tail = fill;
          fileOff += tail;
          fill = 0;
          await Promise.all(inflight.values());
          written -= padded - tail;
        }
        await Promise.all(inflight.values());
        if (failure) throw failure;
        if (allocated > 0 || fileOff % block !== 0) await ftruncate(handle.fd, fileOff);
        if (doSync) await fdatasync(handle.fd);
        if (atomic) {
          await fsp.rename(file, path);
          if (doSync) {
            const d = await fsp.open(dirname(path), FS.O_RDONLY | FS.O_DIRECTORY);
            try {
              await fsync(d.fd);
            } finally {
              await d.close();
            }
          }
        }
        await cleanup(false);
        state = 'done';
        const ms = Math.round((performance.now() - t0) * 100) / 100;
        return { bytes: fileOff, ms, bytesPerSec: ms > 0 ? Math.round(fileOff / (ms / 1000)) : 0, io: direct ? 'direct' : 'buffered' };
      } catch (e) {
        state = 'done';
        await cleanup(true);
        throw e;
      }
    },
    async abort(reason?: unknown) {
      if (state === 'done') return;
      state = 'done';
      failure ??= reason ?? new AbortError();
      await Promise.allSettled(inflight.values());
      // A kept (non-atomic) file holds what was submitted, not the space allocated ahead.
      if (!atomic && allocated > 0) await ftruncate(handle.fd, fileOff).catch(() => {});
      await cleanup(true);
    },
  };
  return writer;
}
