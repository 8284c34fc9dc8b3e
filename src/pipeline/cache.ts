/**
 * The page cache as seen from one file: which pages are resident (mincore over a temporary mapping: mapping a file
 * reads nothing), how many bytes, and eviction (flush, then POSIX_FADV_DONTNEED, checked with mincore; no root needed).
 *
 * Residency is visible only to a caller who owns the file, holds CAP_FOWNER over it or may write it: for anyone
 * else (a service user loading a root-owned 0644 model) Linux >= 5.2 makes mincore() answer "resident" for every page,
 * and cachestat() refuses (EPERM). There the figures are null, never a guess, and io 'auto' reads by direct I/O.
 */
import { W_OK } from 'node:constants';
import { accessSync, closeSync, fdatasyncSync, fstatSync, readFileSync } from 'node:fs';
import { DmaloadSystemError } from '../core/errors.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';
import { openRegularSync } from './source.js';

/** Why residency is hidden from readers, for stats.ioReason and messages. */
export const RESIDENCY_HIDDEN =
  'page-cache residency cannot be known by a user who may read the file but not write it (the kernel hides it from mincore and cachestat), so it is read by direct I/O';

let fowner: boolean | undefined;
/** CAP_FOWNER in this process's effective set (bit 3 of CapEff): the kernel's "owner or capable". */
function hasCapFowner(): boolean {
  if (fowner === undefined) {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    fowner = m ? (BigInt('0x' + m[1]!) & 8n) !== 0n : false;
  }
  return fowner;
}

let overflowUid: number | undefined;
/** The uid stat() shows for an owner unmapped in this user namespace; CAP_FOWNER does not reach such a file. */
function unmappedUid(): number {
  if (overflowUid === undefined) {
    try {
      overflowUid = Number(readFileSync('/proc/sys/kernel/overflowuid', 'utf8').trim());
    } catch {
      overflowUid = 65534;
    }
  }
  return overflowUid;
}

/**
 * Whether mincore() tells this process the truth about the file behind `fd`: the kernel's own rule (mm/mincore.c
 * can_do_mincore: owner or CAP_FOWNER, or write permission, which a read-only mount or an immutable file denies).
 */
export function residencyVisible(fd: number): boolean {
  const st = fstatSync(fd);
  if (st.uid === process.geteuid?.()) return true;
  if (st.uid !== unmappedUid() && hasCapFowner()) return true;
  try {
    accessSync(`/proc/self/fd/${fd}`, W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Bytes of the file resident in the page cache (mincore over a temporary mapping); 0 for an empty file; null where
 * this process cannot know ({@link residencyVisible}).
 */
export function pageCacheBytes(fd: number, size: number, offset = 0): number | null {
  if (size === 0) return 0;
  if (!residencyVisible(fd)) return null;
  const r = native.residency(fd, offset, size);
  if (r < 0) throw new DmaloadSystemError(r, 'mincore');
  return r;
}

/**
 * Which pages of [offset, offset+size) are in the page cache: one byte per 4 KiB page from the page holding
 * `offset`, 1 = resident (mincore over a temporary mapping: mapping a file reads nothing); null where this process
 * cannot know ({@link residencyVisible}).
 */
export function residentPages(fd: number, size: number, offset = 0): Uint8Array | null {
  if (size > 0 && !residencyVisible(fd)) return null;
  const first = Math.floor(offset / PAGE_SIZE);
  const pages = new Uint8Array(Math.ceil((offset + size) / PAGE_SIZE) - first);
  if (size === 0) return pages;
  const r = native.residency(fd, offset, size, pages);
  if (r < 0) throw new DmaloadSystemError(r, 'mincore');
  return pages;
}

/**
 * Drops the file's pages from the page cache (no root needed) and returns the bytes that stayed (mincore), or null
 * where this process cannot count them ({@link residencyVisible}; the pages are dropped all the same).
 *
 * POSIX_FADV_DONTNEED skips dirty pages and pages under writeback, so a file that was just written would stay
 * largely cached ("cold" loads that are not cold): the pages are written back first (sync_file_range: wait for
 * writeback in progress, write, wait again; fdatasync where that is refused), then dropped, then counted. Pages that
 * still stay — mapped or locked by some process — are the caller's news to report.
 */
export function evict(fd: number, path?: string): number | null {
  const size = fstatSync(fd).size;
  const flush = (): void => {
    const r = native.syncRange(fd, 0, 0, C.SYNC_FILE_RANGE_WAIT_BEFORE | C.SYNC_FILE_RANGE_WRITE | C.SYNC_FILE_RANGE_WAIT_AFTER);
    // ESPIPE/EINVAL: a file (system) sync_file_range does not apply to; fdatasync covers any file.
    if (r < 0) fdatasyncSync(fd);
  };
  const drop = (): void => {
    const r = native.fadvise(fd, 0, 0, C.POSIX_FADV_DONTNEED);
    if (r < 0) throw new DmaloadSystemError(r, 'posix_fadvise', path);
  };
  flush();
  drop();
  let left = pageCacheBytes(fd, size);
  if (left === null) {
    // Nothing can tell whether a writer raced the first pass: make the second pass anyway.
    fdatasyncSync(fd);
    drop();
  } else if (left > 0) {
    // A writer raced the first pass, or the file system wants a full data sync before pages count as clean.
    fdatasyncSync(fd);
    drop();
    left = pageCacheBytes(fd, size);
  }
  return left;
}

/**
 * evict() by path: the bytes that stayed cached. What is not a regular file is refused as load() refuses it
 * (ERR_NOT_REGULAR_FILE, EISDIR), before open() could block on a FIFO.
 */
export function evictPath(path: string): number | null {
  const fd = openRegularSync(path);
  try {
    return evict(fd, path);
  } finally {
    closeSync(fd);
  }
}

/** pageCacheBytes() by path; refuses what is not a regular file, as {@link evictPath} does. */
export function pageCacheBytesOf(path: string, size: number): number | null {
  const fd = openRegularSync(path);
  try {
    return pageCacheBytes(fd, size);
  } finally {
    closeSync(fd);
  }
}

/**
 * Evicts the pages of [offset, offset+size) that a read brought into the page cache, leaving what was cached
 * before (`before`: {@link residentPages} of the same range, taken before the read).
 */
export function dropAdded(fd: number, before: Uint8Array, size: number, offset = 0): void {
  const after = residentPages(fd, size, offset);
  if (!after) return;
  const base = Math.floor(offset / PAGE_SIZE) * PAGE_SIZE;
  for (let i = 0; i < after.length;) {
    if (after[i] !== 1 || before[i] === 1) {
      i++;
      continue;
    }
    let j = i;
    while (j < after.length && after[j] === 1 && before[j] !== 1) j++;
    // Written back first: POSIX_FADV_DONTNEED skips a dirty page, and on ext4 a read can leave one (measured: the
    // page holding the end of a file whose preallocated tail was cut off, read with RWF_DONTCACHE). For clean
    // pages this costs a walk of the range and no I/O.
    native.syncRange(fd, base + i * PAGE_SIZE, (j - i) * PAGE_SIZE, C.SYNC_FILE_RANGE_WAIT_BEFORE | C.SYNC_FILE_RANGE_WRITE | C.SYNC_FILE_RANGE_WAIT_AFTER);
    native.fadvise(fd, base + i * PAGE_SIZE, (j - i) * PAGE_SIZE, C.POSIX_FADV_DONTNEED);
    i = j;
  }
}

/**
 * Runs `read` and then drops what its uncached reads (RWF_DONTCACHE) left behind that was not cached before: the
 * kernel drops such pages only when it can at once (a page other readers hold, or the one holding the end of the
 * file, can stay). Only when `rwFlags` asks for uncached I/O; else just runs `read`.
 */
export async function uncachedRead<T>(fd: number, rwFlags: number, size: number, offset: number, read: () => Promise<T>): Promise<T> {
  if (!rwFlags || size === 0) return read();
  const before = residentPages(fd, size, offset);
  // Where residency is hidden, what RWF_DONTCACHE itself dropped is all that can be done.
  if (!before) return read();
  try {
    return await read();
  } finally {
    dropAdded(fd, before, size, offset);
  }
}
