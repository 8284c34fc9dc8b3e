/**
 * The native addon, typed. Every function is syscall-shaped: it returns a negative errno on failure and trusts its
 * arguments, which the TypeScript layer has already validated.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setStrerror } from '../core/errors.js';

export interface TransferOptions {
  fd: number;
  write: boolean;
  /** The file was opened with O_DIRECT: a short read at an unaligned count is end of file. */
  direct: boolean;
  buffer: ArrayBuffer;
  /** Flat [fileOffset, bufOffset, length, …], in increasing buffer order. */
  segments: number[];
  chunk: number;
  depth: number;
  /** Requests are padded up to this many bytes (the direct-I/O block); the buffer must have room. */
  padTo: number;
  engine: 'uring' | 'threads';
  /** Read into private aligned buffers and copy out (for mappings that direct I/O cannot target). */
  bounce: boolean;
  /** Fault the destination in on another thread, ahead of the reads. */
  populate: boolean;
}

export interface TransferResult {
  bytes: number;
  errno: number;
  syscall: string;
  short: boolean;
  cancelled: boolean;
}

export interface Native {
  mmap(length: number, prot: number, flags: number, fd: number, offset: number, align: number): ArrayBuffer | number;
  munmap(ab: ArrayBuffer): number;
  madvise(ab: ArrayBuffer, offset: number, length: number, advice: number): number;
  mmapInto(ab: ArrayBuffer, offset: number, length: number, prot: number, flags: number, fd: number, fileOffset: number): number;
  populate(ab: ArrayBuffer, offset: number, length: number): Promise<number>;
  address(ab: ArrayBuffer): bigint;
  /** Mappings made by the addon and not yet unmapped. */
  liveMappings(): number;
  strerror(errno: number): string;
  statxDio(fd: number): [memAlign: number, offsetAlign: number] | number;
  memfdCreate(name: string, flags: number): number;
  seals(fd: number, add: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  fadvise(fd: number, offset: number, length: number, advice: number): number;
  residency(fd: number, offset: number, length: number, pages?: Uint8Array): number;
  uringProbe(): number;
  transfer(opts: TransferOptions, onProgress?: (bytes: number) => void): { promise: Promise<TransferResult>; cancel(): void };
  /** The bench's sendfile (0), splice (1) and copy_file_range (2) loops, synchronous: bench children only. */
  copyLoop(method: 0 | 1 | 2, inFd: number, outFd: number, length: number, pipeSize: number): number;
  udmabufCreate(devFd: number, memfd: number, items: Array<[offset: number, size: number]>, flags: number): number;
  dmaHeapAlloc(heapFd: number, length: number): number;
  dmaBufSync(fd: number, flags: number): number;
  dmaBufSetName(fd: number, name: string): number;
  drmPrimeImport(drmFd: number, dmabufFd: number): number;
  constants: Record<
    | 'PAGE_SIZE' | 'PROT_READ' | 'PROT_WRITE' | 'MAP_SHARED' | 'MAP_PRIVATE' | 'MAP_ANONYMOUS' | 'MAP_NORESERVE'
    | 'MAP_POPULATE' | 'PROT_NONE' | 'MADV_HUGEPAGE' | 'MADV_POPULATE_WRITE' | 'MADV_DONTNEED' | 'MFD_CLOEXEC' | 'MFD_ALLOW_SEALING'
    | 'F_SEAL_SEAL' | 'F_SEAL_SHRINK' | 'F_SEAL_GROW' | 'F_SEAL_WRITE' | 'POSIX_FADV_DONTNEED' | 'POSIX_FADV_SEQUENTIAL' | 'POSIX_FADV_RANDOM'
    | 'DMA_BUF_SYNC_READ' | 'DMA_BUF_SYNC_WRITE' | 'DMA_BUF_SYNC_RW' | 'DMA_BUF_SYNC_START' | 'DMA_BUF_SYNC_END',
    number
  >;
}

const require = createRequire(import.meta.url);

/** The package root: the nearest folder above this file that holds package.json (dist/src/engine → three up). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

/**
 * Which addon to load: DMALOAD_ADDON (an absolute path, e.g. the sanitizer build), else the one node-gyp built.
 */
function addonPath(): string {
  const forced = process.env.DMALOAD_ADDON;
  if (forced) return forced;
  return join(packageRoot(), 'build', 'Release', 'dmaload.node');
}

export const native: Native = require(addonPath()) as Native;
setStrerror(native.strerror);

export const C = native.constants;
export const PAGE_SIZE = C.PAGE_SIZE;
