/**
 * Where a load's bytes land. Each target is one file with one `allocate()`; the load pipeline does the I/O.
 * A target hands back one contiguous CPU view (the mapping the I/O fills) and, for dma-buf targets, the parts a
 * device imports.
 */

export type TargetName = 'memory' | 'memfd' | 'udmabuf' | 'dma-heap';

/** One device-importable piece of a loaded buffer. */
export interface Part {
  /** A dma-buf fd, or the memfd for the memfd target; -1 for process memory. */
  fd: number;
  /** Offset of this part in the file (and in the CPU view). */
  offset: number;
  /** Bytes of the file in this part. */
  size: number;
}

export interface AllocateRequest {
  /** Bytes of the file. */
  size: number;
  /** Bytes the mapping must hold: `size` rounded up for direct I/O's whole-block reads and the page size. */
  capacity: number;
  path: string;
  /** Target-specific options as the caller gave them (e.g. `heap`), already validated by the target. */
  options: Record<string, unknown>;
}

export interface Allocation {
  /** The CPU view: at least `capacity` bytes; undefined for an empty file. */
  mapping: ArrayBuffer | undefined;
  /** Whether O_DIRECT can read straight into `mapping` (VM_PFNMAP mappings cannot). */
  directInto: boolean;
  /** Ask the engine to fault the mapping in ahead of the reads, on another thread. */
  populate: boolean;
  /** Called once every byte is in: trim, seal, export. Returns the parts. */
  finish(size: number): Part[];
  /** Frees every fd and mapping; idempotent. */
  close(): void;
  /** The memfd, for the memfd target. */
  fd?: number;
}

export interface Target {
  readonly name: TargetName;
  allocate(req: AllocateRequest): Allocation;
}
