/**
 * Target 'memfd': a sealed memfd whose fd the caller can pass to another process or driver. Filled through its own
 * shared region (direct I/O into shmem pages works: they are pinned like any user page), then trimmed to the
 * file's exact size and sealed against shrinking and growing.
 */
import { ftruncateSync } from 'node:fs';
import { basename } from 'node:path';
import { DmaloadSystemError } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { populate } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

/** Creates a sealable memfd of `size` bytes named after the file; the caller owns the fd. */
export function createMemfd(path: string, size: number): number {
  const fd = native.memfdCreate(`dmaload:${basename(path)}`.slice(0, 249), C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING);
  if (fd < 0) throw new DmaloadSystemError(fd, 'memfd_create', path);
  try {
    ftruncateSync(fd, size);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/** Maps a memfd shared, read-write; the caller unmaps it. */
export function mapShared(fd: number, length: number, path?: string): Region {
  const ab = native.mmap(length, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0, 0);
  if (typeof ab === 'number') throw new DmaloadSystemError(ab, 'mmap', path);
  return ab;
}

export const memfd: Target = {
  name: 'memfd',
  allocate(req: AllocateRequest): Allocation {
    let fd = createMemfd(req.path, req.capacity);
    let region: Region | undefined;
    try {
      region = req.capacity > 0 ? mapShared(fd, req.capacity, req.path) : undefined;
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
      allocPart: (k) => populate(region!, layout[k]!.offset, layout[k]!.length, req.path),
      finish(size) {
        // Direct reads filled whole blocks past the end: cut them off, then freeze the size.
        if (size !== req.capacity) ftruncateSync(fd, size);
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
