/** The native addon, typed, and where it is loaded from. */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DmaloadError, DmaloadSystemError, setStrerror } from '../core/errors.js';

/**
 * An opaque handle to a mapping the addon made. The addon reference-counts it: its views and every job using it
 * hold it, so munmap() frees the memory only once no job can still write there.
 */
export interface Region {
  readonly __dmaloadRegion: unique symbol;
}

/** Memory a transfer may use: one of the addon's regions, or a plain ArrayBuffer (kept alive by the job). */
export type TransferTarget = Region | ArrayBuffer;

export interface TransferOptions {
  fd: number;
  write: boolean;
  /** The file was opened with O_DIRECT: a short read at an unaligned count is end of file. */
  direct: boolean;
  target: TransferTarget;
  /** Flat [fileOffset, bufOffset, length, …], in increasing buffer order. */
  segments: number[];
  chunk: number;
  depth: number;
  /** Requests are padded up to this many bytes (the direct-I/O block); the target must have room. */
  padTo: number;
  engine: 'uring' | 'threads';
  /** Read into private aligned buffers and copy out (for mappings that direct I/O cannot target). */
  bounce: boolean;
  /** Fault the destination in on another thread, ahead of the reads. */
  populate: boolean;
  /** With `populate`, on shmem mapped at 2 MiB: each whole 2 MiB extent as one huge folio (MADV_COLLAPSE). */
  collapse?: boolean;
  /** preadv2/pwritev2 flags: 0 (default) or RWF_DONTCACHE (uncached buffered I/O). */
  rwFlags?: number;
  /** Reads into a region: each completed request's bytes go to this hasher (verification while loading). */
  hash?: Hasher;
  /** Reads: segments split with another job of the same target (workShare()), taken after this job's own. */
  share?: WorkShare;
  /** Take the share's pieces from its back (aligned pieces only, for direct I/O); else from its front. */
  shareBack?: boolean;
}

/** Segments two reads of one target split as they go (workShare()); opaque. */
export interface WorkShare {
  readonly __workShare: unique symbol;
}

/** A running SHA-256 of one file (hashOpen()); opaque. */
export interface Hasher {
  readonly __hasher: unique symbol;
}

/** How a hasher ended: `digest` (64 hex digits) only when every byte from 0 to the total was hashed. */
export interface HashResult {
  hashed: number;
  digest: string | undefined;
  cancelled: boolean;
  busyMs: number;
}

export interface TransferResult {
  bytes: number;
  errno: number;
  syscall: string;
  short: boolean;
  cancelled: boolean;
}

/** A persistent native queue of reads or writes on one file (one thread, one ring, for a writer's whole life). */
export interface Queue {
  readonly __dmaloadQueue: unique symbol;
}

export interface QueueResult {
  bytes: number;
  errno: number;
  syscall: string;
}

/** An opaque handle to a share reactor (native/share.cc): one thread reporting socket readiness to JS. */
export interface Reactor {
  readonly __dmaloadReactor: unique symbol;
}

/** What fdInspect() reports of a file: statx fields (BigInts where they may pass 2^53) and the fd's F_GETFL flags. */
export interface FdInspection {
  flags: number;
  mode: number;
  uid: number;
  size: bigint;
  ino: bigint;
  devMajor: number;
  devMinor: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** STATX_MNT_ID_UNIQUE where the kernel has it (6.8+; never reused), else STATX_MNT_ID; null when neither. */
  mntId: bigint | null;
  mntUnique: boolean;
  /** STATX_DIOALIGN: direct-I/O memory and offset alignment, 0 where the file system reports none. */
  dioMemAlign: number;
  dioOffsetAlign: number;
}

/** Exact counts of what the addon holds: tests assert they return to baseline after every failure and abort. */
export interface LiveCounts {
  mappings: number;
  jobs: number;
  threads: number;
  queues: number;
  fds: number;
}

export type FaultOp = 'read' | 'write' | 'enter' | 'mmap' | 'ioctl' | 'thread';

/**
 * The native addon, typed. Every function checks its own arguments (TypeError/RangeError with a code) and returns
 * a negative errno when a system call fails; the TypeScript layer validates first and decides policy.
 */
export interface Native {
  mmap(length: number, prot: number, flags: number, fd: number, offset: number, align: number): Region | number;
  /** A zero-copy ArrayBuffer over part of a region (at most maxView() bytes); detached by munmap(). */
  view(region: Region, offset: number, length: number): ArrayBuffer;
  /** The longest ArrayBuffer the runtime allows over external memory: 2^32 on Node 20, 2^53 - 1 on Node 22+. */
  maxView(): number;
  /** Gives a view's pin back now (and detaches it): for the library's own short-lived views. */
  unview(view: ArrayBuffer): boolean;
  regionSize(region: Region): number;
  /** Detaches the views; the memory is unmapped once no job holds the region. */
  munmap(region: Region): number;
  /** munmap() with the unmapping on libuv's pool (a GiB of page tables takes ~130 ms): settles once it is done. */
  munmapSoon(region: Region): Promise<number>;
  /** Detaches every view of a live region (they become empty) and keeps the mapping: memory changing hands. */
  revokeViews(region: Region): void;
  madvise(region: Region, offset: number, length: number, advice: number): number;
  /**
   * mbind(2) on [offset, offset+length) of a region: MPOL_DEFAULT (nodes []), MPOL_PREFERRED, MPOL_BIND or
   * MPOL_INTERLEAVE over `nodes`; flags 0, MPOL_MF_STRICT, MPOL_MF_MOVE. Pages faulted in afterwards follow it (a
   * shared memfd mapping sets the file's shared policy). 0 or -errno.
   */
  mbind(region: Region, offset: number, length: number, mode: number, nodes: number[], flags: number): number;
  /**
   * Diagnostic: the NUMA node of each small page [offset, offset+length) touches, from move_pages(2) in query mode
   * (nothing moves): the node, or -errno for that page (-ENOENT not faulted in). -errno for the call itself
   * (-ENOSYS: a kernel without NUMA).
   */
  numaPageNodes(target: TransferTarget, offset: number, length: number): Int32Array | number;
  mmapInto(region: Region, offset: number, length: number, prot: number, flags: number, fd: number, fileOffset: number): number;
  /** `huge`: whole aligned 2 MiB extents as huge folios (MADV_COLLAPSE; shmem), small pages where that fails. */
  populate(region: Region, offset: number, length: number, huge?: boolean): Promise<number>;
  address(target: TransferTarget): bigint;
  /** Mappings made by the addon and not yet unmapped. */
  liveMappings(): number;
  live(): LiveCounts;
  /** Test only: the nth `op` from now fails with `errno` (nth 0 clears). */
  setFault(op: FaultOp, nth: number, errno: number): void;
  strerror(errno: number): string;
  statxDio(fd: number): [memAlign: number, offsetAlign: number] | number;
  memfdCreate(name: string, flags: number): number;
  seals(fd: number, add: number): number;
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  fadvise(fd: number, offset: number, length: number, advice: number): number;
  residency(fd: number, offset: number, length: number, pages?: Uint8Array): number;
  /** sync_file_range(2): 0 or -errno. */
  syncRange(fd: number, offset: number, length: number, flags: number): number;
  clearNonblock(fd: number): number;
  /** Gives an O_TMPFILE file a name: linkat of /proc/self/fd/N with AT_SYMLINK_FOLLOW. */
  linkTmpfile(fd: number, path: string): number;
  uringProbe(): number;
  /** 0 when the file takes RWF_DONTCACHE, else -errno (EOPNOTSUPP). Reads nothing. */
  uncachedProbe(fd: number): number;
  transfer(opts: TransferOptions, onProgress?: (bytes: number) => void): { promise: Promise<TransferResult>; cancel(): void };
  workShare(segments: number[]): WorkShare;
  workShareSwitch(share: WorkShare): void;
  workShareRest(share: WorkShare): number[];
  hashOpen(total: number, onHashed?: (hashed: number) => void): { hasher: Hasher; promise: Promise<HashResult> } | number;
  hashFeed(h: Hasher, region: Region, bufOffset: number, fileOffset: number, length: number): void;
  hashEnd(h: Hasher): void;
  hashCancel(h: Hasher): void;
  /** SHA-256 of bytes in memory on the JS thread, by the process's implementation or the one named (null: the CPU lacks it). */
  sha256(bytes: ArrayBufferView | ArrayBuffer, impl?: 'openssl' | 'sha-ni' | 'portable'): string | null;
  /** What verification hashes with here: the x86 SHA extensions or portable code. */
  readonly sha256Impl: 'openssl' | 'sha-ni' | 'portable';
  queueOpen(opts: { fd: number; write: boolean; direct: boolean; depth: number; engine: 'uring' | 'threads'; rwFlags?: number }): Queue | number;
  queueSubmit(queue: Queue, target: TransferTarget, bufOffset: number, fileOffset: number, length: number): Promise<QueueResult>;
  queueCancel(queue: Queue): void;
  queueClose(queue: Queue): Promise<void>;
  /** The bench's sendfile (0), splice (1) and copy_file_range (2) loops, synchronous: bench children only. */
  copyLoop(method: 0 | 1 | 2, inFd: number, outFd: number, length: number, pipeSize: number): number;
  udmabufCreate(devFd: number, memfd: number, items: Array<[offset: number, size: number]>, flags: number): number;
  dmaHeapAlloc(heapFd: number, length: number): number;
  dmaBufSync(fd: number, flags: number): number;
  dmaBufSetName(fd: number, name: string): number;
  drmPrimeImport(drmFd: number, dmabufFd: number): number;
  /** Share (src/share/): a non-blocking SOCK_SEQPACKET socket listening at `path` with exactly `mode`. */
  unixListen(path: string, mode: number, backlog: number): number;
  unixConnect(path: string): number;
  unixAccept(fd: number): number;
  /** One message with `fds` attached (SCM_RIGHTS); never blocks (-EAGAIN), never raises SIGPIPE (-EPIPE). */
  sendMsg(fd: number, data: Uint8Array, fds: number[]): number;
  /** One message: [its real length (MSG_TRUNC), msg_flags, ...received fds (the caller closes them)] or -errno. */
  recvMsg(fd: number, buf: Uint8Array, maxFds: number): number[] | number;
  fdFlags(fd: number): number;
  /** A close-on-exec duplicate that the caller owns. */
  dupFd(fd: number): number;
  /** close(2): 0 or -errno. */
  closeFd(fd: number): number;
  peerCred(fd: number): [pid: number, uid: number, gid: number] | number;
  /** A thread in epoll_wait that reports readiness of registered sockets (EPOLLONESHOT) to `callback`. */
  reactorOpen(callback: (events: number[]) => void): Reactor | number;
  reactorCtl(reactor: Reactor, op: 1 | 2 | 3, fd: number, id: number, events: number): number;
  reactorRef(reactor: Reactor, ref: boolean): void;
  reactorClose(reactor: Reactor): void;
  /**
   * statx + F_GETFL of `fd` on a native thread of its own (through a duplicate: `fd` stays the caller's), so a file
   * system that never answers blocks that thread, not the JS thread. Returns 0 or -errno (the call never started).
   */
  fdInspect(fd: number, callback: (r: FdInspection | number) => void): number;
  /** Takes `fd` and closes it on a native thread of its own (close() may wait for a FUSE daemon's FLUSH). */
  fdClose(fd: number, callback: (rc: number) => void): number;
  /** A new open file description of the same file (open of /proc/self/fd/N), close-on-exec. */
  reopenFd(fd: number, flags: number): number;
  /**
   * fdOpen: the same, read-only (O_DIRECT when `direct`), opened on a native thread of its own; callback(newFd |
   * -errno). Returns 0 or -errno (the call never started).
   */
  fdOpen(fd: number, direct: boolean, callback: (r: number) => void): number;
  inotifyInit(): number;
  inotifyWatch(ifd: number, fd: number, mask: number): number;
  inotifyUnwatch(ifd: number, wd: number): number;
  /** Every pending event as [wd, mask, wd, mask, …], or -errno. */
  inotifyRead(ifd: number): number[] | number;
  /** Bytes a Unix socket's peer has not read yet (SIOCOUTQ). */
  socketOutq(fd: number): number;
  /** The C library's name of an errno ('ETOOMANYREFS'); undefined for an unknown number. */
  errnoName(errno: number): string | undefined;
  fdConstants: Record<'IN_OPEN' | 'IN_CLOSE_WRITE' | 'IN_CLOSE_NOWRITE' | 'IN_DELETE_SELF' | 'IN_IGNORED' | 'IN_Q_OVERFLOW' | 'O_RDONLY' | 'O_RDWR', number>;
  shareConstants: Record<
    | 'EPOLLIN'
    | 'EPOLLOUT'
    | 'EPOLLERR'
    | 'EPOLLHUP'
    | 'EPOLLRDHUP'
    | 'MSG_TRUNC'
    | 'MSG_CTRUNC'
    | 'O_PATH'
    | 'O_ACCMODE'
    | 'O_NONBLOCK'
    | 'F_SEAL_FUTURE_WRITE'
    | 'MAX_FDS',
    number
  >;
  constants: Record<
    | 'PAGE_SIZE'
    | 'PROT_READ'
    | 'PROT_WRITE'
    | 'MAP_SHARED'
    | 'MAP_PRIVATE'
    | 'MAP_ANONYMOUS'
    | 'MAP_NORESERVE'
    | 'MAP_POPULATE'
    | 'MAP_HUGETLB'
    | 'PROT_NONE'
    | 'MADV_HUGEPAGE'
    | 'MPOL_DEFAULT'
    | 'MPOL_PREFERRED'
    | 'MPOL_BIND'
    | 'MPOL_INTERLEAVE'
    | 'MPOL_MF_STRICT'
    | 'MPOL_MF_MOVE'
    | 'ENOSYS'
    | 'EINVAL'
    | 'MADV_POPULATE_WRITE'
    | 'MADV_DONTNEED'
    | 'MFD_CLOEXEC'
    | 'MFD_ALLOW_SEALING'
    | 'MFD_HUGETLB'
    | 'F_SEAL_SEAL'
    | 'F_SEAL_SHRINK'
    | 'F_SEAL_GROW'
    | 'F_SEAL_WRITE'
    | 'POSIX_FADV_DONTNEED'
    | 'POSIX_FADV_SEQUENTIAL'
    | 'POSIX_FADV_RANDOM'
    | 'DMA_BUF_SYNC_READ'
    | 'DMA_BUF_SYNC_WRITE'
    | 'DMA_BUF_SYNC_RW'
    | 'DMA_BUF_SYNC_START'
    | 'DMA_BUF_SYNC_END'
    | 'O_TMPFILE'
    | 'RWF_DONTCACHE'
    | 'EAGAIN'
    | 'ECANCELED'
    | 'ENOENT'
    | 'EACCES'
    | 'EISDIR'
    | 'EPIPE'
    | 'ENAMETOOLONG'
    | 'EADDRINUSE'
    | 'ECONNABORTED'
    | 'ECONNRESET'
    | 'ECONNREFUSED'
    | 'ETOOMANYREFS'
    | 'SYNC_FILE_RANGE_WAIT_BEFORE'
    | 'SYNC_FILE_RANGE_WRITE'
    | 'SYNC_FILE_RANGE_WAIT_AFTER',
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

/** This system's C library as prebuilt addons are tagged: 'glibc' or 'musl' on Linux, '' elsewhere. */
function libc(): string {
  if (process.platform !== 'linux') return '';
  const report = process.report as typeof process.report & { excludeNetwork?: boolean };
  const saved = report.excludeNetwork;
  report.excludeNetwork = true; // the header is all we need; skip the slow interface scan
  try {
    const { header } = report.getReport() as { header?: { glibcVersionRuntime?: string } };
    return header?.glibcVersionRuntime ? 'glibc' : 'musl';
  } finally {
    report.excludeNetwork = saved;
  }
}

const REBUILD_HINT =
  'Build it from source with `npm rebuild dmaload` (needs a C++ compiler with C++20 support, make and python3), ' +
  'or set DMALOAD_ADDON to the path of a dmaload.node';

/**
 * Which addon to load: DMALOAD_ADDON (an absolute path, e.g. the sanitizer build); else the one node-gyp built
 * (build/Release: a checkout, or an install where no prebuilt fitted); else the prebuilt the package ships for this
 * platform, prebuilds/<platform>-<arch>/dmaload.<libc>.node (scripts/prebuild.mjs).
 */
function addonPath(): string {
  const forced = process.env.DMALOAD_ADDON;
  if (forced) return forced;
  const root = packageRoot();
  const built = join(root, 'build', 'Release', 'dmaload.node');
  if (existsSync(built)) return built;
  const tag = libc();
  const platform = `${process.platform}-${process.arch}`;
  const prebuilt = join(root, 'prebuilds', platform, `dmaload${tag ? `.${tag}` : ''}.node`);
  if (existsSync(prebuilt)) return prebuilt;
  throw new DmaloadError(
    'ERR_NO_ADDON',
    `dmaload has no native addon for ${platform}${tag ? ` (${tag})` : ''}: no prebuilt in ${join(root, 'prebuilds')} ` +
      `fits and none was built at ${built}. ${REBUILD_HINT}.`,
  );
}

function loadAddon(): Native {
  const path = addonPath();
  try {
    return require(path) as Native;
  } catch (e) {
    throw new DmaloadError('ERR_NO_ADDON', `dmaload cannot load its native addon ${path}: ${(e as Error).message}. ${REBUILD_HINT}.`, {
      path,
      cause: e,
    });
  }
}

export const native: Native = loadAddon();

/**
 * Closes an fd the addon made (a memfd, a dma-buf, a socket, an fd received over one), like fs.closeSync but without
 * the warning Node prints in worker threads for fds that fs did not open there.
 * @throws DmaloadSystemError (EBADF, …)
 */
export function closeFd(fd: number): void {
  const r = native.closeFd(fd);
  if (r < 0) throw new DmaloadSystemError(r, 'close');
}

/**
 * Closes an fd of ours on a thread of its own, for an fd whose last close may be long: a memfd's frees its pages
 * (165 ms per GiB measured here) in the closing thread, which must not be the event loop. Closes it here when no
 * thread can start. A failure has no one to tell (the fd is gone either way) and is ignored.
 */
export function closeFdSoon(fd: number): void {
  try {
    native.fdClose(fd, () => {});
  } catch {
    closeFd(fd);
  }
}
setStrerror(
  (e) => native.strerror(e),
  (e) => native.errnoName(e),
);

export const C = native.constants;
export const PAGE_SIZE = C.PAGE_SIZE;
