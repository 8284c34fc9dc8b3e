/**
 * Anonymous memory for the library's own use (staging buffers, rings, the memory target) and faulting pages in off
 * the JS thread. Lives with the engine because every layer above needs it, not only the memory target.
 */
import { DmaloadSystemError } from '../core/errors.js';
import { MiB, roundUp } from '../core/util.js';
import { C, native } from './binding.js';
import type { Region } from './binding.js';

/** A huge page's (a PMD's) span: 2 MiB-aligned memory gets its huge pages and folios mapped whole. */
export const HUGE = 2 * MiB;

/** Maps `capacity` bytes of anonymous memory (rounded up to a huge page when that is at least one); huge-page aligned when that is at least one huge page. */
export function anonymous(capacity: number, hugePages: boolean, path?: string): Region {
  const huge = capacity >= HUGE;
  const len = huge ? roundUp(capacity, HUGE) : capacity;
  const r = native.mmap(len, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, huge ? HUGE : 0);
  if (typeof r === 'number') throw new DmaloadSystemError(r, 'mmap', path);
  // Advice only: the kernel may still use small pages.
  if (huge && hugePages) native.madvise(r, 0, len, C.MADV_HUGEPAGE);
  return r;
}

/**
 * Faults in [offset, offset+length) of a mapping off the JS thread (MADV_POPULATE_WRITE); `huge`: its whole aligned
 * 2 MiB extents as huge folios (MADV_COLLAPSE; for shmem: the memfd target), small pages where that fails.
 */
export async function populate(region: Region, offset: number, length: number, path: string, huge = false): Promise<void> {
  const r = await native.populate(region, offset, length, huge);
  // EINVAL: a kernel before 5.14 has no MADV_POPULATE_WRITE; the reads fault the pages in themselves.
  if (r < 0 && r !== -22) throw new DmaloadSystemError(r, 'madvise', path);
}

/** Zeros [offset, offset+length) of a region: the padding past a file's end that whole-block reads filled. */
export function zero(region: Region, offset: number, length: number): void {
  withBytes(region, offset, length, (b) => b.fill(0));
}

/**
 * Runs `fn` on a view of [offset, offset+length) that is released as soon as `fn` returns, so that unmapping the
 * region later never waits for the garbage collector to finalize it. `fn` must not keep the view.
 */
export function withBytes<T>(region: Region, offset: number, length: number, fn: (bytes: Uint8Array) => T): T {
  if (length === 0) return fn(new Uint8Array(0));
  const ab = native.view(region, offset, length);
  try {
    return fn(new Uint8Array(ab));
  } finally {
    native.unview(ab);
  }
}

/** {@link withBytes} for an async `fn`: the view is released once its promise settles. */
export async function withBytesAsync<T>(region: Region, offset: number, length: number, fn: (bytes: Uint8Array) => Promise<T>): Promise<T> {
  if (length === 0) return fn(new Uint8Array(0));
  const ab = native.view(region, offset, length);
  try {
    return await fn(new Uint8Array(ab));
  } finally {
    native.unview(ab);
  }
}

/** A Uint8Array over [offset, offset+length) of a region (empty for length 0). */
export function bytesOf(region: Region, offset: number, length: number): Uint8Array {
  return length === 0 ? new Uint8Array(0) : new Uint8Array(native.view(region, offset, length));
}
