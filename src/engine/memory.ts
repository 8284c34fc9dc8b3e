/**
 * Anonymous memory for the library's own use (staging buffers, rings, the memory target) and faulting pages in off
 * the JS thread. Lives with the engine because every layer above needs it, not only the memory target.
 */
import { DmaloadSystemError } from '../core/errors.js';
import { MiB, roundUp } from '../core/util.js';
import { C, native } from './binding.js';

export const HUGE = 2 * MiB;

/** Maps `capacity` bytes of anonymous memory; huge-page aligned when that is at least one huge page. */
export function anonymous(capacity: number, hugePages: boolean, path?: string): ArrayBuffer {
  const huge = capacity >= HUGE;
  const len = huge ? roundUp(capacity, HUGE) : capacity;
  const ab = native.mmap(len, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, huge ? HUGE : 0);
  if (typeof ab === 'number') throw new DmaloadSystemError(ab, 'mmap', path);
  // Advice only: the kernel may still use small pages.
  if (huge && hugePages) native.madvise(ab, 0, len, C.MADV_HUGEPAGE);
  return ab;
}

/** Faults in [offset, offset+length) of a mapping off the JS thread (MADV_POPULATE_WRITE). */
export async function populate(mapping: ArrayBuffer, offset: number, length: number, path: string): Promise<void> {
  const r = await native.populate(mapping, offset, length);
  // EINVAL: a kernel before 5.14 has no MADV_POPULATE_WRITE; the reads fault the pages in themselves.
  if (r < 0 && r !== -22) throw new DmaloadSystemError(r, 'madvise', path);
}

