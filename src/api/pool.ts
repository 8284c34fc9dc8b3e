/**
 * A pool of loaded buffers' memory: load(), then release() instead of close(), and the next load of a file that
 * fits reuses that memory through load({ into }), already faulted in, so swapping models costs I/O, not page faults.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { LoadedBuffer } from './buffer.js';
import { DmaloadError, invalidType, invalidValue } from '../core/errors.js';
import { roundUp } from '../core/util.js';
import { PAGE_SIZE } from '../engine/binding.js';
import { LOAD_OPTIONS, load } from './load.js';
import type { LoadOptions } from './load.js';
import type { NumaNode } from '../engine/numa.js';
import { byteCountOption, hugePagesEnv, hugePagesOption, numaNodeOption, optionNames, optionsObject, pathOption, targetOption } from './options.js';

const POOL_OPTIONS = optionNames<PoolOptions>()(['maxIdleBytes']);

/** Options of {@link createPool}. */
export interface PoolOptions {
  /**
   * The most idle memory the pool keeps for later loads, in bytes (default: half the machine's memory). A release
   * past it frees the buffers released longest ago.
   */
  maxIdleBytes?: number;
}

/** Memory reused across loads: see {@link createPool}. */
export interface BufferPool extends AsyncDisposable {
  /**
   * load(path, options), into the memory of a released buffer of the same target when one fits: at least the
   * file's size, and at most twice it (a small file does not take a large buffer another load wants). Otherwise
   * into fresh memory. `stats.memory` says which ('reused' or 'fresh'). `into` is the pool's to choose.
   */
  load(path: string, options?: Omit<LoadOptions, 'into'>): Promise<LoadedBuffer>;
  /**
   * Gives the buffer's memory to the pool instead of freeing it: `buffer` is closed (its views become empty, as
   * after close()) and its memory waits for a later load. After the pool is closed, release() just closes.
   * @throws ERR_BUFFER_CLOSED, ERR_BUFFER_BUSY (a call still uses it), ERR_BUFFER_READ_ONLY (a served buffer).
   */
  release(buffer: LoadedBuffer): void;
  /** Bytes of memory waiting for a load. */
  readonly idleBytes: number;
  /** Buffers waiting for a load. */
  readonly idleBuffers: number;
  /** Frees the idle memory; later loads are ERR_POOL_CLOSED. Buffers on loan stay their holders' to close. */
  close(): void;
}

class Pool implements BufferPool {
  readonly #max: number;
  /** Released buffers, owned by the pool, oldest release first. */
  #idle: LoadedBuffer[] = [];
  #closed = false;

  constructor(max: number) {
    this.#max = max;
  }

  get idleBytes(): number {
    return this.#idle.reduce((n, b) => n + b.room, 0);
  }

  get idleBuffers(): number {
    return this.#idle.length;
  }

  async load(path: string, options: Omit<LoadOptions, 'into'> = {}): Promise<LoadedBuffer> {
    pathOption('path', path);
    const o = optionsObject(options, LOAD_OPTIONS, 'pool.load()') as LoadOptions;
    if (o.into !== undefined) throw invalidValue('into', '<LoadedBuffer>', 'is chosen by the pool; use load() to give one');
    const target = targetOption(o.target);
    this.#open();
    // Parts are the buffer's own and cannot change in a load into it: only a load that leaves them to us reuses.
    if (o.partSize === undefined) {
      let size: number | undefined;
      try {
        size = (await fsp.stat(path)).size;
      } catch {
        // load() below reports the path's error with its code
      }
      this.#open();
      // numaNode: only memory placed as asked is reused (the load into it keeps its placement, so it goes unsaid).
      const numa = numaNodeOption(o.numaNode);
      // hugePages 'hugetlb': only memory from the pool is reused (a load into small pages would break the promise).
      const hugetlb = (hugePagesOption(o.hugePages) ?? hugePagesEnv()) === 'hugetlb';
      const pick = size === undefined ? undefined : this.#take(target, roundUp(Math.max(size, 1), PAGE_SIZE), numa, hugetlb);
      if (pick) {
        try {
          // The buffer keeps its placement (numaNode cannot be given with into).
          const rest = { ...o };
          delete rest.numaNode;
          return await load(path, { ...rest, into: pick });
        } catch (e) {
          // A failed load leaves `into` open and the pool's; its bytes no longer matter.
          if (!pick.closed) this.#keep(pick);
          // The file needs more room than its size (the direct-I/O block rounds it up): load it into fresh memory.
          if ((e as { code?: string }).code !== 'ERR_BUFFER_TOO_SMALL') throw e;
        }
      }
    }
    return load(path, o);
  }

  release(buffer: LoadedBuffer): void {
    if (!(buffer instanceof LoadedBuffer)) throw invalidType('buffer', 'a LoadedBuffer (from load() or allocate())', buffer);
    if (buffer.closed)
      throw new DmaloadError('ERR_BUFFER_CLOSED', `Cannot release the buffer loaded from '${buffer.path}' to a pool: it was closed`, { path: buffer.path });
    if (this.#closed) return buffer.close();
    // reserve() refuses a busy or read-only buffer; moveTo() closes `buffer` and revokes its views.
    this.#keep(buffer.reserve().moveTo(buffer.path, buffer.size, [...buffer.parts], buffer.stats));
  }

  close(): void {
    this.#closed = true;
    for (const b of this.#idle.splice(0)) b.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #open(): void {
    if (this.#closed) throw new DmaloadError('ERR_POOL_CLOSED', 'This buffer pool was closed; create another with createPool()');
  }

  /** The smallest idle buffer of `target` with room for `need` bytes and at most twice that, taken out of the pool. */
  #take(target: string, need: number, numa: NumaNode | undefined, hugetlb: boolean): LoadedBuffer | undefined {
    let best = -1;
    for (const [i, b] of this.#idle.entries()) {
      if (b.target !== target || b.room < need || b.room > 2 * need) continue;
      if (numa !== undefined && b.stats.numa?.node !== numa) continue;
      if (hugetlb && !b.stats.hugetlb) continue;
      if (best < 0 || b.room < this.#idle[best]!.room) best = i;
    }
    return best < 0 ? undefined : this.#idle.splice(best, 1)[0];
  }

  #keep(b: LoadedBuffer): void {
    if (this.#closed) return b.close();
    this.#idle.push(b);
    for (let bytes = this.idleBytes; bytes > this.#max && this.#idle.length > 0;) {
      const oldest = this.#idle.shift()!;
      bytes -= oldest.room;
      oldest.close();
    }
  }
}

/**
 * A pool that keeps released buffers' memory for later loads. For a process that loads one model after another
 * (swapping models, reloading after an update): `const b = await pool.load(path)`, use `b`, then
 * `pool.release(b)` where you would close it; the next `pool.load()` of a file that fits reads straight into that
 * memory, already faulted in. `pool.close()` frees what is idle.
 */
export function createPool(options: PoolOptions = {}): BufferPool {
  const o = optionsObject(options, POOL_OPTIONS, 'createPool()');
  return new Pool(byteCountOption('maxIdleBytes', o.maxIdleBytes) ?? Math.floor(os.totalmem() / 2));
}
