/**
 * Target 'memory': anonymous process memory, 2 MiB-aligned. Transparent huge pages are requested with
 * `hugePages: true` (env DMALOAD_HUGE_PAGES=1): fewer faults, but on some machines (VMs whose host backs fresh
 * memory lazily) a huge-page fault costs more than the 512 small ones. load() passes the decision of this
 * machine's measurement (engine/first-touch.ts) when the caller gives none. With `req.hugetlb` the memory comes from
 * the hugetlb pool instead (MAP_HUGETLB, whole huge pages, reserved at mmap).
 */
import { roundUp } from '../core/util.js';
import { native } from '../engine/binding.js';
import { hugetlbAnonymous } from '../engine/hugetlb.js';
import { anonymous, populate, zero } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

export const memory: Target = {
  name: 'memory',
  allocate(req: AllocateRequest): Allocation {
    // load() and allocate() resolved the option (or DMALOAD_HUGE_PAGES): a boolean asks for MADV_HUGEPAGE or not.
    const huge = req.options.hugePages === true;
    let region =
      req.capacity === 0
        ? undefined
        : req.hugetlb
          ? hugetlbAnonymous(roundUp(req.capacity, req.hugetlb), req.hugetlb, req.path)
          : anonymous(req.capacity, huge, req.path);
    const layout = layoutOf(req.capacity, req.partSize);
    return {
      region,
      directInto: true,
      layout,
      populateInJob: layout.length === 1,
      allocPart: (k) => populate(region!, layout[k]!.offset, layout[k]!.length, req.path),
      finish(size) {
        if (region && size < req.capacity) zero(region, size, req.capacity - size);
        return [{ fd: -1, offset: 0, size }];
      },
      close() {
        if (region) native.munmap(region);
        region = undefined;
      },
    };
  },
};
