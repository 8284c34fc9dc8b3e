/**
 * Target 'memory': anonymous process memory, 2 MiB-aligned. Transparent huge pages are requested with
 * `hugePages: true` (env DMALOAD_HUGE_PAGES=1): fewer faults, but on some machines (VMs whose host backs fresh
 * memory lazily) a huge-page fault costs more than the 512 small ones. load() passes the decision of this
 * machine's measurement (engine/first-touch.ts) when the caller gives none.
 */
import { invalidType } from '../core/errors.js';
import { native } from '../engine/binding.js';
import { anonymous, populate, zero } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

export const memory: Target = {
  name: 'memory',
  allocate(req: AllocateRequest): Allocation {
    const huge = req.options.hugePages ?? process.env.DMALOAD_HUGE_PAGES === '1';
    if (typeof huge !== 'boolean') throw invalidType('hugePages', 'a boolean', huge);
    let region = req.capacity > 0 ? anonymous(req.capacity, huge, req.path) : undefined;
    const layout = layoutOf(req.capacity, req.partSize);
    return {
      region,
      directInto: true,
      layout,
      populateInJob: layout.length === 1,
      allocPart: (k) => populate(region!, layout[k]!.offset, layout[k]!.length, req.path),
      finish(size) {
        if (region && size < req.capacity) zero(region!, size, req.capacity - size);
        return [{ fd: -1, offset: 0, size }];
      },
      close() {
        if (region) native.munmap(region);
        region = undefined;
      },
    };
  },
};
