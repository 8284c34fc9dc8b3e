/**
 * Where a load's bytes land. Each target is one file with one `allocate()`; the load pipeline does the I/O.
 * A target hands back one contiguous CPU view (the region the I/O fills) split into parts: each part is
 * allocated (populated, pinned, or allocated from a heap) by `allocPart(k)`, which the pipeline runs while the
 * previous part is being read, and becomes one device-importable piece.
 */
import type { Region } from '../engine/binding.js';

export type TargetName = 'memory' | 'memfd' | 'udmabuf' | 'dma-heap';

/** One device-importable piece of a loaded buffer. */
export interface Part {
  /** A dma-buf fd, or the memfd for the memfd target; -1 for process memory. */
  fd: number;
  /** Offset of this part in the CPU view (and, for a whole-file load, in the file). */
  offset: number;
  /** Bytes of data in this part (a dma-buf's own size is this rounded up to a page). */
  size: number;
}

export interface AllocateRequest {
  /** Bytes of data. */
  size: number;
  /** Bytes the region must hold: `size` rounded up for direct I/O's whole-block reads and the page size. */
  capacity: number;
  /** Bytes per part as the caller asked (a multiple of the page size), or undefined for the target's default. */
  partSize: number | undefined;
  path: string;
  /** The caller's options, for target-specific ones (e.g. `heap`), which the target validates. */
  options: Record<string, unknown>;
  /**
   * Take the memory from the hugetlb pool of huge pages of this many bytes (`hugePages: 'hugetlb'`; memory, memfd
   * and udmabuf only): the mapping spans whole huge pages (`capacity` rounded up; the layout still covers
   * [0, capacity)), and a pool too small for it is ERR_HUGETLB_POOL before anything stays allocated.
   */
  hugetlb?: number | undefined;
}

export interface Allocation {
  /** The CPU view: at least `capacity` bytes; undefined for an empty file. */
  region: Region | undefined;
  /** Whether O_DIRECT can read straight into `region` (VM_PFNMAP regions cannot: bounce buffers then). */
  directInto: boolean;
  /** The parts: offset and length in the view, covering [0, capacity). */
  layout: Array<{ offset: number; length: number }>;
  /**
   * True when allocation can ride along with the reads inside the engine (pages faulted in just ahead of them),
   * which beats a separate step for a single part of ordinary memory.
   */
  populateInJob: boolean;
  /**
   * Fault the region in as huge folios where its mapping allows (MADV_COLLAPSE on shmem mapped 2 MiB-aligned: the
   * memfd target with `hugePages: true`), small pages elsewhere.
   */
  hugeFolios?: boolean;
  /** Allocates part k: populate its pages, pin them into a udmabuf, or allocate it from a heap and map it. */
  allocPart(k: number): Promise<void>;
  /** Brackets the CPU's writes into part k (DMA_BUF_IOCTL_SYNC for dma-bufs). */
  beginWrite?(k: number): void;
  endWrite?(k: number): void;
  /** Called once every byte is in: clear the padding, trim, seal, export. Returns the parts. */
  finish(size: number): Part[];
  /** Frees every fd and region; idempotent. */
  close(): void;
  /** The memfd, for the memfd target: what LoadedBuffer.fd returns. */
  fd?: number;
  /** The CPU view is mapped read-only (a served buffer): nothing may write into it, not even readInto. */
  readOnly?: boolean;
  /** A file descriptor whose file is the CPU view (the memfd behind memfd and udmabuf), for write()-style copies. */
  writeFd?: number;
}

export interface Target {
  readonly name: TargetName;
  allocate(req: AllocateRequest): Allocation;
}

/** Splits [0, capacity) into parts of `partSize` (the last one shorter). */
export function layoutOf(capacity: number, partSize: number | undefined): Array<{ offset: number; length: number }> {
  if (capacity === 0) return [];
  const step = partSize ?? capacity;
  const out = [];
  for (let off = 0; off < capacity; off += step) out.push({ offset: off, length: Math.min(step, capacity - off) });
  return out;
}
