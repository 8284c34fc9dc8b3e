/**
 * The page cache as seen from one file: which pages are resident (mincore over a temporary mapping: mapping a file
 * reads nothing), how many bytes, and eviction (POSIX_FADV_DONTNEED, no root needed).
 */
import { closeSync, openSync } from 'node:fs';
import { DmaloadSystemError } from '../core/errors.js';
import { C, PAGE_SIZE, native } from '../engine/binding.js';

/** Bytes of the file resident in the page cache (mincore over a temporary mapping); 0 for an empty file. */
export function pageCacheBytes(fd: number, size: number, offset = 0): number {
  if (size === 0) return 0;
  const r = native.residency(fd, offset, size);
  if (r < 0) throw new DmaloadSystemError(r, 'mincore');
  return r;
}

/**
 * Which pages of [0, size) are in the page cache: one byte per 4 KiB page, 1 = resident (mincore over a temporary
 * mapping: mapping a file reads nothing).
 */
export function residentPages(fd: number, size: number): Uint8Array {
  const pages = new Uint8Array(Math.ceil(size / PAGE_SIZE));
  if (size === 0) return pages;
  const r = native.residency(fd, 0, size, pages);
  if (r < 0) throw new DmaloadSystemError(r, 'mincore');
  return pages;
}

/** Drops the file's clean pages from the page cache (no root needed). */
export function evict(fd: number, path?: string): void {
  const r = native.fadvise(fd, 0, 0, C.POSIX_FADV_DONTNEED);
  if (r < 0) throw new DmaloadSystemError(r, 'posix_fadvise', path);
}

/** evict() by path. */
export function evictPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    evict(fd, path);
  } finally {
    closeSync(fd);
  }
}

/** pageCacheBytes() by path. */
export function pageCacheBytesOf(path: string, size: number): number {
  const fd = openSync(path, 'r');
  try {
    return pageCacheBytes(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** Evicts the pages that a load brought into the page cache, leaving what was cached before. */
export function dropAdded(fd: number, before: Uint8Array, size: number): void {
  const after = residentPages(fd, size);
  for (let i = 0; i < after.length; ) {
    if (after[i] !== 1 || before[i] === 1) {
      i++;
      continue;
    }
    let j = i;
    while (j < after.length && after[j] === 1 && before[j] !== 1) j++;
    native.fadvise(fd, i * PAGE_SIZE, (j - i) * PAGE_SIZE, C.POSIX_FADV_DONTNEED);
    i = j;
  }
}
