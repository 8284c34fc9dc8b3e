/** Test helpers: seeded data files, hashes, a temp folder that does direct I/O, and leak checks. */
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  constants as FS,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  readlinkSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { writeSeededFile } from '../src/bench/data.js';
import { evictPath, pageCacheBytesOf } from '../src/pipeline/cache.js';
import { dioAlign, uncachedErrorCode, uncachedSupport } from '../src/pipeline/source.js';
import { C, native } from '../src/engine/binding.js';
import type { Region, TransferOptions } from '../src/engine/binding.js';
import type { LoadedBuffer } from '../src/api/buffer.js';
import { seededBytes } from '../src/bench/data.js';
export { seededBytes };

/** The repository's root (tests run from dist/test/). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Whether dmaload does direct I/O on files in `dir`: the file system reports a direct-I/O alignment (statx
 * STATX_DIOALIGN, the library's own test) and accepts O_DIRECT. tmpfs, the default /tmp on Fedora and Arch, does
 * not report one (since Linux 6.6 it accepts O_DIRECT opens all the same, so opening alone proves nothing).
 */
function supportsDirect(dir: string): boolean {
  const probe = join(dir, `.dmaload-direct-probe-${process.pid}`);
  try {
    mkdirSync(dir, { recursive: true });
    const fd = openSync(probe, FS.O_CREAT | FS.O_RDWR | FS.O_DIRECT, 0o600);
    try {
      return dioAlign(fd).offsetAlign > 0;
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  } finally {
    try {
      unlinkSync(probe);
    } catch {
      /* not created */
    }
  }
}

/**
 * Where tests put their files: DMALOAD_TEST_DIR if set, else the first of the system temp folder and a folder
 * under the project (.cache/test-tmp) that does direct I/O; `reason` says why direct I/O is missing when none does,
 * and tests that need it skip with that reason.
 */
export const testBase: { dir: string; direct: boolean; reason: string | undefined } = (() => {
  const forced = process.env.DMALOAD_TEST_DIR;
  if (forced)
    return {
      dir: forced,
      direct: supportsDirect(forced),
      reason: supportsDirect(forced) ? undefined : `DMALOAD_TEST_DIR (${forced}) does not support O_DIRECT`,
    };
  const candidates = [tmpdir(), join(repoRoot, '.cache', 'test-tmp')];
  for (const dir of candidates) if (supportsDirect(dir)) return { dir, direct: true, reason: undefined };
  return { dir: tmpdir(), direct: false, reason: `no folder that supports O_DIRECT among ${candidates.join(', ')}` };
})();

/** Skips the test (with the reason) where no test folder supports direct I/O. */
export function needsDirect(t: { skip(msg: string): void }): boolean {
  if (testBase.direct) return false;
  t.skip(testBase.reason!);
  return true;
}

/** A fresh folder under {@link testBase}, removed by `cleanup()`. */
export function tempDir(prefix = 'dmaload-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(testBase.dir, prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The address of a buffer's memory (to tell whether two buffers share it). */
export function bufferAddress(b: LoadedBuffer): bigint {
  return native.address(b.bytes.buffer as ArrayBuffer);
}

/** SHA-256 of a buffer of any size, hashed through windows of `window` bytes (Node 20 cannot view 4 GiB at once). */
export function bufferSha256(b: LoadedBuffer, window = 256 * 1024 * 1024): string {
  const h = createHash('sha256');
  for (const w of b.windows(window)) h.update(w);
  return h.digest('hex');
}

/** SHA-256 of every part (dma-buf targets) read back through an mmap of its own dma-buf fd, inside DMA_BUF_IOCTL_SYNC. */
export function partsSha256(b: LoadedBuffer): string {
  const hash = createHash('sha256');
  for (const p of b.parts) {
    const len = Math.ceil(p.size / 4096) * 4096;
    const region = native.mmap(len, C.PROT_READ, C.MAP_SHARED, p.fd, 0, 0);
    if (typeof region === 'number') throw new Error(`mmap of dma-buf fd ${p.fd} failed with errno ${-region}`);
    try {
      const start = native.dmaBufSync(p.fd, C.DMA_BUF_SYNC_START | C.DMA_BUF_SYNC_READ);
      if (start !== 0) throw new Error(`DMA_BUF_IOCTL_SYNC start on fd ${p.fd} failed with ${start}`);
      hash.update(new Uint8Array(native.view(region, 0, p.size)));
      const end = native.dmaBufSync(p.fd, C.DMA_BUF_SYNC_END | C.DMA_BUF_SYNC_READ);
      if (end !== 0) throw new Error(`DMA_BUF_IOCTL_SYNC end on fd ${p.fd} failed with ${end}`);
    } finally {
      native.munmap(region);
    }
  }
  return hash.digest('hex');
}

/** Writes `size` seeded bytes to `dir/name`; returns the path and the data's hash. */
export function makeFile(dir: string, name: string, size: number, seed = size): { path: string; sha256: string } {
  const path = join(dir, name);
  return { path, sha256: writeSeededFile(path, size, seed) };
}

/** Drops a file's pages from the page cache (makeFile's files are written back, so this empties it). */
export const evictFile = evictPath;

/** Bytes of the file in the page cache (mincore): the tests own their files, so residency must be visible. */
export function cachedBytes(path: string, size: number): number {
  const n = pageCacheBytesOf(path, size);
  if (n === null) throw new Error(`the page-cache residency of '${path}' is hidden from this user`);
  return n;
}

/** Reads a file through the page cache so that all of it is resident. */
export function warmFile(path: string): void {
  readFileSync(path);
}

export function fileSha256(path: string): string {
  return sha256(readFileSync(path));
}

/** Open fds of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** This process's open fds and what each one is (readlink of /proc/self/fd/N), to name what a leak left open. */
export function openFds(): Map<string, string> {
  const out = new Map<string, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      out.set(fd, readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // closed meanwhile (the readdir's own fd among them)
    }
  }
  return out;
}

/**
 * Mappings that dmaload made: the addon's exact count of live mmaps, and the memfd mappings the kernel lists in
 * /proc/self/maps (V8 maps and unmaps its own heap all the time, so a raw line count would be noise).
 */
export function mappings(): { live: number; memfds: number } {
  const maps = readFileSync('/proc/self/maps', 'utf8');
  return { live: native.liveMappings(), memfds: maps.split('\n').filter((l) => l.includes('memfd:dmaload')).length };
}

/**
 * Asserts (by resolving with a message) that fds, mappings and the addon's jobs, threads and queues are back to
 * where they were. Jobs, queues and fds must be back at once; a thread or a mapping may wait a few turns of the event
 * loop for the finalizer of a view the garbage collector took (the addon keeps such memory mapped until Node says
 * the last buffer over it is gone), and no longer.
 */
export function leakCheck(): () => Promise<string | undefined> {
  // Views an earlier test dropped may still be waiting for a collection: ask for one now so fewer of them are counted
  // in the baseline. Their finalizers run a tick later, so one may still go during this test: a mapping count that
  // falls is that, not a leak (a leak only ever adds mappings).
  collectGarbage();
  const fds0 = fdCount();
  const open0 = openFds();
  const m0 = mappings();
  const l0 = native.live();
  const check = (): string | undefined => {
    const fds = fdCount();
    const m = mappings();
    const l = native.live();
    // A leak adds an fd (or reuses a number for something else). A count that falls is something opened before the
    // baseline (a lazily closed handle of Node's or of an earlier test) going away: not this test's doing.
    const added = [...openFds()].filter(([fd, what]) => open0.get(fd) !== what).map(([fd, what]) => `${fd} ${what}`);
    if (fds > fds0 || added.length) {
      return `fd count ${fds0} -> ${fds}${added.length ? ` (new: ${added.join(', ')})` : ''}`;
    }
    for (const k of ['jobs', 'threads', 'queues', 'fds'] as const) if (l[k] !== l0[k]) return `live ${k} ${l0[k]} -> ${l[k]}`;
    if (m.memfds > m0.memfds) return `memfd mappings ${m0.memfds} -> ${m.memfds}`;
    if (l.mappings > l0.mappings) return `live mappings ${l0.mappings} -> ${l.mappings}`;
    return undefined;
  };
  return async () => {
    const first = check();
    // A detached native thread (the share server's fd closes and inspections) delivers its result to JS and then
    // returns: for a moment after the result it still counts. It is not a leak if it is gone a few turns later. Nor is
    // an fd a server closes on such a thread (an evicted buffer's) while the test looks.
    if (first === undefined || !/mappings|live threads|fd count/.test(first)) return first;
    for (let i = 0; i < 20; i++) {
      // The views are garbage once the test dropped them, but their finalizers run only after a collection, which
      // may not come by itself within the wait: ask for one.
      collectGarbage();
      await new Promise((r) => setTimeout(r, 10));
      if (check() === undefined) return undefined;
    }
    return check();
  };
}

let gcFn: (() => void) | undefined;
/** A full garbage collection (as --expose-gc's gc(), enabled here so the test runner needs no flag). */
function collectGarbage(): void {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  gcFn();
}

/** A region of data in a sparse file; everything else reads as zeros. */
export interface Island {
  offset: number;
  bytes: Uint8Array;
}

/**
 * A sparse file of `size` bytes with seeded random islands at the start, around 4 GiB and at the end (holes read as
 * zeros, so a multi-GiB file costs little disk time). `sha256` is computed from the islands and the zeros between
 * them, never by reading the file: an oracle independent of every read path.
 */
export function makeSparseFile(dir: string, name: string, size: number, seed = 1): { path: string; sha256: string; islands: Island[] } {
  const path = join(dir, name);
  const want = [
    [0, Math.min(size, 1 << 20)],
    [4 * 2 ** 30 - (1 << 19) - 3, 1 << 20],
    [size - (1 << 20) - 5, (1 << 20) + 5],
  ] as const;
  const islands: Island[] = [];
  let end = 0;
  for (const [i, [o, n]] of want.entries()) {
    const from = Math.max(o, end, 0);
    const to = Math.min(o + n, size);
    if (to <= from) continue;
    islands.push({ offset: from, bytes: seededBytes(to - from, seed * 31 + i) });
    end = to;
  }
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const isl of islands) writeSync(fd, isl.bytes, 0, isl.bytes.length, isl.offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  evictPath(path);
  const h = createHash('sha256');
  const zeros = new Uint8Array(64 << 20);
  let pos = 0;
  const zeroTo = (to: number) => {
    while (pos < to) {
      const n = Math.min(zeros.length, to - pos);
      h.update(zeros.subarray(0, n));
      pos += n;
    }
  };
  for (const isl of islands) {
    zeroTo(isl.offset);
    h.update(isl.bytes);
    pos += isl.bytes.length;
  }
  zeroTo(size);
  return { path, sha256: h.digest('hex'), islands };
}

/** SHA-256 of a file read in 64 MiB pieces (any size, never the whole file in memory). */
export function fileSha256Streamed(path: string): string {
  const h = createHash('sha256');
  const buf = new Uint8Array(64 << 20);
  const fd = openSync(path, 'r');
  try {
    for (let pos = 0; ;) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** The lines of /proc/self/smaps about the mapping that starts at `addr` (the kernel's own word on a mapping). */
function smapsOf(addr: bigint): string[] {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const i = smaps.findIndex((l) => l.startsWith(`${addr.toString(16)}-`));
  if (i < 0) throw new Error(`no mapping at 0x${addr.toString(16)} in /proc/self/smaps`);
  let j = i + 1;
  while (j < smaps.length && !/^[0-9a-f]+-[0-9a-f]+ /.test(smaps[j]!)) j++;
  return smaps.slice(i + 1, j);
}

/** The VmFlags of the mapping that starts at `addr` in /proc/self/smaps. */
export function vmFlags(addr: bigint): string[] {
  for (const l of smapsOf(addr)) {
    const m = /^VmFlags:\s+(.*)$/.exec(l);
    if (m) return m[1]!.trim().split(/\s+/);
  }
  return [];
}

/** A size field of the mapping that starts at `addr` in /proc/self/smaps (e.g. ShmemPmdMapped), in bytes. */
export function smapsBytes(addr: bigint, field: string): number {
  for (const l of smapsOf(addr)) {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`).exec(l);
    if (m) return Number(m[1]) * 1024;
  }
  return 0;
}

/**
 * The NUMA nodes with memory, read from sysfs here (an oracle apart from src/engine/numa.ts); undefined on a kernel
 * without NUMA (no /sys/devices/system/node).
 */
export function sysfsMemoryNodes(): number[] | undefined {
  const dir = '/sys/devices/system/node';
  if (!existsSync(`${dir}/has_memory`)) return undefined;
  const out: number[] = [];
  for (const part of readFileSync(`${dir}/has_memory`, 'utf8').trim().split(',')) {
    const [lo, hi] = part.split('-').map(Number);
    for (let n = lo!; n <= (hi ?? lo!); n++) out.push(n);
  }
  return out;
}

/**
 * Why `dir` cannot do uncached buffered I/O (RWF_DONTCACHE), or undefined when it can: the library's own probe, on a
 * real file there, so tests skip with the kernel's or the file system's reason.
 */
export function uncachedMissing(dir: string): string | undefined {
  const p = join(dir, `uncached-probe-${process.pid}`);
  writeFileSync(p, 'x');
  const fd = openSync(p, 'r');
  try {
    const r = uncachedSupport(fd);
    return r === 0 ? undefined : `RWF_DONTCACHE is refused here (${uncachedErrorCode(r)}): kernel or file system of ${dir} lacks uncached buffered I/O`;
  } finally {
    closeSync(fd);
    unlinkSync(p);
  }
}

/**
 * The addon's plainest job (native.transfer): a buffered read of `length` bytes of `fd` into the start of `target`,
 * one 4 KiB request at a time on the thread engine; `over` changes any field.
 */
export function readJob(fd: number, target: Region | ArrayBuffer, length: number, over: Partial<TransferOptions> = {}): TransferOptions {
  return {
    fd,
    write: false,
    direct: false,
    target,
    segments: [0, 0, length],
    chunk: 4096,
    depth: 1,
    padTo: 1,
    engine: 'threads',
    bounce: false,
    populate: false,
    ...over,
  };
}
