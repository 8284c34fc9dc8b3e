/**
 * readInto / writeFrom: move bytes between a file and a buffer at offsets, with the validations of the proposed
 * DMA_BUF_IOCTL_RW_FILE (length > 0, no overflow, in bounds, direct I/O aligned) — and, better than the patch,
 * `io: 'auto'` does ragged edges by buffered I/O and the aligned middle by direct I/O.
 */
import fs from 'node:fs';
import { promisify } from 'node:util';
import type { FileHandle } from 'node:fs/promises';
import { LoadedBuffer } from './buffer.js';
import { DmaloadError, asSystemError, invalidType, outOfRange } from '../core/errors.js';
import { native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import * as engine from '../engine/engine.js';
import { withBytesAsync } from '../engine/memory.js';
import { uncachedRead } from '../pipeline/cache.js';
import { openFile } from '../pipeline/source.js';
import type { IoMode, OpenedFile } from '../pipeline/source.js';
import { boolOption, ioOption, optionNames, optionsObject, signalOption, tuning } from './options.js';

export interface RwOptions {
  /** Offset in the file. Default 0. A number or a bigint. */
  fileOffset?: number | bigint;
  /** Offset in the buffer. Default 0. */
  bufOffset?: number | bigint;
  /** Bytes to move; must be > 0. Default: the rest of the buffer from `bufOffset`. */
  length?: number | bigint;
  /**
   * 'direct': every offset and the length must be aligned to the file system's direct-I/O block
   * (ERR_DIRECT_IO_ALIGNMENT otherwise); 'buffered'; 'uncached' (RWF_DONTCACHE: buffered, no page cache left);
   * 'auto' (default): the aligned middle direct, ragged edges uncached where the file system allows, else buffered.
   */
  io?: IoMode;
  /** writeFrom only: fdatasync before resolving. Default false. */
  fsync?: boolean;
  signal?: AbortSignal;
}

const MAX_OFF = (1n << 63n) - 1n; // loff_t

function big(name: string, v: unknown, dflt: bigint): bigint {
  if (v === undefined) return dflt;
  if (typeof v === 'bigint') {
    if (v < 0n) throw outOfRange(name, '>= 0', v);
    return v;
  }
  if (typeof v !== 'number') throw invalidType(name, 'a number or a bigint', v);
  if (!Number.isSafeInteger(v) || v < 0) throw outOfRange(name, 'a non-negative safe integer (use a bigint past 2^53)', v);
  return BigInt(v);
}

interface Checked {
  fileOffset: number;
  bufOffset: number;
  length: number;
  io: IoMode;
  fsync: boolean;
  signal: AbortSignal | undefined;
}

/** The validations, in BigInt so that no sum can overflow or round. */
const RW_OPTIONS = optionNames<RwOptions>()(['fileOffset', 'bufOffset', 'length', 'io', 'fsync', 'signal']);

function validate(buffer: LoadedBuffer, o: RwOptions, write: boolean): Checked {
  if (!(buffer instanceof LoadedBuffer)) throw invalidType('buffer', 'a LoadedBuffer (from load() or allocate())', buffer);
  optionsObject(o, RW_OPTIONS, write ? 'writeFrom()' : 'readInto()');
  const io = ioOption(o.io);
  const fsync = boolOption('fsync', o.fsync, false);
  const signal = signalOption(o.signal);
  if (buffer.closed) void buffer.bytes; // throws ERR_BUFFER_CLOSED, naming the file
  if (buffer.readOnly && !write) {
    throw new DmaloadError(
      'ERR_BUFFER_READ_ONLY',
      `The buffer of '${buffer.path}' is mapped read-only (served by dmaload serve); readInto a buffer from load() or allocate()`,
      { path: buffer.path },
    );
  }
  const size = BigInt(buffer.size);
  const fileOffset = big('fileOffset', o.fileOffset, 0n);
  const bufOffset = big('bufOffset', o.bufOffset, 0n);
  const length = big('length', o.length, size > bufOffset ? size - bufOffset : 0n);
  if (length <= 0n) throw outOfRange('length', '> 0', length);
  if (bufOffset + length > size) throw outOfRange('bufOffset + length', `<= the buffer's size (${size})`, bufOffset + length);
  if (fileOffset + length > MAX_OFF) throw outOfRange('fileOffset + length', `<= ${MAX_OFF} (it must not wrap)`, fileOffset + length);
  return { fileOffset: Number(fileOffset), bufOffset: Number(bufOffset), length: Number(length), io, fsync, signal };
}

function alignmentError(path: string, what: string, value: number, align: number): DmaloadError {
  return new DmaloadError(
    'ERR_DIRECT_IO_ALIGNMENT',
    `${what} (${value}) is not a multiple of ${align}, the direct-I/O alignment of '${path}'; align it or use io 'auto'`,
    { path },
  );
}

const pread = promisify(fs.read);
const pwrite = promisify(fs.write);
const fdatasync = promisify(fs.fdatasync);

/**
 * Buffered pread/pwrite of a ragged edge (or, without O_DIRECT, of everything); returns bytes moved (a read stops
 * at EOF and writes nothing past it). Uncached (RWF_DONTCACHE, through the engine) where the file takes it.
 */
async function edge(
  f: OpenedFile,
  write: boolean,
  region: Region,
  bufOffset: number,
  length: number,
  fileOffset: number,
  signal?: AbortSignal,
): Promise<number> {
  const { fd, path } = f;
  if (f.rwFlags) {
    const r = await uncachedRead(fd, write ? 0 : f.rwFlags, length, fileOffset, () =>
      engine.run({
        fd,
        write,
        direct: false,
        target: region,
        segments: [fileOffset, bufOffset, length],
        padTo: 1,
        bounce: false,
        populate: false,
        rwFlags: f.rwFlags,
        tuning: tuning(write ? 'write' : 'read', {}),
        path,
        signal,
      }),
    );
    return r.bytes;
  }
  return withBytesAsync(region, bufOffset, length, async (mem) => {
    let done = 0;
    while (done < mem.length) {
      const view = mem.subarray(done);
      let n: number;
      try {
        n = write
          ? (await pwrite(fd, view, 0, view.length, fileOffset + done)).bytesWritten
          : (await pread(fd, view, 0, view.length, fileOffset + done)).bytesRead;
      } catch (e) {
        throw asSystemError(e, path);
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  });
}

/**
 * Splits the range into a buffered head, a direct middle and a buffered tail. Direct reads fill whole blocks, so
 * a read's middle stops at the last whole block before end of file: the bytes past the count a read returns are
 * never touched, in every io mode.
 */
function split(f: OpenedFile, c: Checked, write: boolean): { head: number; mid: number } {
  if (!f.direct) return { head: 0, mid: 0 };
  const A = f.align.offsetAlign;
  if (c.io === 'direct') {
    for (const [what, v] of [
      ['fileOffset', c.fileOffset],
      ['bufOffset', c.bufOffset],
      ['length', c.length],
    ] as const) {
      if (v % A !== 0) throw alignmentError(f.path, what, v, A);
    }
  }
  const head = Math.min(c.length, (A - (c.fileOffset % A)) % A);
  let mid = Math.floor((c.length - head) / A) * A;
  if (!write) mid = Math.min(mid, Math.max(0, Math.floor((f.size - c.fileOffset - head) / A) * A));
  return { head, mid };
}

async function move(write: boolean, buffer: LoadedBuffer, file: string | FileHandle, o: RwOptions): Promise<number> {
  const c = validate(buffer, o, write);
  c.signal?.throwIfAborted();
  const lease = buffer.borrow(write ? 'the buffer for writeFrom' : 'the buffer for readInto');
  let f: OpenedFile | undefined;
  try {
    f = await openFile(file, write ? 'write' : 'read', c.io);
    const region = lease.region!;
    const { head, mid } = split(f, c, write);
    let done = 0;
    if (head > 0) {
      const n = await edge(f, write, region, c.bufOffset, head, c.fileOffset, c.signal);
      done += n;
      if (n < head) return done; // EOF
    }
    if (mid > 0) {
      // Direct I/O straight into the buffer when its address lines up; else through aligned bounce buffers.
      const memAlign = Math.max(f.align.memAlign, 1);
      const addr = native.address(region) + BigInt(c.bufOffset + head);
      const bounce = !lease.directInto || addr % BigInt(memAlign) !== 0n;
      const r = await engine.run({
        fd: f.directFd,
        write,
        direct: true,
        target: region,
        segments: [c.fileOffset + head, c.bufOffset + head, mid],
        padTo: f.align.offsetAlign,
        bounce,
        populate: false,
        tuning: tuning(write ? 'write' : 'read', {}),
        path: f.path,
        signal: c.signal,
      });
      done += r.bytes;
      if (r.short) return done;
    }
    const tail = c.length - head - mid;
    if (tail > 0) done += await edge(f, write, region, c.bufOffset + head + mid, tail, c.fileOffset + head + mid, c.signal);
    if (write && c.fsync) await fdatasync(f.fd);
    return done;
  } finally {
    lease.release();
    await f?.close();
  }
}

/**
 * Reads `length` bytes of `file` at `fileOffset` into `buffer` at `bufOffset`. Resolves with the bytes read: fewer
 * than asked only at end of file (the rest of the range is left as it was, never filled with garbage).
 */
export function readInto(buffer: LoadedBuffer, file: string | FileHandle, options: RwOptions = {}): Promise<number> {
  return move(false, buffer, file, options);
}

/**
 * Writes `length` bytes of `buffer` at `bufOffset` into `file` at `fileOffset` (created if missing, never
 * truncated). Resolves with the bytes written.
 */
export function writeFrom(buffer: LoadedBuffer, file: string | FileHandle, options: RwOptions = {}): Promise<number> {
  return move(true, buffer, file, options);
}
