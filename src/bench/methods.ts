/**
 * The bench's methods: each a way to move a whole file into a target's memory, run in a fresh child process
 * (src/bench/child.ts) so that one row's page faults, caches and threads never help or hurt the next.
 */
import { closeSync, constants as FS, openSync, promises as fsp, readSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { load } from '../api/load.js';
import { verifyFile } from '../api/verify.js';
import type { LoadedBuffer } from '../api/buffer.js';
import { dioAlign } from '../pipeline/source.js';
import { evictPath, pageCacheBytes, pageCacheBytesOf } from '../pipeline/cache.js';
import { errnoCode } from '../core/errors.js';
import { native, PAGE_SIZE } from '../engine/binding.js';
import type { Region } from '../engine/binding.js';
import { targets } from '../targets/index.js';
import type { Allocation, TargetName } from '../targets/index.js';
import { anonymous, bytesOf, withBytes } from '../engine/memory.js';
import { MiB, roundUp } from '../core/util.js';

export const METHODS = ['read', 'read-write', 'sendfile', 'splice', 'copy_file_range', 'dmaload', 'dmaload-reload', 'node-readFile', 'fio'] as const;
export type Method = (typeof METHODS)[number];
export type RowIo = 'buffered' | 'direct' | 'auto' | 'uncached';

export interface RowSpec {
  method: Method;
  target: TargetName;
  io: RowIo;
  /** dmaload rows: memory from the hugetlb pool (`hugePages: 'hugetlb'`); only where the pool holds enough pages. */
  hugePages?: 'hugetlb';
  /**
   * dmaload rows: 'load', the load checks its SHA-256 while reading (`verify: true`); 'file', verifyFile() hashes
   * the file at the device's speed into a small ring, no buffer kept (`dmaload verify`).
   */
  verify?: 'load' | 'file';
}

/** What one child measured for one row. */
export interface RowMeasure {
  supported: boolean;
  reason?: string;
  createMs: number;
  ioMs: number;
  closeMs: number;
  cpuMs: number;
  pageCacheBytes: number | null;
  sha256?: string;
  /** For dmaload rows: bytes by each path and the io it used. */
  ioUsed?: string;
  /** For dmaload rows: where the memory came from (stats.memory), e.g. 'fresh', 'reused'. */
  memory?: string;
  /** The +verify row: the hash thread's time inside the load (stats.verified.hashMs). */
  hashMs?: number;
}

/** Methods that write into a file descriptor, so they need a memfd-backed target. */
const FD_METHODS: ReadonlySet<Method> = new Set(['sendfile', 'splice', 'copy_file_range']);

/** Why a row cannot exist at all (before trying it), or undefined. */
export function staticUnsupported(r: RowSpec): string | undefined {
  if (FD_METHODS.has(r.method) && r.target !== 'memfd' && r.target !== 'udmabuf')
    return `${r.method} writes into a file descriptor; target ${r.target} has none to write to`;
  return undefined;
}

class Unsupported extends Error {}

function now(): number {
  return performance.now();
}

function cpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function hash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Hash of a region's first `size` bytes, through windows (any size, any Node). */
function regionHash(region: Region | undefined, size: number): string {
  const h = createHash('sha256');
  for (let off = 0; off < size; off += 1 << 30) withBytes(region!, off, Math.min(1 << 30, size - off), (b) => h.update(b));
  return h.digest('hex');
}

/** Runs one row on `path` (of `size` bytes) and measures it. */
export async function runRow(spec: RowSpec, path: string, size: number): Promise<RowMeasure> {
  if (spec.method === 'dmaload') return runDmaload(spec, path);
  if (spec.method === 'dmaload-reload') return runReload(spec, path);
  if (spec.method === 'node-readFile') {
    const c0 = cpu();
    const t0 = now();
    const data = await fsp.readFile(path);
    const ioMs = now() - t0;
    const cpuMs = cpu() - c0;
    return { supported: true, createMs: 0, ioMs, closeMs: 0, cpuMs, pageCacheBytes: pageCacheBytesOf(path, size), sha256: hash(data) };
  }
  const direct = spec.io === 'direct';
  if (spec.io === 'uncached' && spec.method !== 'read') throw new Error(`no uncached variant of ${spec.method}`);
  const fd = openSync(path, FS.O_RDONLY | (direct ? FS.O_DIRECT : 0));
  let alloc: Allocation | undefined;
  try {
    const align = direct ? Math.max(dioAlign(fd).offsetAlign, 512) : 1;
    const capacity = roundUp(size, Math.max(PAGE_SIZE, align));
    const c0 = cpu();
    const t0 = now();
    alloc = targets[spec.target].allocate({ size, capacity, partSize: undefined, path, options: {} });
    // dma-bufs exist only once their parts are allocated; ordinary memory is faulted in by the copy itself,
    // as in the classic mmap + read.
    if (!alloc.populateInJob) for (let k = 0; k < alloc.layout.length; k++) await alloc.allocPart(k);
    const createMs = now() - t0;
    const t1 = now();
    try {
      alloc.layout.forEach((_, k) => alloc!.beginWrite?.(k));
      try {
        await move(spec, fd, alloc, size, align);
      } finally {
        alloc.layout.forEach((_, k) => alloc!.endWrite?.(k));
      }
    } catch (e) {
      if (e instanceof Unsupported) return { supported: false, reason: e.message, createMs, ioMs: 0, closeMs: 0, cpuMs: 0, pageCacheBytes: 0 };
      throw e;
    }
    const ioMs = now() - t1;
    const cpuIo = cpu() - c0;
    const cache = pageCacheBytes(fd, size);
    alloc.finish(size);
    const sha256 = regionHash(alloc.region, size);
    const c1 = cpu();
    const t2 = now();
    alloc.close();
    alloc = undefined;
    const closeMs = now() - t2;
    return { supported: true, createMs, ioMs, closeMs, cpuMs: cpuIo + (cpu() - c1), pageCacheBytes: cache, sha256 };
  } finally {
    alloc?.close();
    closeSync(fd);
  }
}

async function move(spec: RowSpec, fd: number, alloc: Allocation, size: number, align: number): Promise<void> {
  const region = alloc.region!;
  const direct = spec.io === 'direct';
  switch (spec.method) {
    case 'read': {
      // The classic: one read() of the whole file into the mapping (the kernel loops), as the seeds' mmap+read.
      // Never through a bounce buffer: read-direct into a VM_PFNMAP mapping must fail and say so.
      // 'uncached': the same read() as preadv2 with RWF_DONTCACHE.
      const rwFlags = spec.io === 'uncached' ? native.constants.RWF_DONTCACHE : 0;
      const job = native.transfer({
        fd,
        write: false,
        direct,
        target: region,
        segments: [0, 0, size],
        chunk: roundUp(Math.min(size, 1024 * MiB), 4096),
        depth: 1,
        padTo: align,
        engine: 'threads',
        bounce: false,
        populate: false,
        rwFlags,
      });
      const r = await job.promise;
      if (r.errno) throw new Unsupported(`read failed with ${errnoCode(r.errno)}`);
      return;
    }
    case 'read-write': {
      // read() into a 1 MiB user buffer, then write() it into the memfd (or copy it, for process memory).
      const chunk = MiB;
      const staging = anonymous(chunk, false);
      const buf = bytesOf(staging, 0, chunk);
      try {
        for (let off = 0; off < size;) {
          const n = readSync(fd, buf, 0, chunk, off);
          if (n <= 0) break;
          const want = Math.min(n, size - off);
          if (alloc.writeFd !== undefined) writeSync(alloc.writeFd, buf, 0, want, off);
          else withBytes(region, off, want, (b) => b.set(buf.subarray(0, want)));
          off += n;
        }
      } finally {
        native.munmap(staging);
      }
      return;
    }
    case 'sendfile':
    case 'splice':
    case 'copy_file_range': {
      const m = spec.method === 'sendfile' ? 0 : spec.method === 'splice' ? 1 : 2;
      const r = native.copyLoop(m, fd, alloc.writeFd!, size, MiB);
      if (r < 0) throw new Unsupported(`${spec.method} failed with ${errnoCode(r)}`);
      if (r !== size) throw new Unsupported(`${spec.method} moved ${r} of ${size} bytes`);
      return;
    }
    default:
      throw new Error(`no such method ${spec.method}`);
  }
}

async function runDmaload(spec: RowSpec, path: string): Promise<RowMeasure> {
  const c0 = cpu();
  if (spec.verify === 'file') {
    const t0 = now();
    const r = await verifyFile(path, { io: spec.io });
    return { supported: true, createMs: 0, ioMs: now() - t0, closeMs: 0, cpuMs: cpu() - c0, pageCacheBytes: r.pageCacheBytes, sha256: r.sha256, ioUsed: r.io };
  }
  const t0 = now();
  const b = await load(path, { target: spec.target, io: spec.io, verify: spec.verify === 'load', ...(spec.hugePages ? { hugePages: spec.hugePages } : {}) });
  const wall = now() - t0;
  const cpuIo = cpu() - c0;
  const m = measured(b, cpuIo);
  // A verified load ends when the hash does, after the reads: its I/O time is the whole load but the allocation.
  if (spec.verify === 'load') {
    m.ioMs = Math.max(m.ioMs, wall - m.createMs);
    if (b.stats.verified) m.hashMs = b.stats.verified.hashMs;
  }
  return m;
}

/**
 * A reload: the file is loaded once (not measured), evicted again (flushed, dropped, checked), then loaded into the
 * same memory (`into`), whose pages are already faulted in. Measured: the reload only.
 */
async function runReload(spec: RowSpec, path: string): Promise<RowMeasure> {
  const first = await load(path, { target: spec.target, io: spec.io, ...(spec.hugePages ? { hugePages: spec.hugePages } : {}) });
  const stayed = evictPath(path);
  if (stayed !== null && stayed > 0)
    return {
      supported: false,
      reason: `${stayed} bytes of the file stayed in the page cache after eviction`,
      createMs: 0,
      ioMs: 0,
      closeMs: 0,
      cpuMs: 0,
      pageCacheBytes: stayed,
    };
  const c0 = cpu();
  const b = await load(path, { io: spec.io, into: first });
  const cpuIo = cpu() - c0;
  return measured(b, cpuIo);
}

function measured(b: LoadedBuffer, cpuIo: number): RowMeasure {
  const sha256 = regionHashOf(b);
  const c1 = cpu();
  const t2 = now();
  b.close();
  const closeMs = now() - t2;
  return {
    supported: true,
    createMs: b.stats.allocMs,
    ioMs: b.stats.ioMs,
    closeMs,
    cpuMs: cpuIo + (cpu() - c1),
    pageCacheBytes: b.stats.pageCacheBytes,
    sha256,
    ioUsed: b.stats.io,
    memory: b.stats.memory,
  };
}

/** Hash of a loaded buffer of any size, through its windows (Node 20's typed arrays stop at 4 GiB). */
function regionHashOf(b: LoadedBuffer): string {
  const h = createHash('sha256');
  for (const w of b.windows()) h.update(w);
  return h.digest('hex');
}
