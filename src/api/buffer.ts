/**
 * LoadedBuffer: what load() returns — the bytes, their fds, what it cost — and the one way to free them. It lives in
 * the API layer because it owns a target's allocation and makes views through the engine, both below it.
 */
import type { VerifiedStats } from '../pipeline/verify.js';
import { PAGE_SIZE, native } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { bytesOf } from '../engine/memory.js';
import { DmaloadError, outOfRange } from '../core/errors.js';
import { formatBytes, roundUp } from '../core/util.js';
import type { PartStats } from '../pipeline/schedule.js';
import type { Allocation, Part, TargetName } from '../targets/types.js';

// PartStats is the schedule's own record (the pipeline writes it, below this layer); LoadStats hands it on.
export type { PartStats };

/** How a load went. */
export interface LoadStats {
  /**
   * The io actually used: 'mixed' when io 'auto' copied cached ranges and read the rest directly; 'uncached' for
   * buffered reads that left no page cache (RWF_DONTCACHE); 'network' for a URL or a hub file not in the local cache
   * (ranged GETs placed straight into the buffer: `copiedBytes` counts them).
   */
  io: 'direct' | 'buffered' | 'mixed' | 'uncached' | 'network';
  /** A network source: its requests, retries and the most connections used at once. */
  network?: { requests: number; retries: number; connections: number } | undefined;
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
  /**
   * Bytes of the source file in the page cache right after the load (mincore); null where this user cannot know
   * (a file it may read but not write: the kernel hides residency from it).
   */
  pageCacheBytes: number | null;
  /** Bytes read from the file (a selective load reads its ranges rounded out to whole blocks). */
  bytesRead: number;
  chunkSize: number;
  queueDepth: number;
  /**
   * Where the memory came from: 'fresh' (mapped for this load, faulted in as it was read) or 'reused' (the memory
   * of the `into` buffer, already faulted in: the load cost I/O, not page faults).
   */
  memory?: 'fresh' | 'reused' | undefined;
  /** Memory target, fresh memory: whether MADV_HUGEPAGE was asked for (unset for hugetlb pages). */
  hugePages?: boolean | undefined;
  /**
   * Fresh memory from the hugetlb pool (`hugePages: 'hugetlb'`): the page size and how many pages the buffer took
   * (its size rounded up to whole pages). Unset for any other memory, a 'hugetlb-or-small' fallback included.
   */
  hugetlb?: { pageSize: number; pages: number } | undefined;
  /**
   * NUMA placement, when asked for (`numaNode`, DMALOAD_NUMA_NODE): the node or 'interleave' as asked, the nodes the
   * memory was bound to before its pages were faulted in (empty: nothing was bound, on a kernel without NUMA), and
   * what was done.
   */
  numa?: { node: number | 'interleave'; nodes: number[]; reason: string } | undefined;
  /** Why the memory is what it is: reused, or huge pages or not (the option, the environment, or the measurement). */
  memoryReason?: string | undefined;
  /** Set when the buffer came from a `dmaload serve` server through connect(): see {@link ServedInfo}. */
  served?: ServedInfo | undefined;
  /** Set when the file's SHA-256 was checked while it was read (the `verify` option): see {@link VerifiedStats}. */
  verified?: VerifiedStats | undefined;
}

/** How a served buffer (connect().load()) was obtained. */
export interface ServedInfo {
  /** The server's socket. */
  socket: string;
  /** The file was already in the server's cache: nothing was read for this request. */
  cached: boolean;
  /** The server's time for the request, from receiving it to sending the reply, ms. */
  serverMs: number;
}

/**
 * A loaded (or allocated) buffer: its bytes, its fds, what loading it cost, and the one way to free it.
 *
 * `bytes` is one zero-copy view of the whole buffer where the runtime allows a typed array that long (Node 22+:
 * any size; Node 20: up to 4 GiB). Beyond that, `bytes` throws ERR_BUFFER_TOO_LARGE and `view(offset, length)`
 * gives windows of any part.
 */
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
  #room: number;
  #loading = false;

  /**
   * @internal Built by load() and allocate(); takes ownership of `alloc`. `room`: bytes I/O may fill (default: the
   * allocation's capacity; a memfd's, trimmed to `size`, is that rounded up to a page).
   */
  constructor(path: string, size: number, target: TargetName, alloc: Allocation, parts: Part[], stats: LoadStats, room?: number) {
    this.path = path;
    this.size = size;
    this.target = target;
    this.stats = stats;
    this.#alloc = alloc;
    this.#parts = parts;
    const capacity = alloc.layout.reduce((n, p) => n + p.length, 0);
    this.#room = room ?? (target === 'memfd' ? Math.min(capacity, roundUp(size, PAGE_SIZE)) : capacity);
  }

  #live(what: string): Allocation {
    if (!this.#alloc) {
      throw new DmaloadError('ERR_BUFFER_CLOSED', `Cannot use ${what} of the buffer loaded from '${this.path}': it was closed`, { path: this.path });
    }
    return this.#alloc;
  }

  /**
   * The whole buffer: a zero-copy view over the target's mapping, exactly `size` long. Invalid after close().
   * @throws DmaloadError ERR_BUFFER_TOO_LARGE where the runtime cannot make a typed array of `size` bytes (Node 20
   *   past 4 GiB): use {@link view} for windows, or Node 22+.
   */
  get bytes(): Uint8Array {
    const a = this.#live('the bytes');
    if (this.#bytes) return this.#bytes;
    const max = native.maxView();
    if (this.size > max) {
      throw new DmaloadError(
        'ERR_BUFFER_TOO_LARGE',
        `The buffer loaded from '${this.path}' is ${formatBytes(this.size)}, longer than one typed array can be in Node.js ${process.versions.node} (${formatBytes(max)}); use buffer.view(offset, length) for windows of it, or Node.js 22 or later`,
        { path: this.path },
      );
    }
    this.#bytes = bytesOf(a.region!, 0, this.size);
    return this.#bytes;
  }

  /**
   * A zero-copy view of `length` bytes at `offset` (default: to the end), of any buffer size. A window longer than
   * one typed array can be (Node 20: 4 GiB) throws ERR_BUFFER_TOO_LARGE. Invalid after close().
   */
  view(offset = 0, length = this.size - offset): Uint8Array {
    const a = this.#live('a view');
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.size) throw outOfRange('offset', `an integer >= 0 and <= ${this.size}`, offset);
    if (!Number.isSafeInteger(length) || length < 0 || offset + length > this.size)
      throw outOfRange('length', `an integer >= 0 and <= ${this.size - offset}`, length);
    if (this.#bytes) return this.#bytes.subarray(offset, offset + length);
    if (length > native.maxView()) {
      throw new DmaloadError(
        'ERR_BUFFER_TOO_LARGE',
        `A view of ${formatBytes(length)} is longer than one typed array can be in Node.js ${process.versions.node}; take smaller windows`,
        { path: this.path },
      );
    }
    if (this.size <= native.maxView()) return this.bytes.subarray(offset, offset + length);
    return bytesOf(a.region!, offset, length);
  }

  /** Windows of at most `size` bytes covering the buffer in order (for hashing or copying a buffer of any size). */
  *windows(size = 1 << 30): Generator<Uint8Array> {
    for (let off = 0; off < this.size; off += size) yield this.view(off, Math.min(size, this.size - off));
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

  /** @internal Bytes a load into this buffer may fill (its capacity; a memfd's, its size rounded to a page). */
  get room(): number {
    return this.#room;
  }

  /**
   * True for a buffer mapped read-only (one served by `dmaload serve`, from connect().load()): writing into `bytes`
   * faults like a write to any read-only mapping, and readInto() and load({ into }) refuse it with ERR_BUFFER_READ_ONLY.
   */
  get readOnly(): boolean {
    return (this.#alloc ?? this.#closing)?.readOnly === true;
  }

  /**
   * @internal Borrows the region for I/O (readInto, writeFrom, save, load into). A close() meanwhile refuses new
   * use at once but frees the memory only after the last borrower returns (the addon also holds the region for
   * any job still running).
   */
  borrow(what: string): { region: Region | undefined; directInto: boolean; release(): void } {
    const a = this.#live(what);
    this.#busy++;
    let released = false;
    return {
      region: a.region,
      directInto: a.directInto,
      release: () => {
        if (released) return;
        released = true;
        if (--this.#busy === 0 && this.#closing) this.#free();
      },
    };
  }

  /**
   * @internal Reserves the buffer for `load(path, { into })`: no other call may use it until `release()` (the load
   * failed: the buffer stays the caller's, its bytes partly overwritten) or `moveTo()` (the load succeeded: the
   * memory moves into a new LoadedBuffer and this one is closed). A close() meanwhile frees the memory once the
   * load is done, and moveTo() then refuses.
   */
  reserve(): { alloc: Allocation; room: number; release(): void; moveTo(path: string, size: number, parts: Part[], stats: LoadStats): LoadedBuffer } {
    const alloc = this.#live('the buffer for load({ into })');
    if (alloc.readOnly) {
      throw new DmaloadError(
        'ERR_BUFFER_READ_ONLY',
        `The buffer of '${this.path}' is mapped read-only (served by dmaload serve); load into a buffer from load() or allocate()`,
        { path: this.path },
      );
    }
    if (this.#loading || this.#busy > 0) {
      throw new DmaloadError(
        'ERR_BUFFER_BUSY',
        `The buffer loaded from '${this.path}' is in use by another call (a load into it, readInto, writeFrom or save); await that call first`,
        { path: this.path },
      );
    }
    this.#loading = true;
    const lease = this.borrow('the buffer for load({ into })');
    return {
      alloc,
      room: this.#room,
      release: () => {
        this.#loading = false;
        lease.release();
      },
      moveTo: (path, size, parts, stats) => {
        this.#loading = false;
        if (!this.#alloc) {
          lease.release();
          this.#live('the buffer for load({ into })'); // closed during the load: ERR_BUFFER_CLOSED
        }
        const moved = new LoadedBuffer(path, size, this.target, alloc, parts, stats, this.#room);
        // Ownership moves without freeing: this object is closed, the memory now belongs to `moved`. Its views
        // become empty as close() makes them, rather than windows on what the memory holds next.
        if (alloc.region) native.revokeViews(alloc.region);
        this.#alloc = undefined;
        this.#bytes = undefined;
        lease.release();
        return moved;
      },
    };
  }

  /** Frees every mapping and fd. Idempotent; views from `bytes` and `view()` become empty. */
  close(): void {
    if (!this.#alloc) return;
    this.#closing = this.#alloc;
    this.#alloc = undefined;
    if (this.#busy === 0) this.#free();
  }

  /**
   * @internal close(), with the unmapping on a thread of its own (tearing down a GiB of page tables takes ~130 ms,
   * which a server's event loop must not wait for): resolves once the mapping is gone, e.g. before a memfd is sealed
   * against writes. A buffer still borrowed is closed as close() does.
   */
  async closeSoon(): Promise<void> {
    const region = this.#alloc?.region;
    if (!region || this.#busy > 0) return this.close();
    const gone = native.munmapSoon(region);
    this.close(); // the allocation's own munmap finds the region closed already; its fds close here
    await gone;
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
