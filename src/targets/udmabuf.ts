/**
 * Target 'udmabuf': the maintainers' answer. A memfd filled by direct I/O through its own region (the udmabuf's
 * region is VM_PFNMAP, so I/O never goes there), sealed against shrinking and growing, then wrapped part by part
 * with UDMABUF_CREATE. One udmabuf holds at most size_limit_mb (module parameter, 64 by default): a larger file
 * becomes a set of parts. The CPU view stays one contiguous region. With `req.hugetlb` the memfd is a hugetlbfs one
 * (MFD_HUGETLB, pages from the pool, whole huge pages).
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { MiB, roundUp } from '../core/util.js';
import { checkPool } from '../engine/hugetlb.js';
import { createMemfd, mapShared } from './memfd.js';
import { populate, zero } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

export const UDMABUF_DEVICE = '/dev/udmabuf';
export const UDMABUF_LIMIT_PARAM = '/sys/module/udmabuf/parameters/size_limit_mb';
const UDMABUF_FLAGS_CLOEXEC = 0x01;

/** The largest udmabuf the kernel allows, in bytes (size_limit_mb; 64 MiB when the parameter cannot be read). */
export function udmabufLimit(): number {
  try {
    return Number(readFileSync(UDMABUF_LIMIT_PARAM, 'utf8').trim()) * MiB;
  } catch {
    return 64 * MiB;
  }
}

/** Opens /dev/udmabuf, or explains why not. */
export function openUdmabuf(path: string): number {
  try {
    return openSync(UDMABUF_DEVICE, 'r+');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') {
      throw new DmaloadError(
        'ERR_NO_UDMABUF',
        `${UDMABUF_DEVICE} does not exist: this kernel has no udmabuf (CONFIG_UDMABUF); load '${path}' into target 'memfd' instead`,
        { path: UDMABUF_DEVICE },
      );
    }
    throw new DmaloadSystemError(
      err.errno ?? -13,
      'open',
      UDMABUF_DEVICE,
      err.code === 'EACCES' ? `no permission on ${UDMABUF_DEVICE}: add the user to its group or run with access to it` : undefined,
    );
  }
}

export const udmabuf: Target = {
  name: 'udmabuf',
  allocate(req: AllocateRequest): Allocation {
    if (req.size === 0)
      throw new DmaloadError('ERR_EMPTY_DMABUF', `'${req.path}' is empty and a dma-buf cannot be: load it into 'memory' or 'memfd'`, { path: req.path });
    const limit = udmabufLimit();
    if (req.partSize !== undefined && req.partSize > limit) {
      throw new DmaloadError(
        'ERR_UDMABUF_SIZE_LIMIT',
        `partSize ${req.partSize} is larger than one udmabuf may be (size_limit_mb = ${limit / MiB}); use a partSize <= ${limit} or raise the limit as root: echo N > ${UDMABUF_LIMIT_PARAM}`,
        { path: req.path },
      );
    }
    const dev = openUdmabuf(req.path);
    let memfd = -1;
    let region: Region | undefined;
    const bufs: number[] = [];
    const free = () => {
      for (const fd of bufs.splice(0)) if (fd !== undefined) closeFd(fd);
      if (region) native.munmap(region);
      region = undefined;
      if (memfd >= 0) closeFd(memfd);
      memfd = -1;
      closeSync(dev);
    };
    try {
      // hugetlb: a hugetlbfs memfd (udmabuf takes those as well as shmem ones) of whole huge pages; the dma-bufs
      // cover [0, capacity) of it as without.
      const hugetlb = req.hugetlb;
      const length = hugetlb ? roundUp(req.capacity, hugetlb) : req.capacity;
      if (hugetlb) checkPool(length, hugetlb, req.path);
      memfd = createMemfd(req.path, length, hugetlb);
      // udmabuf requires F_SEAL_SHRINK (and refuses F_SEAL_WRITE); the size is final from here on.
      const s = native.seals(memfd, C.F_SEAL_SHRINK | C.F_SEAL_GROW);
      if (s < 0) throw new DmaloadSystemError(s, 'fcntl', req.path);
      region = mapShared(memfd, length, req.path, hugetlb);
    } catch (e) {
      free();
      throw e;
    }
    const layout = layoutOf(req.capacity, req.partSize ?? Math.min(limit, req.capacity));
    let closed = false;
    return {
      region,
      writeFd: memfd,
      directInto: true,
      layout,
      populateInJob: false,
      async allocPart(k) {
        const { offset, length } = layout[k]!;
        await populate(region!, offset, length, req.path);
        if (closed) return;
        const fd = native.udmabufCreate(dev, memfd, [[offset, length]], UDMABUF_FLAGS_CLOEXEC);
        if (fd < 0) {
          throw new DmaloadSystemError(
            fd,
            'ioctl',
            UDMABUF_DEVICE,
            fd === -22 ? `UDMABUF_CREATE of ${length} bytes at ${offset}; size_limit_mb is ${limit / MiB}` : undefined,
          );
        }
        bufs[k] = fd;
      },
      finish(size) {
        // The last page past the data is part of the last dma-buf: make it zeros, whatever direct I/O put there.
        if (size < req.capacity) zero(region!, size, req.capacity - size);
        return layout.map((p, k) => ({ fd: bufs[k]!, offset: p.offset, size: Math.min(p.length, size - p.offset) }));
      },
      close() {
        if (closed) return;
        closed = true;
        free();
      },
    };
  },
};
