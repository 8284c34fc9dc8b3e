/**
 * The one policy for opening files, for every call that reads or writes one: refuse what is not a regular file
 * before open() can block on it, add an O_DIRECT descriptor where the file system allows, and learn the alignment
 * direct I/O needs there.
 *
 * The rule for io, the same in load, loadRanges, loadModel, readInto, writeFrom, save, createWriter and copy:
 * - 'direct': O_DIRECT or nothing. A file system without direct I/O (tmpfs, /dev/shm) is ERR_DIRECT_IO_UNSUPPORTED.
 * - 'auto': O_DIRECT where the file system allows it, else uncached buffered I/O (RWF_DONTCACHE) where the file
 *   system takes it, else buffered, with the reason in `fallbackReason`. Ragged edges that O_DIRECT cannot do are
 *   uncached where the file system allows.
 * - 'uncached': buffered I/O that leaves no page cache behind (RWF_DONTCACHE, Linux 6.14+: ext4 since 6.17, xfs
 *   since 6.15), or ERR_UNCACHED_IO_UNSUPPORTED where the kernel or file system does not take it.
 * - 'buffered': the page cache only.
 */
import { closeSync, constants as FS, fstatSync, openSync, promises as fsp, statSync, statfsSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { DmaloadError, DmaloadSystemError, errnoCode, invalidType } from '../core/errors.js';
import { C, native } from '../engine/binding.js';
import type { Hasher, Region } from '../engine/binding.js';

export type IoMode = 'direct' | 'buffered' | 'auto' | 'uncached';

/** How a network read reports: the abort, the hash fed each finished piece, progress, and each finished chunk. */
export interface ReadIntoOptions {
  signal: AbortSignal;
  hash?: Hasher | undefined;
  onProgress?: ((bytes: number) => void) | undefined;
  /** A finished chunk (a local copy writes it to disk). */
  onPiece?: ((fileOffset: number, bufOffset: number, length: number) => void) | undefined;
}

/** What the schedule needs of a network source: ranges into a region, each piece hashed as it lands. */
export interface RemoteReader {
  readInto(region: Region, segments: readonly number[], o: ReadIntoOptions): Promise<number>;
  readBytes(offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  /** The SHA-256 the source promised (the hub's X-Linked-Etag, an S3 store's checksum), checked while loading. */
  sha256: string | undefined;
  /** Who promised it: 'hub' or 'store' (S3). */
  sha256From?: 'hub' | 'store';
  /** Requests, retries, the most connections at once, bytes placed. */
  stats: { bytes: number; requests: number; retries: number; connections: number };
  /** What names this version of the object: its size and validators (ETag, Last-Modified, a promised SHA-256). */
  identity: string;
  /** A local copy is written while loading (`cache`): it needs the SHA-256 of the whole object to be put in place. */
  wantsHash?: boolean;
  /** Every byte was loaded and verified (`sha256`): puts the local copy in place; false when there is none to. */
  complete?(sha256: string | undefined): Promise<boolean>;
  /** The loaded bytes failed verification: the local copy is thrown away (never resumed from). */
  discard?(): Promise<void>;
}

/** Direct-I/O alignment of a file's file system (statx STATX_DIOALIGN); zeros when direct I/O is not possible. */
export interface DioAlign {
  memAlign: number;
  offsetAlign: number;
}

export interface OpenedFile {
  /** The path, or `fd N` for a caller's FileHandle. */
  path: string;
  /** Buffered descriptor (the caller's own for a FileHandle): ragged edges, cached ranges, metadata. */
  fd: number;
  /** The same file with O_DIRECT, or -1. */
  directFd: number;
  /** True when `directFd` is open. */
  direct: boolean;
  /** The file system's direct-I/O alignment (zeros when `direct` is false). */
  align: DioAlign;
  /**
   * preadv2/pwritev2 flags for buffered I/O on `fd`: RWF_DONTCACHE where io is 'uncached' or 'auto' and the file
   * system takes it (the page cache is left as found), else 0.
   */
  rwFlags: number;
  size: number;
  /** The file's stat; undefined for a network source. */
  stat: Stats | undefined;
  /** Why there is no direct descriptor although io 'auto' would have used one; undefined otherwise. */
  fallbackReason: string | undefined;
  /**
   * A network source (sources/http.ts) instead of a file: `fd` and `directFd` are -1, and the reads go through it.
   * Everything above the schedule (plan, targets, verify, ranks) is the same for both.
   */
  remote?: RemoteReader | undefined;
  /**
   * The caller checks the file's version after the load on threads of its own (dmaload serve, for a client's file):
   * load() then asks the file nothing itself on the JS thread (no fstat for the size check).
   */
  checkedByCaller?: boolean;
  /**
   * The file's path as the kernel names it (readlink of /proc/self/fd/N), when the caller has it: verify 'auto' reads
   * a hub-cache blob name from it without asking the file system (dmaload serve, for a client's file).
   */
  resolvedPath?: string;
  /** Closes what this module opened (never the caller's FileHandle). */
  close(): Promise<void>;
}

/** Throws the library's errors for what is not a regular file: EISDIR for folders, ERR_NOT_REGULAR_FILE otherwise. */
export function requireRegular(st: Stats, path: string, syscall = 'open'): void {
  if (st.isFile()) return;
  if (st.isDirectory()) throw new DmaloadSystemError(21 /* EISDIR */, syscall, path);
  const kind = st.isFIFO()
    ? 'a FIFO'
    : st.isCharacterDevice()
      ? 'a character device'
      : st.isBlockDevice()
        ? 'a block device'
        : st.isSocket()
          ? 'a socket'
          : 'not a regular file';
  throw new DmaloadError('ERR_NOT_REGULAR_FILE', `'${path}' is ${kind}; dmaload reads regular files only (their size is known and stable)`, { path });
}

/**
 * Kernel pseudo-file systems (statfs f_type): their files stat as regular but their size is not their content's
 * (procfs says 0, sysfs 4096), so a load would give 0 bytes or fail as a changed file.
 */
const PSEUDO_FS = new Map<number, string>([
  [0x9fa0, 'procfs'],
  [0x62656572, 'sysfs'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0x63677270, 'cgroup2'],
  [0x27e0eb, 'cgroup'],
  [0x62656570, 'configfs'],
  [0xde5e81e4, 'efivarfs'],
]);

function requireRealFs(type: number, path: string): void {
  const fs = PSEUDO_FS.get(type);
  if (fs)
    throw new DmaloadError(
      'ERR_NOT_REGULAR_FILE',
      `'${path}' is a ${fs} pseudo-file: its size is not its content's, so dmaload cannot read it; read it with cat or fs.readFile`,
      { path },
    );
}

/**
 * Opens a path that must be a regular file (O_CREAT in `flags`: or not exist yet), refusing anything else with
 * {@link requireRegular}'s errors before open() can block on it. Every open of a caller's path goes through here
 * (openFile, inspect, eviction), so a FIFO, a folder or a device is refused the same way everywhere.
 */
export async function openRegular(path: string, flags: number, mode = 0o644): Promise<FileHandle> {
  // stat() first: open() of a FIFO blocks until a writer appears (on a libuv thread nothing can end), and /dev/zero
  // never ends.
  const st = await fsp.stat(path).catch((e: NodeJS.ErrnoException) => (flags & FS.O_CREAT && e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  if (st) {
    requireRegular(st, path);
    requireRealFs((await fsp.statfs(path)).type, path);
  }
  // O_NONBLOCK only guards the open() against a FIFO swapped in after the stat; it is cleared at once, since
  // io_uring would answer EAGAIN instead of waiting on a regular file opened with it.
  const h = await fsp.open(path, flags | FS.O_NONBLOCK, mode);
  try {
    requireRegular(await h.stat(), path); // swapped for something else between stat() and open()
    clearNonblock(h.fd, path);
    return h;
  } catch (e) {
    await h.close().catch(() => {});
    throw e;
  }
}

/** {@link openRegular} for synchronous callers, read-only: the descriptor, which the caller closes. */
export function openRegularSync(path: string): number {
  requireRegular(statSync(path), path);
  requireRealFs(statfsSync(path).type, path);
  const fd = openSync(path, FS.O_RDONLY | FS.O_NONBLOCK);
  try {
    requireRegular(fstatSync(fd), path);
    clearNonblock(fd, path);
    return fd;
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

export function dioAlign(fd: number): DioAlign {
  const r = native.statxDio(fd);
  if (typeof r === 'number') return { memAlign: 0, offsetAlign: 0 };
  return { memAlign: r[0], offsetAlign: r[1] };
}

/**
 * Opens `file` (a path, or a caller's open FileHandle that stays the caller's) for reading or for writing (a path
 * is created when missing, never truncated), with a direct descriptor as `io` says.
 */
export async function openFile(file: string | FileHandle, access: 'read' | 'write', io: IoMode): Promise<OpenedFile> {
  const owned: FileHandle[] = [];
  const closeAll = async () => {
    for (const h of owned.splice(0).reverse()) await h.close().catch(() => {});
  };
  try {
    let path: string;
    let fd: number;
    if (typeof file === 'string') {
      if (file === '') throw invalidType('file', 'a path or an open FileHandle', file);
      const h = await openRegular(file, access === 'write' ? FS.O_WRONLY | FS.O_CREAT : FS.O_RDONLY);
      owned.push(h);
      path = file;
      fd = h.fd;
    } else if (file && typeof file === 'object' && typeof file.fd === 'number') {
      fd = file.fd;
      path = `fd ${fd}`;
      if (fd < 0) throw new DmaloadError('ERR_FILE_CLOSED', 'The file handle is closed; open the file again', {});
    } else {
      throw invalidType('file', 'a path or an open FileHandle', file);
    }
    const stat = await fsp.stat(`/proc/self/fd/${fd}`);
    requireRegular(stat, path); // a caller's FileHandle can be anything
    const d = await attachDirect(fd, path, access, io);
    if (d.handle) owned.push(d.handle);
    return {
      path,
      fd,
      directFd: d.handle?.fd ?? -1,
      direct: d.handle !== undefined,
      align: d.align,
      rwFlags: d.rwFlags,
      size: stat.size,
      stat,
      fallbackReason: d.reason,
      close: closeAll,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

/**
 * Whether the file open as `fd` takes RWF_DONTCACHE: 0 when it does, else the negative errno (EOPNOTSUPP where
 * the kernel or the file system does not; EINVAL on kernels before 6.14, which do not know the flag).
 */
export function uncachedSupport(fd: number): number {
  return native.uncachedProbe(fd);
}

/** The code of an {@link uncachedSupport} failure, named as the kernel documents it (Node calls 95 ENOTSUP). */
export function uncachedErrorCode(r: number): string {
  return r === -95 ? 'EOPNOTSUPP' : errnoCode(r);
}

/**
 * The O_DIRECT half of the policy, for a file that is already open as `fd`: a second descriptor of the same file
 * with O_DIRECT (reopened through /proc, so it is the same file whatever happened to its path), or the reason
 * there is none; and the flags for buffered I/O on `fd` (RWF_DONTCACHE for 'uncached', and for 'auto' where the
 * file system takes it). Throws ERR_DIRECT_IO_UNSUPPORTED for io 'direct' where the file system has no direct I/O,
 * and ERR_UNCACHED_IO_UNSUPPORTED for io 'uncached' where it has no uncached buffered I/O.
 */
export async function attachDirect(
  fd: number,
  path: string,
  access: 'read' | 'write',
  io: IoMode,
): Promise<{ handle: FileHandle | undefined; align: DioAlign; reason: string | undefined; rwFlags: number }> {
  const none = { memAlign: 0, offsetAlign: 0 };
  if (io === 'buffered') return { handle: undefined, align: none, reason: undefined, rwFlags: 0 };
  if (io === 'uncached') {
    const r = uncachedSupport(fd);
    if (r < 0) {
      throw new DmaloadError(
        'ERR_UNCACHED_IO_UNSUPPORTED',
        `The file system of '${path}' does not support uncached buffered I/O (preadv2 with RWF_DONTCACHE: ${uncachedErrorCode(r)}; it needs Linux 6.14+, ext4 6.17+, xfs 6.15+); use io 'auto' or 'buffered'`,
        { path },
      );
    }
    return { handle: undefined, align: none, reason: undefined, rwFlags: C.RWF_DONTCACHE };
  }
  const align = dioAlign(fd);
  // Why not (the short cause): said once, in the ioReason of 'auto' and in the error of 'direct'.
  let why: string | undefined;
  let handle: FileHandle | undefined;
  if (align.memAlign === 0 || align.offsetAlign === 0) {
    why = 'statx reports no STATX_DIOALIGN';
  } else {
    try {
      handle = await fsp.open(`/proc/self/fd/${fd}`, (access === 'write' ? FS.O_WRONLY : FS.O_RDONLY) | FS.O_DIRECT);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      why = 'open() with O_DIRECT fails with EINVAL';
    }
  }
  let reason = why === undefined ? undefined : `the file system does not support direct I/O (${why})`;
  if (!handle && io === 'direct') {
    throw new DmaloadError('ERR_DIRECT_IO_UNSUPPORTED', `The file system of '${path}' does not support direct I/O (${why}); use io 'auto' or 'buffered'`, {
      path,
    });
  }
  // 'auto': buffered I/O (ragged edges, or everything without O_DIRECT) is uncached where the file system allows.
  const rwFlags = uncachedSupport(fd) === 0 ? C.RWF_DONTCACHE : 0;
  if (!handle && rwFlags) reason += '; reading uncached instead (RWF_DONTCACHE: buffered, leaving no page cache)';
  return { handle, align: handle ? align : none, reason, rwFlags };
}

/** Clears O_NONBLOCK on a regular file's descriptor. */
export function clearNonblock(fd: number, path: string): void {
  const r = native.clearNonblock(fd);
  if (r < 0) throw new DmaloadSystemError(r, 'fcntl', path);
}

/** ERR_FILE_CHANGED: the file's size changed under a load or a copy, so the bytes may mix old and new. */
export function fileChanged(path: string, during: string, expected: number, now: number): never {
  throw new DmaloadError(
    'ERR_FILE_CHANGED',
    `'${path}' changed size during the ${during} (${expected} bytes at the start, ${now} now); try again once nothing writes to it`,
    { path },
  );
}
