/**
 * Target 'memory': anonymous process memory, 2 MiB-aligned. Transparent huge pages are requested with
 * `hugePages: true` (env DMALOAD_HUGE_PAGES=1): fewer faults, but on some machines (VMs whose host backs fresh
 * memory lazily) a huge-page fault costs more than the 512 small ones; the bench measures both.
 */
import { DmaloadSystemError, invalidType } from '../errors.js';
import { C, native } from '../native.js';
import { MiB, roundUp } from '../util.js';
import { layoutOf } from './types.js';
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

/** Faults in [offset, offset+length) of a mapping off the JS thread (MADV_POPULATE_WRITE). */
export async function populate(mapping: ArrayBuffer, offset: number, length: number, path: string): Promise<void> {
  const r = await native.populate(mapping, offset, length);
  // EINVAL: a kernel before 5.14 has no MADV_POPULATE_WRITE; the reads fault the pages in themselves.
  if (r < 0 && r !== -22) throw new DmaloadSystemError(r, 'madvise', path);
}

export const memory: Target = {
  name: 'memory',
  allocate(req: AllocateRequest): Allocation {
    const huge = req.options.hugePages ?? process.env.DMALOAD_HUGE_PAGES === '1';
    if (typeof huge !== 'boolean') throw invalidType('hugePages', 'a boolean', huge);
    let mapping = req.capacity > 0 ? anonymous(req.capacity, huge, req.path) : undefined;
    const layout = layoutOf(req.capacity, req.partSize);
    return {
      mapping,
      directInto: true,
      layout,
      populateInJob: layout.length === 1,
      allocPart: (k) => populate(mapping!, layout[k]!.offset, layout[k]!.length, req.path),
      finish(size) {
        if (mapping && size < req.capacity) new Uint8Array(mapping, size, req.capacity - size).fill(0);
        return [{ fd: -1, offset: 0, size }];
      },
      close() {
        if (mapping) native.munmap(mapping);
        mapping = undefined;
      },
    };
  },
};
