/**
 * The share server's cache: one loaded buffer per file version, an identity no client can forge, and a budget that
 * counts what the server's buffers really hold.
 *
 * Identity. A client's fd proves it may read a file; which file it is must not rest on what the file's owner can set
 * (size, mtime) or what the kernel reuses (an inode number once its file is gone, a device number once its file
 * system is unmounted). An entry therefore keeps a duplicate of the fd it was loaded from for its whole life: that
 * inode, and the super block holding its device number, cannot go away and be reused while the entry exists. A request
 * hits only if its fd is on the same mount (STATX_MNT_ID_UNIQUE), device and inode — so the very inode the entry pins
 * — with the same size, mtime and ctime (ctime is set by the kernel on every change, never by a user). A version that
 * differs replaces the entry.
 *
 * Budget. Bytes are charged through the {@link Ledger} from the moment a load starts until nobody holds the buffer,
 * cached or not; per user too (the server's own user is not limited). Room is made by dropping least recently used
 * entries that nobody else holds (dropping one that is held frees nothing).
 * @module
 */
import { loadOpened } from '../api/load.js';
import type { NumaNode } from '../engine/numa.js';
import { allocate } from '../api/allocate.js';
import { readInto } from '../api/rw.js';
import type { LoadedBuffer } from '../api/buffer.js';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { formatBytes, msSince, roundUp } from '../core/util.js';
import type { FdInspection } from '../engine/binding.js';
import { C, PAGE_SIZE, closeFd, closeFdSoon, native } from '../engine/binding.js';
import type { IoMode, OpenedFile } from '../pipeline/source.js';
import type { HugePages } from '../api/options.js';
import { createMemfd } from '../targets/memfd.js';
import { readlinkSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Sender } from './fds.js';
import type { Holding, Ledger } from './ledger.js';
import type { ServedLoadStats } from './protocol.js';
import { SERVED_SEALS, exportBuffer } from './seal.js';
import { Admission, neverFits } from './admission.js';
import type { Exported, ShareTarget } from './seal.js';

type Stats = Omit<ServedLoadStats, 'bytesRead' | 'serverMs'> & { bytesRead: number };

/** What identifies a file version: the inode (pinned while an entry exists) and what changes with its contents. */
export interface FileVersion {
  /** mount:device:inode. */
  inode: string;
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  /** The file system's direct-I/O alignment (statx STATX_DIOALIGN; zeros: none), for the server's reopen. */
  dio?: { memAlign: number; offsetAlign: number };
}

/** Where /proc says a received fd's file is (its dentry's path), or undefined. */
function linkOf(fd: number): string | undefined {
  try {
    const l = readlinkSync(`/proc/self/fd/${fd}`);
    return l.startsWith('/') && !l.endsWith(' (deleted)') ? l : undefined;
  } catch {
    return undefined;
  }
}

export function versionOf(st: FdInspection): FileVersion {
  return {
    inode: `${st.mntId ?? '?'}:${st.devMajor}:${st.devMinor}:${st.ino}`,
    size: Number(st.size),
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    dio: { memAlign: st.dioMemAlign ?? 0, offsetAlign: st.dioOffsetAlign ?? 0 },
  };
}

function sameVersion(a: FileVersion, b: FileVersion): boolean {
  return a.inode === b.inode && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

export interface Entry {
  version: FileVersion;
  /** What the request that loaded it called it (escaped): for logs. */
  name: string;
  size: number;
  /** The buffer's own fds (the server's): one memfd, or one dma-buf per part. */
  fds: number[];
  parts: Array<{ offset: number; size: number }>;
  stats: Stats;
  /** A duplicate of the fd the file was loaded from: pins its inode and file system while the entry lives (-1 for a reference). */
  source: number;
  /** A reference's version (its size and validators, ./open.ts): a request whose probe says otherwise loads it again. */
  identity?: string;
  holding: Holding;
  closed: boolean;
}

/** An entry and the fds of one reply (the client's own file descriptions: a reopen of the memfd, or dma-buf dups). */
export interface Acquired {
  entry: Entry;
  fds: number[];
  cached: boolean;
  /** Bytes read from storage for this request (0 on a hit, or when joining another request's load). */
  bytesRead: number;
}

export interface CacheOptions {
  budget: number;
  perUserBudget: number;
  /** The server's own uid: not limited per user (preloads, and clients run by the operator). */
  ownUid: number;
  target: ShareTarget;
  io: IoMode;
  heap: string | undefined;
  partSize: number | undefined;
  hugePages: HugePages | undefined;
  numaNode: NumaNode | undefined;
  signal: AbortSignal;
  log: (line: string) => void;
  /** Hands a duplicate of a client's fd back for closing off the JS thread (its file system may hang). */
  releaseSource: (fd: number) => void;
  /** Re-inspects a client's fd off the JS thread (after a load: did the file change meanwhile?). */
  inspect: (fd: number, name: string, from: Sender) => Promise<FdInspection>;
  /** Opens a client's file anew (read-only, O_DIRECT when asked) on the server's bounded threads (FdGuard.reopen). */
  reopen: (fd: number, name: string, from: Sender, direct: boolean) => Promise<number>;
  /** Closes fds of a client's file on the server's bounded threads, counted against `from` (FdGuard.release). */
  release: (fds: number[], from: Sender, name: string) => void;
  /** Opens a reference the server may fetch (its own network options, cache and redirect rule). */
  openRef: (ref: string, signal: AbortSignal) => Promise<OpenedFile>;
  /** A load with no progress for this long is abandoned (ERR_SHARE_LOAD_STALLED), ms. */
  stallMs: number;
  /** A load that does not fit in the budget waits this long for room before ERR_MEMORY_BUDGET, ms. */
  budgetWaitMs: number;
}

/** A reference being fetched: how many requests still wait for it; when the last one goes, it is aborted. */
interface Download {
  promise: Promise<Entry>;
  waiters: number;
  abort: AbortController;
}

/** What names a version of an opened reference: a network object's validators, or a local copy's inode and times. */
function identityOf(src: OpenedFile): string {
  if (src.remote) return src.remote.identity;
  const st = src.stat!;
  return JSON.stringify(['file', st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs]);
}

function budgetError(message: string): DmaloadError {
  return new DmaloadError('ERR_MEMORY_BUDGET', message);
}

export class Cache {
  readonly #o: CacheOptions;
  readonly #ledger: Ledger;
  /** Cached entries by inode, least recently used first. */
  readonly #entries = new Map<string, Entry>();
  readonly #loading = new Map<string, Promise<Entry>>();
  readonly #downloads = new Map<string, Download>();
  readonly #admission: Admission;
  /** Bytes of loads in progress, in all and per uid. */
  #reserved = 0;
  readonly #reservedBy = new Map<number, number>();
  readonly count = { hits: 0, misses: 0, loads: 0, evictions: 0, stalled: 0 };

  constructor(o: CacheOptions, ledger: Ledger) {
    this.#o = o;
    this.#ledger = ledger;
    this.#admission = new Admission({
      waitMs: o.budgetWaitMs,
      fits: (charge, uid) => this.#fits(charge, uid),
      take: (charge, uid) => this.#reserve(uid, charge),
      why: (charge, uid, name) => this.#noRoom(charge, uid, name),
      signal: o.signal,
    });
    ledger.onFreed = () => this.#scheduleWake();
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Bytes charged: every live buffer (cached or held by clients) and loads in progress. */
  get used(): number {
    return this.#ledger.used + this.#reserved;
  }

  /** Bytes of the cached entries. */
  get cachedBytes(): number {
    let n = 0;
    for (const e of this.#entries.values()) n += e.holding.bytes;
    return n;
  }

  usedBy(uid: number): number {
    return this.#ledger.usedBy(uid) + (this.#reservedBy.get(uid) ?? 0);
  }

  /**
   * The buffer for the file version `v` behind `fd`, with one reply's fds: from the cache, a load in progress, or a
   * new load charged to the sender's uid.
   */
  async acquire(fd: number, v: FileVersion, name: string, from: Sender): Promise<Acquired> {
    const key = `${v.inode}:${v.size}:${v.mtimeNs}:${v.ctimeNs}`;
    // An entry dropped between its load and our turn is simply looked up again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const hit = this.#entries.get(v.inode);
      if (hit && sameVersion(hit.version, v)) {
        this.#entries.delete(v.inode);
        this.#entries.set(v.inode, hit); // most recently used
        this.count.hits++;
        return { entry: hit, fds: replyFds(hit, this.#o.target, name), cached: true, bytesRead: 0 };
      }
      if (hit) {
        // The file changed since it was loaded (its size, mtime or ctime): that buffer is stale for everyone.
        this.#o.log(`${name}: changed since it was cached; loading it again`);
        this.#drop(hit);
      }
      let p = this.#loading.get(key);
      const mine = p === undefined;
      if (!p) {
        this.count.misses++;
        const q = this.#load(fd, v, name, from);
        p = q;
        this.#loading.set(key, q);
        void q.then(
          () => this.#loading.delete(key),
          () => this.#loading.delete(key),
        );
      } else {
        this.count.hits++;
      }
      const entry = await p;
      // Checked and used in one synchronous step: nothing can close the entry's fds between the two.
      if (!entry.closed) return { entry, fds: replyFds(entry, this.#o.target, name), cached: false, bytesRead: mine ? entry.stats.bytesRead : 0 };
    }
    throw budgetError(
      `'${name}' was evicted again before it could be sent: the server's budget (${formatBytes(this.#o.budget)}) is too small for what its clients ask for at once`,
    );
  }

  /**
   * The buffer for a reference (`hf://`, `https://`, `s3://`) the server fetches itself, with one reply's fds. The
   * reference is opened (for a network object: one request for its first byte) to learn its version; a cached entry
   * of that version is a hit, a download of it in progress is joined, else it is downloaded once, charged to the
   * sender's uid. A requester whose connection closes stops waiting; the download goes on for the others, and is
   * aborted when nobody waits any more.
   */
  async acquireRef(ref: string, name: string, from: Sender, gone: AbortSignal): Promise<Acquired> {
    const key = `ref:${ref}`;
    for (let attempt = 0; attempt < 3; attempt++) {
      let d = this.#downloads.get(key);
      if (!d) {
        const src = await this.#o.openRef(ref, AbortSignal.any([this.#o.signal, gone]));
        let handed = false;
        try {
          const identity = identityOf(src);
          const hit = this.#entries.get(key);
          if (hit && hit.identity === identity) {
            this.#entries.delete(key);
            this.#entries.set(key, hit);
            this.count.hits++;
            return { entry: hit, fds: replyFds(hit, this.#o.target, name), cached: true, bytesRead: 0 };
          }
          if (hit) {
            this.#o.log(`${name}: a new version since it was cached; fetching it again`);
            this.#drop(hit);
          }
          // Another request may have started it while this one asked for the version.
          d = this.#downloads.get(key);
          if (!d) {
            this.count.misses++;
            const abort = new AbortController();
            const started: Download = { waiters: 0, abort, promise: this.#download(src, key, identity, name, from, abort.signal) };
            handed = true;
            this.#downloads.set(key, started);
            void started.promise.then(
              () => this.#downloads.delete(key),
              () => this.#downloads.delete(key),
            );
            d = started;
            const entry = await this.#wait(d, gone);
            if (!entry.closed) return { entry, fds: replyFds(entry, this.#o.target, name), cached: false, bytesRead: entry.stats.bytesRead };
            continue;
          }
        } finally {
          if (!handed) await src.close();
        }
      }
      this.count.hits++;
      const entry = await this.#wait(d, gone);
      if (!entry.closed) return { entry, fds: replyFds(entry, this.#o.target, name), cached: false, bytesRead: 0 };
    }
    throw budgetError(
      `'${name}' was evicted again before it could be sent: the server's budget (${formatBytes(this.#o.budget)}) is too small for what its clients ask for at once`,
    );
  }

  /** Waits for a download as one of its waiters; a waiter whose connection goes stops waiting, the last one aborts it. */
  #wait(d: Download, gone: AbortSignal): Promise<Entry> {
    d.waiters++;
    return new Promise<Entry>((resolve, reject) => {
      let left = false;
      const leave = () => {
        if (left) return false;
        left = true;
        gone.removeEventListener('abort', onGone);
        return --d.waiters === 0;
      };
      const onGone = () => {
        if (leave()) d.abort.abort(new DmaloadError('ERR_SHARE_CLOSED', 'every client waiting for this download went away'));
        reject(new DmaloadError('ERR_SHARE_CLOSED', 'the client went away'));
      };
      if (gone.aborted) return onGone();
      gone.addEventListener('abort', onGone, { once: true });
      d.promise.then(
        (e) => {
          leave();
          resolve(e);
        },
        (e: unknown) => {
          leave();
          reject(e);
        },
      );
    });
  }

  /** Downloads an opened reference into a new buffer of the server's target: charged, cached, pinned by identity. */
  async #download(src: OpenedFile, key: string, identity: string, name: string, from: Sender, abort: AbortSignal): Promise<Entry> {
    const uid = from.uid;
    const charge = roundUp(src.size, PAGE_SIZE);
    try {
      await this.#admit(charge, uid, name);
    } catch (e) {
      await src.close();
      throw e;
    }
    const t0 = performance.now();
    let exported: Exported | undefined;
    try {
      const o = this.#o;
      const buf = await this.#watched(name, (w) => loadOpened(src, { ...this.#shape(), io: o.io, ...w }), abort);
      const stats = servedStats(buf);
      exported = await exportBuffer(buf, o.target);
      if (o.signal.aborted) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
      this.count.loads++;
      this.#reserve(uid, -charge);
      const holding = this.#ledger.charge(charge, uid, exported.fds[0]!, o.target === 'memfd');
      const entry: Entry = {
        version: { inode: key, size: buf.size, mtimeNs: 0n, ctimeNs: 0n },
        size: buf.size,
        fds: exported.fds,
        parts: exported.parts,
        stats: { ...stats, loadMs: msSince(t0) },
        source: -1,
        name,
        identity,
        holding,
        closed: false,
      };
      this.#entries.set(key, entry);
      return entry;
    } catch (e) {
      this.#reserve(uid, -charge);
      if (exported) for (const f of exported.fds) closeFd(f);
      throw e;
    }
  }

  /** Drops an entry from the cache and closes the server's fds of it; its charge lasts while clients hold it. */
  #drop(e: Entry, soon = true): void {
    if (this.#entries.get(e.version.inode) === e) this.#entries.delete(e.version.inode);
    if (e.closed) return;
    e.closed = true;
    // Off the event loop while serving: when no client holds it, this close frees the whole buffer.
    for (const fd of e.fds) (soon ? closeFdSoon : closeFd)(fd);
    if (e.source >= 0) this.#o.releaseSource(e.source);
    this.#ledger.dropped(e.holding);
  }

  #evict(e: Entry, why: string, soon = true): void {
    this.count.evictions++;
    this.#o.log(`evicted '${e.name}' (${formatBytes(e.size)}): ${why}`);
    this.#drop(e, soon);
  }

  /**
   * Reserves `charge` bytes for a load of `uid`: at once when they fit (after evicting what only the cache holds),
   * else once other loads end and clients let go (admission.ts: fair across users, bounded in time). A load that can
   * never fit fails at once.
   */
  async #admit(charge: number, uid: number, name: string): Promise<void> {
    const never = neverFits(charge, this.#o.budget, uid !== this.#o.ownUid ? this.#o.perUserBudget : undefined, name);
    if (never) throw budgetError(never);
    await this.#admission.admit(charge, uid, name);
  }

  /** Loads waiting for room in the budget. */
  get queued(): number {
    return this.#admission.queued;
  }

  /** Why `charge` more bytes of `uid` do not fit now (after the wait). */
  #noRoom(charge: number, uid: number, name: string): string {
    const { budget, perUserBudget } = this.#o;
    if (uid !== this.#o.ownUid && this.usedBy(uid) + charge > perUserBudget) {
      return `'${name}' needs ${formatBytes(charge)} and this user's buffers already hold ${formatBytes(this.usedBy(uid))} of the ${formatBytes(perUserBudget)} each user may use; close buffers you no longer need (they count until every process holding them lets go)`;
    }
    return `'${name}' needs ${formatBytes(charge)} and ${formatBytes(this.used)} of the server's budget of ${formatBytes(budget)} is held by buffers clients still hold and by loads in progress; try again once some are closed`;
  }

  /**
   * Evicts least recently used entries nobody else holds until `charge` more bytes fit, for everyone and for `uid`:
   * whether they fit.
   */
  #fits(charge: number, uid: number): boolean {
    const { budget, perUserBudget } = this.#o;
    const limited = uid !== this.#o.ownUid;
    this.#ledger.drain();
    const over = () => this.used + charge > budget || (limited && this.usedBy(uid) + charge > perUserBudget);
    // First what only the cache holds (dropping it frees its memory now), this user's own first when it is the
    // user's limit that is in the way; never what a client still holds, which would free nothing.
    for (const mineOnly of [true, false]) {
      for (const e of [...this.#entries.values()]) {
        if (!over()) return true;
        // others -1: unknown since an inotify overflow; dropping it frees its memory if nobody holds it, which the kernel
        // then confirms (a buffer that is held stays charged either way).
        if (e.holding.others > 0 || (mineOnly && e.holding.uid !== uid)) continue;
        this.#evict(e, 'least recently used, to make room');
      }
    }
    return !over();
  }

  #reserve(uid: number, n: number): void {
    this.#reserved += n;
    const m = (this.#reservedBy.get(uid) ?? 0) + n;
    if (m === 0) this.#reservedBy.delete(uid);
    else this.#reservedBy.set(uid, m);
    // A load's reservation ended (it failed, or became a charge the ledger counts): room for others, maybe.
    if (n < 0) this.#scheduleWake();
  }

  #wakeScheduled = false;

  /**
   * Admits waiting loads once the current turn is over: after the requests that waited for a load just finished have
   * taken their reply fds (which a wake run at once could evict from under them), and never from inside #fits.
   */
  #scheduleWake(): void {
    if (this.#wakeScheduled) return;
    this.#wakeScheduled = true;
    setImmediate(() => {
      this.#wakeScheduled = false;
      this.#admission.wake();
    });
  }

  async #load(fd: number, v: FileVersion, name: string, from: Sender): Promise<Entry> {
    const uid = from.uid;
    const charge = roundUp(v.size, PAGE_SIZE);
    await this.#admit(charge, uid, name);
    const t0 = performance.now();
    let exported: Exported | undefined;
    let source = -1;
    try {
      const r = await this.#read(fd, v, name, from);
      exported = r.exported;
      const loadMs = msSince(t0);
      const now = versionOf(await this.#o.inspect(fd, name, from));
      if (!sameVersion(now, v))
        throw new DmaloadError(
          'ERR_FILE_CHANGED',
          `'${name}' changed while the server read it (size, modification or change time); try again once nothing writes to it`,
          { path: name },
        );
      if (this.#o.signal.aborted) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
      source = native.dupFd(fd);
      if (source < 0) throw new DmaloadSystemError(source, 'fcntl', name);
      this.count.loads++;
      this.#reserve(uid, -charge);
      const holding = this.#ledger.charge(charge, uid, exported.fds[0]!, this.#o.target === 'memfd');
      const entry: Entry = {
        version: v,
        size: v.size,
        fds: exported.fds,
        parts: exported.parts,
        stats: { ...r.stats, loadMs },
        source,
        name,
        holding,
        closed: false,
      };
      this.#entries.set(v.inode, entry);
      return entry;
    } catch (e) {
      this.#reserve(uid, -charge);
      if (exported) for (const f of exported.fds) closeFd(f);
      throw e;
    }
  }

  /** Reads the file behind `fd` into a new buffer of the server's target and exports it. */
  /**
   * Runs a load with the stall bound: when its progress (bytes placed) stands still for `stallMs`, the load is
   * aborted and this rejects at once with ERR_SHARE_LOAD_STALLED, whether or not the load itself can stop (a read
   * stuck in the kernel cannot); whatever it makes once it does end is closed, never cached.
   */
  #watched(
    name: string,
    run: (o: { onProgress: (p: { bytes: number }) => void; signal: AbortSignal }) => Promise<LoadedBuffer>,
    signal?: AbortSignal,
  ): Promise<LoadedBuffer> {
    const ms = this.#o.stallMs;
    const stall = new AbortController();
    let last = performance.now();
    let bytes = -1;
    const onProgress = (p: { bytes: number }) => {
      if (p.bytes === bytes) return;
      bytes = p.bytes;
      last = performance.now();
    };
    const p = run({ onProgress, signal: AbortSignal.any([this.#o.signal, stall.signal, ...(signal ? [signal] : [])]) });
    return new Promise<LoadedBuffer>((resolve, reject) => {
      let gaveUp = false;
      const timer = setInterval(
        () => {
          if (performance.now() - last < ms) return;
          clearInterval(timer);
          gaveUp = true;
          this.count.stalled++;
          const e = new DmaloadError(
            'ERR_SHARE_LOAD_STALLED',
            `the server's load of '${name}' made no progress for ${ms} ms (at ${Math.max(bytes, 0)} bytes): its storage does not answer; the load is abandoned`,
            { path: name },
          );
          this.#o.log(e.message);
          stall.abort(e);
          reject(e);
          p.then(
            (b) => b.close(),
            () => {},
          );
        },
        Math.max(10, Math.min(1000, Math.floor(ms / 4))),
      );
      p.then(
        (b) => {
          if (gaveUp) return;
          clearInterval(timer);
          resolve(b);
        },
        (e: unknown) => {
          if (gaveUp) return;
          clearInterval(timer);
          reject(e);
        },
      );
    });
  }

  /** The buffers' shape: load()'s and allocate()'s options for the server's target and placement. */
  #shape() {
    const o = this.#o;
    return {
      target: o.target,
      ...(o.heap ? { heap: o.heap } : {}),
      ...(o.partSize ? { partSize: o.partSize } : {}),
      ...(o.hugePages !== undefined ? { hugePages: o.hugePages } : {}),
      ...(o.numaNode !== undefined ? { numaNode: o.numaNode } : {}),
    };
  }

  async #read(fd: number, v: FileVersion, name: string, from: Sender): Promise<{ exported: Exported; stats: Omit<Stats, 'loadMs'> }> {
    const o = this.#o;
    const shape = this.#shape();
    const size = v.size;
    let buf: LoadedBuffer;
    try {
      const src = await this.#reopen(fd, v, name, from);
      // No page-cache probes of a client's file (mincore maps it): direct I/O where it opened so, else buffered.
      buf = await this.#watched(name, (w) => loadOpened(src, { ...shape, io: src.direct ? 'direct' : 'buffered', ...w }));
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== 'EACCES' && code !== 'EPERM') throw e;
      // This server's user may not open the inode, but the client's fd may read it: read through that, buffered.
      o.log(`${name}: reading through the client's fd (the server may not open it itself)`);
      return this.#readThroughFd(fd, size, name, shape);
    }
    const stats = servedStats(buf);
    return { exported: await exportBuffer(buf, o.target), stats };
  }

  /**
   * Our own open file descriptions of a client's file (O_DIRECT there leaves the client's flags alone), opened and
   * closed on the server's bounded threads, and nothing else asked of its file system on the JS thread or libuv's
   * shared pool: the size and alignment come from the inspection, the version is checked again after the load.
   */
  async #reopen(fd: number, v: FileVersion, name: string, from: Sender): Promise<OpenedFile> {
    const o = this.#o;
    const buffered = await o.reopen(fd, name, from, false);
    let direct = -1;
    let reason: string | undefined;
    const dio = v.dio ?? { memAlign: 0, offsetAlign: 0 };
    if (o.io === 'buffered') reason = undefined;
    else if (dio.memAlign === 0 || dio.offsetAlign === 0) reason = 'the file system does not support direct I/O (statx reports no STATX_DIOALIGN)';
    else {
      try {
        direct = await o.reopen(fd, name, from, true);
      } catch (e) {
        if ((e as { code?: string }).code !== 'EINVAL') {
          o.release([buffered], from, name);
          throw e;
        }
        reason = 'the file system does not support direct I/O (open() with O_DIRECT fails with EINVAL)';
      }
    }
    if (direct < 0 && o.io === 'direct') {
      o.release([buffered], from, name);
      throw new DmaloadError('ERR_DIRECT_IO_UNSUPPORTED', `The file system of '${name}' does not support direct I/O; serve with io 'auto' or 'buffered'`, {
        path: name,
      });
    }
    return {
      path: name,
      fd: buffered,
      directFd: direct,
      direct: direct >= 0,
      align: direct >= 0 ? dio : { memAlign: 0, offsetAlign: 0 },
      rwFlags: 0,
      size: v.size,
      stat: undefined,
      fallbackReason: reason,
      checkedByCaller: true,
      // procfs answers this from the open file itself: nothing is asked of the client's file system.
      resolvedPath: linkOf(fd),
      close: async () => o.release(direct >= 0 ? [buffered, direct] : [buffered], from, name),
    };
  }

  async #readThroughFd(fd: number, size: number, name: string, shape: { target: ShareTarget }): Promise<{ exported: Exported; stats: Omit<Stats, 'loadMs'> }> {
    const stats = {
      io: 'buffered' as const,
      directBytes: 0,
      copiedBytes: size,
      ioReason: "the server's user may not open the file; read through the client's fd",
      engine: 'threads' as const,
      bytesRead: size,
    };
    if (size === 0 && shape.target === 'memfd') {
      const fdm = createMemfd(name, 0);
      const s = native.seals(fdm, SERVED_SEALS | C.F_SEAL_SEAL);
      if (s < 0) {
        closeFd(fdm);
        throw new DmaloadSystemError(s, 'fcntl', name);
      }
      return { exported: { fds: [fdm], parts: [{ offset: 0, size: 0 }] }, stats };
    }
    const buf = await allocate(Math.max(size, 1), shape);
    try {
      const n = await readInto(buf, { fd } as unknown as FileHandle, { io: 'buffered', signal: this.#o.signal });
      if (n !== size)
        throw new DmaloadError('ERR_FILE_CHANGED', `'${name}' changed size while the server read it (${size} bytes expected, ${n} read)`, { path: name });
    } catch (e) {
      buf.close();
      throw e;
    }
    return { exported: await exportBuffer(buf, shape.target), stats };
  }

  /** Drops every entry (the server is closing); clients keep what they mapped. */
  clear(): void {
    for (const e of [...this.#entries.values()]) this.#evict(e, 'the server is closing', false); // closed by the time close() returns
  }
}

/** What a reply tells of the server's load of a buffer. */
function servedStats(buf: LoadedBuffer): Omit<Stats, 'loadMs'> {
  const s = buf.stats;
  const v = s.verified;
  return {
    io: s.io,
    directBytes: s.directBytes,
    copiedBytes: s.copiedBytes,
    ...(s.ioReason ? { ioReason: s.ioReason } : {}),
    engine: s.engine,
    bytesRead: s.bytesRead,
    ...(v ? { verified: { sha256: v.sha256, source: v.source, impl: v.impl } } : {}),
  };
}

/**
 * The fds one reply carries, the client's own: a fresh read-only open file description of the memfd (so that no
 * client's lseek or fcntl shows in another's), or duplicates of the dma-bufs (which cannot be reopened).
 */
function replyFds(e: Entry, target: ShareTarget, name: string): number[] {
  const out: number[] = [];
  try {
    for (const fd of e.fds) {
      const r = target === 'memfd' ? native.reopenFd(fd, native.fdConstants.O_RDONLY) : native.dupFd(fd);
      if (r < 0) throw new DmaloadSystemError(r, target === 'memfd' ? 'open' : 'fcntl', name);
      out.push(r);
    }
    return out;
  } catch (err) {
    for (const fd of out) closeFd(fd);
    throw err;
  }
}
