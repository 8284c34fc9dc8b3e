/** Target 'memory': anonymous process memory, 2 MiB-aligned with transparent huge pages requested. */
import { DmaloadSystemError } from '../errors.js';
import { C, native } from '../native.js';
import { MiB, roundUp } from '../util.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

const HUGE = 2 * MiB;

/** Maps `capacity` bytes of anonymous memory; huge-page aligned when that is at least one huge page. */
export function anonymous(capacity: number, path?: string): ArrayBuffer {
  const huge = capacity >= HUGE;
  const len = huge ? roundUp(capacity, HUGE) : capacity;
  const ab = native.mmap(len, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, huge ? HUGE : 0);
  if (typeof ab === 'number') throw new DmaloadSystemError(ab, 'mmap', path);
  // Fewer, larger faults: a 4 KiB fault costs about as much CPU as copying the page it avoids. Advice only.
  if (huge) native.madvise(ab, 0, len, C.MADV_HUGEPAGE);
  return ab;
}

export const memory: Target = {
  name: 'memory',
  allocate(req: AllocateRequest): Allocation {
    let mapping = req.capacity > 0 ? anonymous(req.capacity, req.path) : undefined;
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
