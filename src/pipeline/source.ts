/**
 * Opening a source file for a load: refuse what is not a regular file before open() can block on it, open it for
 * direct I/O when its file system allows, and learn the alignment direct I/O needs there.
 */
import { constants as FS, promises as fsp } from 'node:fs';
import type { Stats } from 'node:fs';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';

export type IoMode = 'direct' | 'buffered' | 'auto';

/** Direct-I/O alignment of a file's file system (statx STATX_DIOALIGN); zeros when direct I/O is not possible. */
export interface DioAlign {
  memAlign: number;
  offsetAlign: number;
}

export interface OpenedSource {
  path: string;
  fd: number;
  size: number;
  stat: Stats;
  /** The same file without O_DIRECT, for ranges already in the page cache (equal to `fd` when not direct). */
  bufferedFd: number;
  /** True when `fd` was opened with O_DIRECT. */
  direct: boolean;
  align: DioAlign;
  /** Why the load is buffered although direct I/O was asked for or preferred; undefined when direct. */
  fallbackReason: string | undefined;
  close(): Promise<void>;
}

/** Throws the library's errors for what is not a regular file: EISDIR for folders, ERR_NOT_REGULAR_FILE otherwise. */
export function requireRegular(st: Stats, path: string, syscall = 'open'): void {
  if (st.isFile()) return;
  if (st.isDirectory()) throw new DmaloadSystemError(21 /* EISDIR */, syscall, path);
  const kind = st.isFIFO() ? 'a FIFO' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : st.isSocket() ? 'a socket' : 'not a regular file';
  throw new DmaloadError('ERR_NOT_REGULAR_FILE', `'${path}' is ${kind}; dmaload reads regular files only (their size is known and stable)`, { path });
}

export function dioAlign(fd: number): DioAlign {
  const r = native.statxDio(fd);
  if (typeof r === 'number') return { memAlign: 0, offsetAlign: 0 };
  return { memAlign: r[0], offsetAlign: r[1] };
}

/**
 * Opens `path` for reading with the requested io. `direct` and `auto` try O_DIRECT and fall back to buffered
 * reads, with the reason, where the file system cannot do it (tmpfs, or an open() that fails with EINVAL).
 */
export async function openSource(path: string, io: IoMode): Promise<OpenedSource> {
  // stat() first: open() of a FIFO blocks until a writer appears, and /dev/zero never ends.
  requireRegular(await fsp.stat(path), path);
  const fh = await fsp.open(path, FS.O_RDONLY | FS.O_NONBLOCK);
  let dh: fsp.FileHandle | undefined;
  try {
    const stat = await fh.stat();
    requireRegular(stat, path); // swapped for something else between stat() and open()
    const align = dioAlign(fh.fd);
    let direct = false;
    let fallbackReason: string | undefined;
    if (io !== 'buffered') {
      if (align.memAlign === 0 || align.offsetAlign === 0) {
        fallbackReason = 'the file system does not support direct I/O (statx reports no STATX_DIOALIGN)';
      } else {
        dh = await reopenDirect(fh.fd, FS.O_RDONLY);
        direct = dh !== undefined;
        if (!direct) fallbackReason = 'open() with O_DIRECT failed with EINVAL on this file system';
      }
    }
    const d = dh;
    return {
      path,
      fd: d ? d.fd : fh.fd,
      bufferedFd: fh.fd,
      size: stat.size,
      stat,
      direct,
      align: direct ? align : { memAlign: 0, offsetAlign: 0 },
      fallbackReason,
      close: async () => {
        await d?.close();
        await fh.close();
      },
    };
  } catch (e) {
    await dh?.close().catch(() => {});
    await fh.close().catch(() => {});
    throw e;
  }
}

/**
 * A second open file description of the file behind `fd`, with O_DIRECT; reopened through /proc so that it is the
 * same file whatever happened to its path. Undefined where the file system refuses O_DIRECT (EINVAL).
 */
export async function reopenDirect(fd: number, accessMode: number): Promise<fsp.FileHandle | undefined> {
  try {
    return await fsp.open(`/proc/self/fd/${fd}`, accessMode | FS.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw e;
  }
}

export function directUnsupported(path: string): DmaloadError {
  return new DmaloadError('ERR_DIRECT_IO_UNSUPPORTED', `The file system of '${path}' does not support direct I/O; use io 'auto' or 'buffered'`, { path });
}

/** ERR_FILE_CHANGED: the file's size changed under a load or a copy, so the bytes may mix old and new. */
export function fileChanged(path: string, during: string, expected: number, now: number): never {
  throw new DmaloadError(
    'ERR_FILE_CHANGED',
    `'${path}' changed size during the ${during} (${expected} bytes at the start, ${now} now); try again once nothing writes to it`,
    { path },
  );
}
