/**
 * Target 'dma-heap': buffers from /dev/dma_heap/NAME (DMA_HEAP_IOCTL_ALLOC), one per part, mapped side by side
 * into one reserved range so the CPU view is contiguous. Their mappings are VM_PFNMAP: O_DIRECT cannot target
 * them (EFAULT), so the engine reads into aligned bounce buffers and copies once, inside DMA_BUF_IOCTL_SYNC
 * START/END — no page cache, one copy. Each buffer is named after the file (DMA_BUF_SET_NAME).
 */
import { closeSync, openSync, readdirSync } from 'node:fs';
import { basename } from 'node:path';
import { DmaloadError, DmaloadSystemError, invalidType } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { zero } from '../engine/memory.js';
import { layoutOf } from './types.js';
import type { Allocation, AllocateRequest, Target } from './types.js';

export const HEAP_DIR = '/dev/dma_heap';

export function heapsPresent(): string[] {
  try {
    return readdirSync(HEAP_DIR).sort();
  } catch {
    return [];
  }
}

export const dmaHeap: Target = {
  name: 'dma-heap',
  allocate(req: AllocateRequest): Allocation {
    const heap = req.options.heap ?? 'system';
    if (typeof heap !== 'string' || heap === '' || heap.includes('/')) throw invalidType('heap', 'a heap name such as "system"', heap);
    if (req.size === 0)
      throw new DmaloadError('ERR_EMPTY_DMABUF', `'${req.path}' is empty and a dma-buf cannot be: load it into 'memory' or 'memfd'`, { path: req.path });
    const heapPath = `${HEAP_DIR}/${heap}`;
    let heapFd: number;
    try {
      heapFd = openSync(heapPath, 'r');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code !== 'ENOENT') throw new DmaloadSystemError(err.errno ?? -13, 'open', heapPath);
      const present = heapsPresent();
      throw new DmaloadError(
        'ERR_NO_HEAP',
        `no DMA heap '${heap}' (${heapPath}); heaps present: ${present.length ? present.join(', ') : 'none (this kernel has no DMA heaps)'}`,
        { path: heapPath },
      );
    }
    // Reserve the view; each part's dma-buf is mapped over its slice of it when allocated.
    const view = native.mmap(req.capacity, C.PROT_NONE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, 0);
    if (typeof view === 'number') {
      closeSync(heapFd);
      throw new DmaloadSystemError(view, 'mmap', req.path);
    }
    let region: Region | undefined = view;
    const layout = layoutOf(req.capacity, req.partSize);
    const bufs: number[] = [];
    const name = basename(req.path).slice(0, 31);
    let closed = false;
    const sync = (k: number, flags: number) => {
      const r = native.dmaBufSync(bufs[k]!, flags);
      if (r < 0) throw new DmaloadSystemError(r, 'ioctl', req.path, 'DMA_BUF_IOCTL_SYNC');
    };
    return {
      region,
      directInto: false,
      layout,
      populateInJob: false,
      async allocPart(k) {
        if (closed) return;
        const { offset, length } = layout[k]!;
        const fd = native.dmaHeapAlloc(heapFd, length);
        if (fd < 0) throw new DmaloadSystemError(fd, 'ioctl', heapPath, `DMA_HEAP_IOCTL_ALLOC of ${length} bytes`);
        bufs[k] = fd;
        native.dmaBufSetName(fd, name); // a label for debugfs and fdinfo; older kernels may refuse it
        const r = native.mmapInto(region!, offset, length, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0);
        if (r < 0) throw new DmaloadSystemError(r, 'mmap', req.path);
      },
      beginWrite: (k) => sync(k, C.DMA_BUF_SYNC_START | C.DMA_BUF_SYNC_WRITE),
      endWrite: (k) => sync(k, C.DMA_BUF_SYNC_END | C.DMA_BUF_SYNC_WRITE),
      finish(size) {
        if (size < req.capacity) {
          const last = layout.length - 1;
          sync(last, C.DMA_BUF_SYNC_START | C.DMA_BUF_SYNC_WRITE);
          zero(region!, size, req.capacity - size);
          sync(last, C.DMA_BUF_SYNC_END | C.DMA_BUF_SYNC_WRITE);
        }
        return layout.map((p, k) => ({ fd: bufs[k]!, offset: p.offset, size: Math.min(p.length, size - p.offset) }));
      },
      close() {
        if (closed) return;
        closed = true;
        if (region) native.munmap(region);
        region = undefined;
        for (const fd of bufs.splice(0)) if (fd !== undefined) closeFd(fd);
        closeSync(heapFd);
      },
    };
  },
};
