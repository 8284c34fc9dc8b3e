/**
 * serve(): a local daemon that loads a file once and hands any number of processes fds of the same sealed buffer.
 *
 * - Clients send the O_RDONLY fd of a file they opened themselves: having it proves they may read the file, and the
 *   server never opens a client's path. The server reads through its own open file description of that fd
 *   (/proc/self/fd/N, so O_DIRECT never changes the client's), and where its user may not open that inode, through
 *   the client's fd itself, buffered.
 * - The cache key is (st_dev, st_ino, size, mtime in ns) of an fstat of the received fd: a changed file is a new key
 *   and is loaded afresh. The cache is an LRU under a byte budget; evicting drops only the server's own fds, so a
 *   client that holds a buffer keeps its pages alive.
 * - memfd buffers are sealed against writes and resizing before the first fd leaves (seal.ts). The server keeps fds,
 *   never mappings.
 * - The socket is created with mode 0600 unless asked otherwise (only the server's user can connect).
 *
 * Every request gets a reply or its connection is closed: malformed messages, missing or extra fds, fds of FIFOs,
 * directories, devices or O_PATH/O_WRONLY opens each get a coded error reply; peers that do not speak the protocol
 * get one and are disconnected. Nothing a client sends can make the server hold an fd or a mapping past its request.
 * @module
 */
import { constants as FS, fstatSync, lstatSync, unlinkSync } from 'node:fs';
import type { BigIntStats, Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';
import { allocate } from '../api/allocate.js';
import { load } from '../api/load.js';
import { budgetOption, enumOption, ioOption, modeOption, optionsObject, partSizeOption, pathOption, signalOption } from '../api/options.js';
import { readInto } from '../api/rw.js';
import type { LoadedBuffer } from '../core/buffer.js';
import { DmaloadError, DmaloadSystemError, errnoCode, invalidType } from '../core/errors.js';
import { formatBytes, memAvailable, msSince, roundUp } from '../core/util.js';
import { C, PAGE_SIZE, closeFd, native } from '../engine/binding.js';
import { openRegular, requireRegular } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import { createMemfd } from '../targets/memfd.js';
import { Channel, Watch, closeFds, keepAlive } from './channel.js';
import type { Incoming } from './channel.js';
import { MAX_FDS, MessageType, ProtocolError, VERSION, decode, encode } from './protocol.js';
import type { ErrorBody, LoadReplyBody, ServedLoadStats, ServerStatus } from './protocol.js';
import { SERVED_SEALS, SHARE_TARGETS, exportBuffer } from './seal.js';
import type { Exported, ShareTarget } from './seal.js';

const S = native.shareConstants;
const EAGAIN = 11;
const ECONNREFUSED = 111;
const EPIPE = 32;
const ECONNABORTED = 103;
/** Requests one connection may have in progress; past it, the server stops reading that connection until replies go out. */
export const MAX_INFLIGHT = 16;
/** Longest display name a request may give for its file (it is only used in messages and logs). */
const MAX_NAME = 4096;

export interface ServeOptions {
  /** Path of the Unix-domain socket to create (SOCK_SEQPACKET). A stale socket nobody listens on is replaced. */
  socket: string;
  /** Bytes the cache may hold; the least recently used files are dropped to make room. Default: half of MemAvailable at start. */
  budget?: number;
  /** The socket file's permissions. Default 0o600: only the server's user can connect. */
  mode?: number;
  /** Where buffers live: 'memfd' (default; sealed), 'udmabuf' or 'dma-heap' (dma-bufs, one per part; not sealable). */
  target?: ShareTarget;
  /** dma-heap target: the heap's name. Default 'system'. */
  heap?: string;
  /** Bytes per part (one dma-buf each). Default: the target's. */
  partSize?: number;
  /** How the server reads files: load()'s io option. Default 'auto'. */
  io?: IoMode;
  /** Files to load before serve() resolves (the operator's own paths: the server opens these itself). */
  preload?: readonly string[];
  /** Called with one line per event (connections, loads, hits, evictions, errors), for logs. */
  log?: (line: string) => void;
  /** Stops the preloading: serve() closes the server (its socket removed) and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** A running server. */
export interface ShareServer extends AsyncDisposable {
  readonly socket: string;
  readonly budget: number;
  readonly target: ShareTarget;
  /** Counters and the cache's size now. */
  status(): ServerStatus;
  /**
   * Stops accepting, disconnects every client, waits for loads in progress, drops the cache (clients keep what they
   * mapped) and removes the socket file. Idempotent.
   */
  close(): Promise<void>;
}

interface Entry {
  key: string;
  size: number;
  /** Bytes of memory charged to the budget. */
  charge: number;
  fds: number[];
  parts: Array<{ offset: number; size: number }>;
  stats: Omit<ServedLoadStats, 'bytesRead' | 'serverMs'> & { bytesRead: number };
  /** Replies carrying this entry's fds not yet taken by the kernel: an evicted entry closes its fds after the last. */
  pins: number;
  closed: boolean;
}

interface Acquired {
  entry: Entry;
  cached: boolean;
  /** Bytes read from storage for this request (0 on a hit, or when joining another request's load). */
  bytesRead: number;
}

/** (st_dev, st_ino, size, mtime in ns): the file as it is now. */
function keyOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
}

/** Shapes any error as the reply's body, with `internal` (the server's /proc path) replaced by the client's name. */
function errorBody(e: unknown, internal: string | undefined, name: string): ErrorBody {
  const err = e as { code?: unknown; message?: unknown; errno?: unknown; syscall?: unknown };
  const fix = (s: string) => (internal ? s.split(internal).join(name) : s);
  const body: ErrorBody = { code: typeof err?.code === 'string' ? err.code : 'ERR_SHARE_INTERNAL', message: fix(String(err?.message ?? e)) };
  if (typeof err?.errno === 'number') body.errno = err.errno;
  if (typeof err?.syscall === 'string') body.syscall = err.syscall;
  return body;
}

function shareError(code: string, message: string): DmaloadError {
  return new DmaloadError(code, message);
}

interface ServerOpts {
  io: IoMode;
  heap: string | undefined;
  partSize: number | undefined;
  log: ((line: string) => void) | undefined;
}

interface Conn {
  channel: Channel;
  inflight: number;
  peer: string;
}

class Server implements ShareServer {
  readonly socket: string;
  readonly budget: number;
  readonly target: ShareTarget;
  readonly #o: ServerOpts;
  readonly #listenFd: number;
  readonly #watch: Watch;
  readonly #ident: { dev: number; ino: number };
  readonly #conns = new Set<Conn>();
  /** Loaded files in LRU order (a hit moves its entry to the end). */
  readonly #cache = new Map<string, Entry>();
  readonly #loading = new Map<string, Promise<Entry>>();
  readonly #tasks = new Set<Promise<unknown>>();
  /** Charged bytes of entries whose fds are open (cached, or evicted while a reply still carries them). */
  #used = 0;
  /** Charged bytes of loads in progress. */
  #reserved = 0;
  #count = { hits: 0, misses: 0, loads: 0, evictions: 0, errors: 0 };
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Aborts loads in progress when the server closes, so that shutting down never waits for a long read. */
  readonly #abort = new AbortController();
  #release: () => void;

  constructor(socket: string, budget: number, target: ShareTarget, listenFd: number, o: ServerOpts) {
    this.socket = socket;
    this.budget = budget;
    this.target = target;
    this.#o = o;
    this.#listenFd = listenFd;
    const st = lstatSync(socket);
    this.#ident = { dev: st.dev, ino: st.ino };
    this.#release = keepAlive();
    try {
      this.#watch = new Watch(listenFd, () => this.#accept());
      this.#watch.arm(S.EPOLLIN);
    } catch (e) {
      this.#release();
      throw e;
    }
  }

  #log(line: string): void {
    this.#o.log?.(line);
  }

  status(): ServerStatus {
    return {
      pid: process.pid,
      version: VERSION,
      target: this.target,
      budget: this.budget,
      used: this.#used + this.#reserved,
      entries: this.#cache.size,
      ...this.#count,
      connections: this.#conns.size,
    };
  }

  #accept(): void {
    if (this.#closed) return;
    try {
      this.#acceptSome();
    } catch (e) {
      // Never expected (epoll_ctl out of memory): keep serving the connections there are, try again shortly.
      this.#log(`accept: ${(e as Error).message}`);
      setTimeout(() => !this.#closed && this.#watch.arm(S.EPOLLIN), 100).unref();
    }
  }

  #acceptSome(): void {
    for (let i = 0; i < 64; i++) {
      const fd = native.unixAccept(this.#listenFd);
      if (fd === -EAGAIN) break;
      if (fd === -ECONNABORTED) continue;
      if (fd < 0) {
        // Out of fds or memory: accepting again at once would spin; give the server a moment to free some.
        this.#log(`accept: ${new DmaloadSystemError(fd, 'accept', this.socket).message}`);
        setTimeout(() => !this.#closed && this.#watch.arm(S.EPOLLIN), 100).unref();
        return;
      }
      const cred = native.peerCred(fd);
      const conn: Conn = { channel: undefined as unknown as Channel, inflight: 0, peer: typeof cred === 'number' ? `fd ${fd}` : `pid ${cred[0]} uid ${cred[1]}` };
      try {
        conn.channel = new Channel(fd, {
          message: (m) => this.#onMessage(conn, m),
          closed: () => {
            this.#conns.delete(conn);
            this.#log(`${conn.peer}: disconnected`);
          },
        });
      } catch (e) {
        this.#log(`accept: ${(e as Error).message}`);
        continue;
      }
      this.#conns.add(conn);
      this.#log(`${conn.peer}: connected`);
    }
    this.#watch.arm(S.EPOLLIN);
  }

  #replyError(conn: Conn, id: number, body: ErrorBody): void {
    this.#count.errors++;
    this.#log(`${conn.peer}: request ${id}: ${body.code}: ${body.message}`);
    conn.channel.send(encode(MessageType.Error, id, body), []);
  }

  #onMessage(conn: Conn, m: Incoming): void {
    const t0 = performance.now();
    let msg;
    try {
      msg = decode(m.bytes, m.length);
    } catch (e) {
      closeFds(m.fds);
      const pe = e as ProtocolError;
      this.#replyError(conn, pe.id, { code: pe.code, message: pe.message });
      if (pe.fatal) conn.channel.close();
      return;
    }
    if (m.fdsTruncated) {
      closeFds(m.fds);
      return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_FDS', message: `a message may carry at most ${MAX_FDS} fds` });
    }
    switch (msg.type) {
      case MessageType.LoadRequest:
        return this.#onLoad(conn, msg.id, msg.body, m.fds, t0);
      case MessageType.StatusRequest:
        if (m.fds.length > 0) {
          closeFds(m.fds);
          return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_FDS', message: 'a status request carries no fds' });
        }
        return conn.channel.send(encode(MessageType.StatusReply, msg.id, this.status()), []);
      default:
        closeFds(m.fds);
        return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_PROTOCOL', message: `unknown request type ${msg.type}` });
    }
  }

  #onLoad(conn: Conn, id: number, body: Record<string, unknown>, fds: number[], t0: number): void {
    if (fds.length === 0) return this.#replyError(conn, id, { code: 'ERR_SHARE_NO_FD', message: "a load request must carry the file's fd (SCM_RIGHTS); open the file O_RDONLY and attach it" });
    if (fds.length > 1) {
      closeFds(fds);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_FDS', message: `a load request carries exactly one fd (got ${fds.length})` });
    }
    const fd = fds[0]!;
    const path = body.path;
    if (path !== undefined && (typeof path !== 'string' || path.length > MAX_NAME)) {
      closeFd(fd);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_PROTOCOL', message: `"path" must be a string of at most ${MAX_NAME} characters` });
    }
    // Only for messages and logs: control characters could forge log lines, so they are not kept.
    const name = path ? path.replace(/[\x00-\x1f\x7f]/g, '?') : `fd ${fd}`;
    if (++conn.inflight >= MAX_INFLIGHT) conn.channel.pause();
    const task = this.#serveLoad(conn, id, fd, name, t0).finally(() => {
      closeFd(fd);
      this.#tasks.delete(task);
      if (--conn.inflight < MAX_INFLIGHT) conn.channel.resume();
    });
    this.#tasks.add(task);
  }

  /** Answers one load request; never rejects (every failure becomes an error reply). */
  async #serveLoad(conn: Conn, id: number, fd: number, name: string, t0: number): Promise<void> {
    let got: Acquired;
    try {
      got = await this.#acquire(fd, name);
    } catch (e) {
      if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, `/proc/self/fd/${fd}`, name));
      return;
    }
    const { entry, cached, bytesRead } = got;
    try {
      const reply: LoadReplyBody = { size: entry.size, target: this.target, parts: entry.parts, cached, stats: { ...entry.stats, bytesRead, serverMs: msSince(t0) } };
      this.#log(`${conn.peer}: ${name}: ${cached ? 'hit' : bytesRead > 0 ? 'loaded' : 'joined a load'} (${formatBytes(entry.size)}, ${reply.stats.serverMs} ms)`);
      conn.channel.send(encode(MessageType.LoadReply, id, reply), entry.fds, (errno) => {
        this.#unpin(entry);
        if (errno < 0 && errno !== -EPIPE && !conn.channel.closed) this.#replyError(conn, id, errorBody(new DmaloadSystemError(errno, 'sendmsg', name), undefined, name));
      });
    } catch (e) {
      this.#unpin(entry);
      if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, undefined, name));
    }
  }

  /** The entry for the file behind `fd`, pinned for one reply: from the cache, a load in progress, or a new load. */
  async #acquire(fd: number, name: string): Promise<Acquired> {
    if (this.#closed) throw shareError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
    const flags = native.fdFlags(fd);
    if (flags < 0) throw new DmaloadSystemError(flags, 'fcntl', name);
    if (flags & S.O_PATH || (flags & S.O_ACCMODE) === FS.O_WRONLY) {
      throw shareError('ERR_SHARE_FD_ACCESS', `the fd sent for '${name}' is not open for reading (O_PATH or O_WRONLY), so it proves nothing; open the file O_RDONLY and send that`);
    }
    const st = fstatSync(fd, { bigint: true });
    requireRegular(st as unknown as Stats, name, 'fstat');
    const key = keyOf(st);
    // An entry evicted and closed between its load and our turn is simply looked up again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const hit = this.#cache.get(key);
      if (hit) {
        this.#cache.delete(key);
        this.#cache.set(key, hit); // most recently used
        this.#count.hits++;
        hit.pins++;
        return { entry: hit, cached: true, bytesRead: 0 };
      }
      let p = this.#loading.get(key);
      const mine = p === undefined;
      if (!p) {
        this.#count.misses++;
        p = this.#load(key, fd, st, name);
        const q = p;
        this.#loading.set(key, q);
        void q.then(
          () => this.#loading.delete(key),
          () => this.#loading.delete(key),
        );
      } else {
        this.#count.hits++;
      }
      const entry = await p;
      if (!entry.closed) {
        entry.pins++;
        return { entry, cached: false, bytesRead: mine ? entry.stats.bytesRead : 0 };
      }
    }
    throw shareError('ERR_MEMORY_BUDGET', `'${name}' was evicted again before it could be sent: the server's budget (${formatBytes(this.budget)}) is too small for what its clients ask for at once`);
  }

  #unpin(e: Entry): void {
    if (--e.pins === 0 && this.#cache.get(e.key) !== e) this.#closeEntry(e);
  }

  #closeEntry(e: Entry): void {
    if (e.closed) return;
    e.closed = true;
    closeFds(e.fds);
    this.#used -= e.charge;
  }

  #evict(e: Entry): void {
    this.#cache.delete(e.key);
    this.#count.evictions++;
    this.#log(`evicted ${e.key} (${formatBytes(e.size)})`);
    if (e.pins === 0) this.#closeEntry(e);
  }

  /** Evicts least recently used entries until `charge` more bytes fit; ERR_MEMORY_BUDGET when they cannot. */
  #makeRoom(charge: number, name: string): void {
    if (charge > this.budget) {
      throw shareError('ERR_MEMORY_BUDGET', `'${name}' needs ${formatBytes(charge)} but the server's budget is ${formatBytes(this.budget)}; start the server with a larger budget (--budget)`);
    }
    while (this.#used + this.#reserved + charge > this.budget) {
      const lru = this.#cache.values().next().value as Entry | undefined;
      if (!lru) {
        throw shareError('ERR_MEMORY_BUDGET', `'${name}' needs ${formatBytes(charge)} and the server's budget of ${formatBytes(this.budget)} is held by loads in progress and replies being sent; try again`);
      }
      this.#evict(lru);
    }
  }

  async #load(key: string, fd: number, st: BigIntStats, name: string): Promise<Entry> {
    const size = Number(st.size);
    const charge = roundUp(size, PAGE_SIZE);
    this.#makeRoom(charge, name);
    this.#reserved += charge;
    const t0 = performance.now();
    try {
      const { exported, stats } = await this.#read(fd, size, name);
      const loadMs = msSince(t0);
      try {
        const now = keyOf(fstatSync(fd, { bigint: true }));
        if (now !== key) throw shareError('ERR_FILE_CHANGED', `'${name}' changed while the server read it (size or modification time); try again once nothing writes to it`);
        if (this.#closed) throw shareError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
      } catch (e) {
        closeFds(exported.fds);
        throw e;
      }
      this.#count.loads++;
      const entry: Entry = { key, size, charge, fds: exported.fds, parts: exported.parts, stats: { ...stats, loadMs }, pins: 0, closed: false };
      this.#used += charge;
      this.#cache.set(key, entry);
      return entry;
    } finally {
      this.#reserved -= charge;
    }
  }

  /** Reads the file behind `fd` into a new buffer of the server's target and exports it. */
  async #read(fd: number, size: number, name: string): Promise<{ exported: Exported; stats: Omit<Entry['stats'], 'loadMs'> }> {
    const opts = { target: this.target, io: this.#o.io, signal: this.#abort.signal, ...(this.#o.heap ? { heap: this.#o.heap } : {}), ...(this.#o.partSize ? { partSize: this.#o.partSize } : {}) };
    let buf: LoadedBuffer;
    try {
      // Our own open file description of the client's file: O_DIRECT there leaves the client's flags alone.
      buf = await load(`/proc/self/fd/${fd}`, opts);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code !== 'EACCES' && code !== 'EPERM') throw e;
      // This server's user may not open the inode, but the client's fd may read it: read through that, buffered.
      this.#log(`${name}: reading through the client's fd (the server may not open it itself)`);
      return this.#readThroughFd(fd, size, name);
    }
    const s = buf.stats;
    const stats = { io: s.io, directBytes: s.directBytes, copiedBytes: s.copiedBytes, ...(s.ioReason ? { ioReason: s.ioReason } : {}), engine: s.engine, bytesRead: s.bytesRead };
    return { exported: exportBuffer(buf, this.target), stats };
  }

  async #readThroughFd(fd: number, size: number, name: string): Promise<{ exported: Exported; stats: Omit<Entry['stats'], 'loadMs'> }> {
    const stats = { io: 'buffered' as const, directBytes: 0, copiedBytes: size, ioReason: "the server's user may not open the file; read through the client's fd", engine: 'threads' as const, bytesRead: size };
    if (size === 0 && this.target === 'memfd') {
      const fdm = createMemfd(name, 0);
      const s = native.seals(fdm, SERVED_SEALS | C.F_SEAL_SEAL);
      if (s < 0) {
        closeFd(fdm);
        throw new DmaloadSystemError(s, 'fcntl', name);
      }
      return { exported: { fds: [fdm], parts: [{ offset: 0, size: 0 }] }, stats };
    }
    const buf = await allocate(Math.max(size, 1), { target: this.target, ...(this.#o.heap ? { heap: this.#o.heap } : {}), ...(this.#o.partSize ? { partSize: this.#o.partSize } : {}) });
    try {
      const n = await readInto(buf, { fd } as unknown as FileHandle, { io: 'buffered', signal: this.#abort.signal });
      if (n !== size) throw shareError('ERR_FILE_CHANGED', `'${name}' changed size while the server read it (${size} bytes expected, ${n} read)`);
    } catch (e) {
      buf.close();
      throw e;
    }
    return { exported: exportBuffer(buf, this.target), stats };
  }

  async preload(path: string): Promise<void> {
    const h = await openRegular(path, FS.O_RDONLY);
    try {
      const { entry, cached } = await this.#acquire(h.fd, path);
      this.#unpin(entry);
      this.#log(`preloaded ${path} (${formatBytes(entry.size)}${cached ? ', already cached' : ''})`);
    } finally {
      await h.close();
    }
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#abort.abort(shareError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down'));
      this.#watch.close();
      closeFd(this.#listenFd);
      // Only our own socket file: another server may have replaced it since.
      try {
        const st = lstatSync(this.socket);
        if (st.isSocket() && st.dev === this.#ident.dev && st.ino === this.#ident.ino) unlinkSync(this.socket);
      } catch {
        /* already gone */
      }
      for (const c of [...this.#conns]) c.channel.close();
      await Promise.allSettled([...this.#tasks]);
      for (const e of [...this.#cache.values()]) this.#evict(e);
      this.#release();
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Creates the listening socket; a stale socket file (nobody accepts on it) is replaced, anything else refused. */
function listen(socket: string, mode: number): number {
  for (let attempt = 0; ; attempt++) {
    const fd = native.unixListen(socket, mode, 128);
    if (fd >= 0) return fd;
    if (fd !== -98 /* EADDRINUSE */ || attempt > 0) {
      throw new DmaloadSystemError(fd, 'bind', socket, fd === -36 ? 'a Unix socket path holds at most 107 bytes' : undefined);
    }
    let st: Stats;
    try {
      st = lstatSync(socket);
    } catch {
      continue; // gone meanwhile
    }
    if (!st.isSocket()) throw new DmaloadSystemError(fd, 'bind', socket, 'the path exists and is not a socket; remove it or choose another path');
    const probe = native.unixConnect(socket);
    if (probe >= 0 || probe === -EAGAIN) {
      if (probe >= 0) closeFd(probe);
      throw new DmaloadSystemError(fd, 'bind', socket, 'a server is already listening there');
    }
    // Only ECONNREFUSED says nobody listens. Any other failure (EACCES: another user's live server) proves nothing,
    // and unlinking would hand that server's path, and its clients' file descriptors, to this one.
    if (probe !== -ECONNREFUSED) {
      throw new DmaloadSystemError(fd, 'bind', socket, `a socket is there and connecting to it failed (${errnoCode(probe)}), so it may be in use; remove it if you know it is stale`);
    }
    unlinkSync(socket); // a socket left behind by a server that died
  }
}

/**
 * Starts a share server on a Unix-domain socket and resolves once it listens and every `preload` file is cached.
 *
 * Clients (connect(), the Python client in clients/python, anything speaking docs/protocol.md) get fds of one sealed
 * buffer per file, however many they are. Error codes: the socket's system errors (EADDRINUSE when a server already
 * listens there), load()'s codes for preload files, ERR_INVALID_ARG_* for bad options.
 */
export async function serve(options: ServeOptions): Promise<ShareServer> {
  const o = optionsObject(options);
  const socket = resolve(pathOption('socket', o.socket));
  const budget = o.budget === undefined ? Math.floor(memAvailable() / 2) : budgetOption(o.budget, 'budget');
  const mode = modeOption(o.mode) ?? 0o600;
  const target = enumOption<ShareTarget>('target', o.target, SHARE_TARGETS, 'memfd');
  const io = ioOption(o.io);
  const partSize = partSizeOption(o.partSize);
  if (o.heap !== undefined && (typeof o.heap !== 'string' || o.heap === '' || o.heap.includes('/'))) throw invalidType('heap', 'a heap name such as "system"', o.heap);
  if (o.log !== undefined && typeof o.log !== 'function') throw invalidType('log', 'a function', o.log);
  const preload = o.preload ?? [];
  if (!Array.isArray(preload)) throw invalidType('preload', 'an array of paths', preload);
  preload.forEach((p, i) => pathOption(`preload[${i}]`, p));
  const signal = signalOption(o.signal);
  signal?.throwIfAborted();

  const fd = listen(socket, mode);
  let server: Server;
  try {
    server = new Server(socket, budget, target, fd, { io, heap: o.heap, partSize, log: o.log });
  } catch (e) {
    closeFd(fd);
    try {
      unlinkSync(socket);
    } catch {
      /* not there */
    }
    throw e;
  }
  // close() stops a preload in flight: it aborts the server's reads.
  const onAbort = () => void server.close();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (const p of preload) {
      signal?.throwIfAborted();
      await server.preload(p);
    }
    signal?.throwIfAborted();
  } catch (e) {
    await server.close();
    throw signal?.aborted ? signal.reason : e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  return server;
}
