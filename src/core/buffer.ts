/** LoadedBuffer: what load() returns — the bytes, their fds, what it cost — and the one way to free them. */
import { DmaloadError } from './errors.js';
import type { Allocation, Part, TargetName } from '../targets/types.js';

/** One part's share of a load: where it is, and its allocation and I/O wall times. */
export interface PartStats {
  offset: number;
  size: number;
  allocMs: number;
  ioMs: number;
}

/** How a load went. */
export interface LoadStats {
  /** The io actually used: 'mixed' when io 'auto' copied cached ranges and read the rest directly. */
  io: 'direct' | 'buffered' | 'mixed';
  /** Bytes read by direct I/O. */
  directBytes: number;
  /** Bytes copied through the page cache (buffered reads). */
  copiedBytes: number;
  /** Why the io differs from the one asked for, if it does. */
  ioReason?: string | undefined;
  /** 'uring' or 'threads' (io_uring refused). */
  engine: 'uring' | 'threads';
  engineReason?: string | undefined;
  /** Wall time of the load() call, ms. */
  ms: number;
  /** Wall time of allocation (mapping, populating, pinning, heap allocation), summed over parts, ms. */
  allocMs: number;
  /** Wall time during which reads ran (parts' read times, overlaps counted once), ms. With overlap, allocation runs inside it. */
  ioMs: number;
  /** Per part: offset, size, allocMs, ioMs. */
  parts: PartStats[];
  /** Whether allocation was overlapped with the reads. */
  overlap: boolean;
  /** CPU time of the whole process (user + system, all threads) during the load, ms. */
  cpuMs: number;
  bytesPerSec: number;
  /** Bytes of the source file in the page cache right after the load (mincore). */
  pageCacheBytes: number;
  /** Bytes read from the file (a selective load reads its ranges rounded out to whole blocks). */
  bytesRead: number;
  chunkSize: number;
  queueDepth: number;
}

export class LoadedBuffer implements AsyncDisposable {
  readonly path: string;
  readonly size: number;
  readonly target: TargetName;
  readonly stats: LoadStats;
  #alloc: Allocation | undefined;
  #closing: Allocation | undefined;
  #busy = 0;
  #bytes: Uint8Array | undefined;
  #parts: Part[];

  /** @internal Built by load(); takes ownership of `alloc`. */
  constructor(path: string, size: number, target: TargetName, alloc: Allocation, parts: Part[], stats: LoadStats) {
    this.path = path;
    this.size = size;
    this.target = target;
    this.stats = stats;
    this.#alloc = alloc;
    this.#parts = parts;
    this.#bytes = alloc.mapping ? new Uint8Array(alloc.mapping, 0, size) : new Uint8Array(0);
  }

  #live(what: string): Allocation {
    if (!this.#alloc) {
      throw new DmaloadError('ERR_BUFFER_CLOSED', `Cannot use ${what} of the buffer loaded from '${this.path}': it was closed`, { path: this.path });
    }
    return this.#alloc;
  }

  /** The file's bytes: a zero-copy view over the target's mapping, exactly `size` long. Invalid after close(). */
  get bytes(): Uint8Array {
    this.#live('the bytes');
    return this.#bytes!;
  }

  /** The memfd (memfd target) or the first dma-buf fd; -1 for process memory. Closed by close(). */
  get fd(): number {
    return this.#live('the fd').fd ?? this.#parts[0]?.fd ?? -1;
  }

  /** The device-importable pieces, in file order. */
  get parts(): readonly Part[] {
    this.#live('the parts');
    return this.#parts;
  }

  get closed(): boolean {
    return this.#alloc === undefined;
  }

  /**
   * @internal Borrows the mapping for I/O (readInto, writeFrom, save). A close() meanwhile refuses new use at once
   * but frees the memory only after the last borrower returns: the kernel may still be writing into it.
   */
  borrow(what: string): { mapping: ArrayBuffer | undefined; directInto: boolean; release(): void } {
    const a = this.#live(what);
    this.#busy++;
    let released = false;
    return {
      mapping: a.mapping,
      directInto: a.directInto,
      release: () => {
        if (released) return;
        released = true;
        if (--this.#busy === 0 && this.#closing) this.#free();
      },
    };
  }

  /** Frees every mapping and fd. Idempotent; views from `bytes` become empty. */
  close(): void {
    if (!this.#alloc) return;
    this.#closing = this.#alloc;
    this.#alloc = undefined;
    if (this.#busy === 0) this.#free();
  }

  #free(): void {
    const a = this.#closing;
    this.#closing = undefined;
    this.#bytes = undefined;
    a?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}
