/**
 * Target 'memfd': a sealed memfd whose fd the caller can pass to another process or driver. Filled through its own
 * shared region (direct I/O into shmem pages works: they are pinned like any user page), then trimmed to the
 * file's exact size and sealed against shrinking and growing.
 *
 * With `hugePages: true` (as load() decides it for fresh memory) the memfd's pages are made huge folios as they are
 * faulted in: mapped 2 MiB-aligned, each whole 2 MiB extent collapsed (MADV_COLLAPSE, whatever shmem_enabled says but
 * 'deny'); readers that map it aligned get PMDs, and freeing it is ~50× cheaper. Small pages where that fails.
 *
 * With `req.hugetlb` the memfd is a hugetlbfs file (MFD_HUGETLB) whose pages come from the pool: its size stays a
 * whole number of huge pages (hugetlbfs refuses any other; the bytes past the data are zeros), and `parts[0].size`
 * says how much of it is the file.
 */
import { ftruncateSync } from 'node:fs';
import { basename } from 'node:path';
import { DmaloadSystemError } from '../core/errors.js';
import { roundUp } from '../core/util.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { checkPool, hugetlbMapError } from '../engine/hugetlb.js';
import { HUGE, populate, zero } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

/**
 * Creates a sealable memfd of `size` bytes named after the file; the caller owns the fd. `hugetlb`: a hugetlbfs
 * memfd of the default huge page size (MFD_HUGETLB) of that page size; `size` must be a multiple of it.
 */
export function createMemfd(path: string, size: number, hugetlb?: number): number {
  const flags = C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING | (hugetlb ? C.MFD_HUGETLB : 0);
  const fd = native.memfdCreate(`dmaload:${basename(path)}`.slice(0, 249), flags);
  if (fd < 0) throw hugetlb ? hugetlbMapError(fd, 'memfd_create', size, hugetlb, path) : new DmaloadSystemError(fd, 'memfd_create', path);
  try {
    ftruncateSync(fd, size);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/**
 * Maps a memfd shared, read-write; the caller unmaps it. A hugetlb memfd's pages are reserved here (ENOMEM:
 * ERR_HUGETLB_POOL). `align`: the mapping's address is a multiple of it (2 MiB: shmem's huge folios mapped by PMDs).
 */
export function mapShared(fd: number, length: number, path?: string, hugetlb?: number, align = 0): Region {
  const ab = native.mmap(length, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0, align);
  if (typeof ab === 'number') throw hugetlb ? hugetlbMapError(ab, 'mmap', length, hugetlb, path ?? '<memfd>') : new DmaloadSystemError(ab, 'mmap', path);
  return ab;
}

export const memfd: Target = {
  name: 'memfd',
  allocate(req: AllocateRequest): Allocation {
    const hugetlb = req.hugetlb;
    const length = hugetlb ? roundUp(req.capacity, hugetlb) : req.capacity;
    const folios = !hugetlb && req.options.hugePages === true && length >= HUGE;
    if (hugetlb) checkPool(length, hugetlb, req.path);
    let fd = createMemfd(req.path, length, hugetlb);
    let region: Region | undefined;
    try {
      region = length > 0 ? mapShared(fd, length, req.path, hugetlb, folios ? HUGE : 0) : undefined;
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    const layout = layoutOf(req.capacity, req.partSize);
    return {
      region,
      fd,
      writeFd: fd,
      directInto: true,
      layout,
      populateInJob: layout.length === 1,
      hugeFolios: folios,
      allocPart: (k) => populate(region!, layout[k]!.offset, layout[k]!.length, req.path, folios),
      finish(size) {
        // Direct reads filled whole blocks past the end: cut them off, then freeze the size. hugetlbfs keeps whole
        // huge pages: zero what the reads wrote past the end instead (the rest of the last page is fresh zeros).
        if (hugetlb) {
          if (region && size < req.capacity) zero(region, size, req.capacity - size);
        } else if (size !== req.capacity) ftruncateSync(fd, size);
        const r = native.seals(fd, C.F_SEAL_SHRINK | C.F_SEAL_GROW);
        if (r < 0) throw new DmaloadSystemError(r, 'fcntl', req.path);
        return [{ fd, offset: 0, size }];
      },
      close() {
        if (region) native.munmap(region);
        region = undefined;
        if (fd >= 0) closeFd(fd);
        fd = -1;
      },
    };
  },
};
