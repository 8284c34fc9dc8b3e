/**
 * readInto / writeFrom: move bytes between a file and a buffer at offsets, with the validations of the proposed
 * DMA_BUF_IOCTL_RW_FILE (length > 0, no overflow, in bounds, direct I/O aligned) — and, better than the patch,
 * `io: 'auto'` does ragged edges by buffered I/O and the aligned middle by direct I/O.
 */
import fs, { constants as FS, promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import type { FileHandle } from 'node:fs/promises';
import { LoadedBuffer } from '../core/buffer.js';
import type { LoadStats } from '../core/buffer.js';
import * as engine from '../engine/engine.js';
import { DmaloadError, invalidType, outOfRange } from '../core/errors.js';
import { dioAlign, directUnsupported, reopenDirect, requireRegular } from '../pipeline/source.js';
import type { DioAlign, IoMode } from '../pipeline/source.js';
import { PAGE_SIZE, native } from '../engine/binding.js';
import { TARGET_NAMES, targets } from '../targets/index.js';
import type { TargetName } from '../targets/index.js';
import { enumOption, roundUp } from '../core/util.js';

export interface RwOptions {
  /** Offset in the file. Default 0. A number or a bigint. */
  fileOffset?: number | bigint;
  /** Offset in the buffer. Default 0. */
  bufOffset?: number | bigint;
  /** Bytes to move; must be > 0. Default: the rest of the buffer from `bufOffset`. */
  length?: number | bigint;
  /**
   * 'direct': every offset and the length must be aligned to the file system's direct-I/O block
   * (ERR_DIRECT_IO_ALIGNMENT otherwise); 'buffered'; 'auto' (default): ragged edges buffered, the middle direct.
   */
  io?: IoMode;
  /** writeFrom only: fdatasync before resolving. Default false. */
  fsync?: boolean;
  signal?: AbortSignal;
}

const IO_MODES: readonly IoMode[] = ['auto', 'direct', 'buffered'];
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
}

/** The validations, in BigInt so that no sum can overflow or round. */
function validate(buffer: LoadedBuffer, o: RwOptions): Checked {
  if (!(buffer instanceof LoadedBuffer)) throw invalidType('buffer', 'a LoadedBuffer (from load() or allocate())', buffer);
  if (o === null || typeof o !== 'object') throw invalidType('options', 'an object', o);
  const io = enumOption('io', o.io, IO_MODES, 'auto');
  if (buffer.closed) void buffer.bytes; // throws ERR_BUFFER_CLOSED, naming the file
  const size = BigInt(buffer.size);
  const fileOffset = big('fileOffset', o.fileOffset, 0n);
  const bufOffset = big('bufOffset', o.bufOffset, 0n);
  const length = big('length', o.length, size > bufOffset ? size - bufOffset : 0n);
  if (length <= 0n) throw outOfRange('length', '> 0', length);
  if (bufOffset + length > size) throw outOfRange('bufOffset + length', `<= the buffer's size (${size})`, bufOffset + length);
  if (fileOffset + length > MAX_OFF) throw outOfRange('fileOffset + length', `<= ${MAX_OFF} (it must not wrap)`, fileOffset + length);
  return { fileOffset: Number(fileOffset), bufOffset: Number(bufOffset), length: Number(length), io };
}

interface Fds {
  path: string;
  buffered: number;
  direct: number; // -1: none
  align: DioAlign;
  close(): Promise<void>;
}

/** Opens (or borrows) the file twice: buffered for ragged edges, O_DIRECT for the middle where allowed. */
async function openFile(file: string | FileHandle, write: boolean, io: IoMode): Promise<Fds> {
  const flags = write ? FS.O_WRONLY | FS.O_CREAT : FS.O_RDONLY;
  const owned: FileHandle[] = [];
  const closeAll = async () => {
    for (const h of owned.splice(0)) await h.close().catch(() => {});
  };
  try {
    let path: string;
    let buffered: number;
    if (typeof file === 'string') {
      if (file === '') throw invalidType('file', 'a path or an open FileHandle', file);
      const st = await fsp.stat(file).catch((e: NodeJS.ErrnoException) => (write && e.code === 'ENOENT' ? undefined : Promise.reject(e)));
      if (st) requireRegular(st, file);
      const h = await fsp.open(file, flags | FS.O_NONBLOCK, 0o644);
      owned.push(h);
      path = file;
      buffered = h.fd;
    } else if (file && typeof file === 'object' && typeof (file as FileHandle).fd === 'number') {
      buffered = (file as FileHandle).fd;
      path = `fd ${buffered}`;
      if (buffered < 0) throw new DmaloadError('ERR_FILE_CLOSED', 'The file handle is closed; open the file again', {});
    } else {
      throw invalidType('file', 'a path or an open FileHandle', file);
    }
    requireRegular(await fsp.stat(`/proc/self/fd/${buffered}`), path);
    const align = dioAlign(buffered);
    let direct = -1;
    if (io !== 'buffered' && align.offsetAlign > 0) {
      const h = await reopenDirect(buffered, write ? FS.O_WRONLY : FS.O_RDONLY); // works for borrowed handles too
      if (h) {
        owned.push(h);
        direct = h.fd;
      }
    }
    if (io === 'direct' && direct < 0) throw directUnsupported(path);
    return { path, buffered, direct, align, close: closeAll };
  } catch (e) {
    await closeAll();
    throw e;
  }
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

/** Buffered pread/pwrite of a small ragged edge; returns bytes moved (a read stops at EOF). */
async function edge(fd: number, write: boolean, mem: Uint8Array, fileOffset: number): Promise<number> {
  let done = 0;
  while (done < mem.length) {
    const view = mem.subarray(done);
    const n = write ? (await pwrite(fd, view, 0, view.length, fileOffset + done)).bytesWritten : (await pread(fd, view, 0, view.length, fileOffset + done)).bytesRead;
    if (n === 0) break;
    done += n;
  }
  return done;
}

async function move(write: boolean, buffer: LoadedBuffer, file: string | FileHandle, o: RwOptions): Promise<number> {
  const c = validate(buffer, o);
  o.signal?.throwIfAborted();
  const lease = buffer.borrow(write ? 'the buffer for writeFrom' : 'the buffer for readInto');
  let fds: Fds | undefined;
  try {
    fds = await openFile(file, write, c.io);
    const A = Math.max(fds.align.offsetAlign, 1);
    const mapping = lease.mapping!;
    const view = new Uint8Array(mapping, c.bufOffset, c.length);
    // Split into a buffered head, a direct middle and a buffered tail.
    let head = 0;
    let mid = 0;
    if (fds.direct >= 0) {
      if (c.io === 'direct') {
        for (const [what, v] of [['fileOffset', c.fileOffset], ['bufOffset', c.bufOffset], ['length', c.length]] as const) {
          if (v % A !== 0) throw alignmentError(fds.path, what, v, A);
        }
        mid = c.length;
      } else {
        head = Math.min(c.length, (A - (c.fileOffset % A)) % A);
        mid = Math.floor((c.length - head) / A) * A;
      }
    }
    let done = 0;
    if (head > 0) {
      const n = await edge(fds.buffered, write, view.subarray(0, head), c.fileOffset);
      done += n;
      if (n < head) return done; // EOF
    }
    if (mid > 0) {
      // Direct I/O straight into the buffer when its address lines up; else through aligned bounce buffers.
      const memAlign = Math.max(fds.align.memAlign, 1);
      const addr = Number(native.address(mapping) % BigInt(PAGE_SIZE)) + c.bufOffset + head;
      const bounce = !lease.directInto || addr % memAlign !== 0;
      const r = await engine.run({
        fd: fds.direct,
        write,
        direct: true,
        buffer: mapping,
        segments: [c.fileOffset + head, c.bufOffset + head, mid],
        padTo: A,
        bounce,
        populate: false,
        tuning: engine.tuning({}),
        path: fds.path,
        signal: o.signal,
      });
      done += r.bytes;
      if (r.short) return done;
    }
    const tail = c.length - head - mid;
    if (tail > 0) done += await edge(fds.buffered, write, view.subarray(head + mid), c.fileOffset + head + mid);
    if (write && o.fsync) await fdatasync(fds.buffered);
    return done;
  } finally {
    lease.release();
    await fds?.close();
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
