/**
 * Target 'memory': anonymous process memory, 2 MiB-aligned. Transparent huge pages are requested with
 * `hugePages: true` (env DMALOAD_HUGE_PAGES=1): fewer faults, but on some machines (VMs whose host backs fresh
 * memory lazily) a huge-page fault costs more than the 512 small ones; the bench measures both.
 */
import { DmaloadSystemError, invalidType } from '../errors.js';
import { C, native } from '../native.js';
import { MiB, roundUp } from '../util.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

const HUGE = 2 * MiB;

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

export const memory: Target = {
  name: 'memory',
  allocate(req: AllocateRequest): Allocation {
    const huge = req.options.hugePages ?? process.env.DMALOAD_HUGE_PAGES === '1';
    if (typeof huge !== 'boolean') throw invalidType('hugePages', 'a boolean', huge);
    let mapping = req.capacity > 0 ? anonymous(req.capacity, huge, req.path) : undefined;
    return {
      mapping,
      directInto: true,
      populate: true,
      finish: (size) => [{ fd: -1, offset: 0, size }],
      close() {
        if (mapping) native.munmap(mapping);
        mapping = undefined;
      },
    };
  },
};
