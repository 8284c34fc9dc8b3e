/**
 * connect(): a client of `dmaload serve`. `load()` and `loadModel()` return the same LoadedBuffer and model objects as
 * the local calls, but their memory is the server's buffer mapped from the fds it sent (never writable through them):
 * zero-copy, one copy
 * of the file for every process on the machine.
 *
 * The client opens each file itself and sends that O_RDONLY fd with the request (which proves it may read it); the
 * server answers with fds of a buffer sealed against every change (memfd), or dma-bufs (udmabuf, dma-heap).
 * @module
 */
import { constants as FS } from 'node:fs';
import { resolve } from 'node:path';
import { modelFromFiles } from '../api/model.js';
import { rankSpec } from '../pipeline/ranks.js';
import type { LoadModelOptions } from '../api/model.js';
import type { LoadedModel } from '../api/tensors.js';
import { integerOption, optionNames, optionsObject, pathOption, signalOption } from '../api/options.js';
import type { LoadedBuffer } from '../api/buffer.js';
import { AbortError, DmaloadError, DmaloadSystemError, asSystemError } from '../core/errors.js';
import { printable } from '../core/util.js';
import { cpuMsSince, msSince } from '../core/util.js';
import { C, closeFd, native } from '../engine/binding.js';
import { openRegular } from '../pipeline/source.js';
import { checkScheme, isReference } from '../pipeline/sources/resolve.js';
import { redact } from '../pipeline/sources/http.js';
import { inspectWith } from '../api/inspect.js';
import type { Opener } from '../api/inspect.js';
import type { RankSpec } from '../pipeline/ranks.js';
import { Channel, closeFds, keepAlive } from './channel.js';
import type { CloseReason, Incoming } from './channel.js';
import { MessageType, decode, encode } from './protocol.js';
import type { ErrorBody, LoadReplyBody, Message, ServerStatus } from './protocol.js';
import { loadReplyStats, serverError } from './reply.js';
import { mapReceived } from './seal.js';

const EAGAIN = C.EAGAIN;

export interface ConnectOptions {
  /** Milliseconds to keep trying while the server's queue of new connections is full. Default 5000. */
  timeout?: number;
  /**
   * A uid trusted to run the server besides root and this process's own: no fd is sent to a server run by anyone
   * else (ERR_SHARE_UNTRUSTED_SERVER), since whoever listens on the socket gets them.
   */
  serverUid?: number;
}

const CONNECT_OPTIONS = optionNames<ConnectOptions>()(['timeout', 'serverUid']);
const SHARE_LOAD_OPTIONS = optionNames<ShareLoadOptions>()(['signal']);
const SHARE_LOAD_MODEL_OPTIONS = optionNames<ShareLoadModelOptions>()(['signal', 'tensors', 'rank', 'worldSize', 'split']);

export interface ShareLoadOptions {
  /** Aborting rejects with an AbortError at once; a reply that arrives later is dropped (its fds closed). */
  signal?: AbortSignal;
}

export interface ShareLoadModelOptions extends ShareLoadOptions {
  /**
   * The tensors the model exposes, by name or predicate (as in loadModel()). Through a server every file holding one
   * of them is shared whole: the server caches files, not ranges.
   */
  tensors?: LoadModelOptions['tensors'];
  /** This process's rank, as in loadModel(): its share of the tensors (whole, or row slices with `split: 'rows'`). */
  rank?: number;
  /** How many ranks share the model; required with `rank`. */
  worldSize?: number;
  /** 'tensors' (default) or 'rows', as in loadModel(). Every file holding part of the rank's share is shared whole. */
  split?: LoadModelOptions['split'];
}

/** A connection to a `dmaload serve` server. */
export interface ShareClient extends AsyncDisposable {
  /** The server's socket (absolute). */
  readonly socket: string;
  /** True after close(), or once the server went away. */
  readonly closed: boolean;
  /**
   * The whole file at `path` as a LoadedBuffer mapped read-only from the server's buffer (`stats.served` says whether
   * it was cached there). A memfd is mapped copy-on-write (a write into `bytes` stays private to this process); a
   * dma-buf is mapped read-only (a write faults). close() unmaps it and closes its fds; the server's copy stays cached.
   * @throws DmaloadError ERR_SHARE_CLOSED (this client was closed), ERR_SHARE_SERVER_GONE (the connection was lost),
   *   the server's own codes (ERR_MEMORY_BUDGET, ERR_NOT_REGULAR_FILE, ERR_FILE_CHANGED, …) and the system errors of
   *   opening `path` here (ENOENT, EACCES, EISDIR).
   */
  load(path: string, options?: ShareLoadOptions): Promise<LoadedBuffer>;
  /**
   * A safetensors or GGUF model as loadModel() returns it, each file shared whole through the server. The header is
   * read here, from the client's own open of the file.
   */
  loadModel(path: string, options?: ShareLoadModelOptions): Promise<LoadedModel>;
  /** The server's counters. */
  status(options?: ShareLoadOptions): Promise<ServerStatus>;
  /** Closes the connection; requests in progress reject with ERR_SHARE_CLOSED. Buffers already loaded stay valid. */
  close(): void;
}

interface Pending {
  resolve(m: { message: Message; fds: number[] }): void;
  reject(e: unknown): void;
  /** A LoadReply whose LoadReplyMore messages are still coming: what came so far. */
  partial?: { message: Message; fds: number[]; next: number; more: number };
}

class Client implements ShareClient {
  readonly socket: string;
  readonly #serverUid: number | undefined;
  #channel: Channel;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #state: 'open' | 'closed' | 'gone' = 'open';
  #gone = '';
  /** The server closed the connection because it was idle: the next request connects again. */
  #idleClosed = false;
  #release: (() => void) | undefined;

  constructor(socket: string, fd: number, serverUid: number | undefined) {
    this.socket = socket;
    this.#serverUid = serverUid;
    this.#channel = this.#open(fd);
  }

  #open(fd: number): Channel {
    return new Channel(fd, { message: (m) => this.#onMessage(m), closed: (r) => this.#onClosed(r) });
  }

  get closed(): boolean {
    return this.#state !== 'open';
  }

  #unusable(path?: string): DmaloadError {
    const opts = path === undefined ? {} : { path };
    if (this.#state === 'closed') return new DmaloadError('ERR_SHARE_CLOSED', `this dmaload share client (${this.socket}) was closed; connect() again`, opts);
    return new DmaloadError('ERR_SHARE_SERVER_GONE', `the dmaload server at '${this.socket}' went away (${this.#gone}); connect() again once it runs`, opts);
  }

  #failAll(e: (p: Pending) => unknown): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    this.#idle();
    for (const p of all) p.reject(e(p));
  }

  #idle(): void {
    if (this.#pending.size === 0 && this.#release) {
      this.#release();
      this.#release = undefined;
    }
  }

  #onClosed(reason: CloseReason): void {
    if (this.#state === 'open') {
      this.#state = 'gone';
      this.#gone =
        reason === 'eof' || reason === 'hangup'
          ? 'it closed the connection'
          : reason === 'local'
            ? 'the connection was closed'
            : new DmaloadSystemError(reason.errno, reason.syscall).message;
    }
    this.#failAll(() => this.#unusable());
  }

  /** A server that breaks the protocol cannot be trusted with the rest of the conversation. */
  #broken(why: string): void {
    this.#gone = `it sent a malformed message: ${why}`;
    this.#state = 'gone';
    this.#channel.close();
  }

  #onMessage(m: Incoming): void {
    let message: Message;
    try {
      message = decode(m.bytes, m.length);
    } catch (e) {
      closeFds(m.fds);
      return this.#broken((e as Error).message);
    }
    if (message.id === 0 && message.type === MessageType.Error) {
      // About the connection itself: refused (limits) or about to be closed (idle, replies left unread).
      closeFds(m.fds);
      const b = message.body as Partial<ErrorBody>;
      const code = typeof b.code === 'string' ? printable(b.code) : 'ERR_SHARE_REPLY';
      this.#gone = `${code}: ${typeof b.message === 'string' ? printable(b.message) : 'no reason given'}`;
      this.#idleClosed = code === 'ERR_SHARE_IDLE' && this.#pending.size === 0;
      this.#state = 'gone';
      this.#channel.close();
      return;
    }
    const p = this.#pending.get(message.id);
    if (!p) return closeFds(m.fds); // an aborted request's late reply
    const fail = (why: string) => {
      this.#pending.delete(message.id);
      this.#idle();
      closeFds(m.fds);
      if (p.partial) closeFds(p.partial.fds);
      p.reject(new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${this.socket}' sent a malformed reply: ${why}`, { path: this.socket }));
    };
    if (m.fdsTruncated) return fail('more fds than a message may carry');
    if (p.partial) {
      const q = p.partial;
      if (message.type !== MessageType.LoadReplyMore || message.body.index !== q.next) return fail(`expected part message ${q.next} of ${q.more}`);
      q.fds.push(...m.fds);
      if (q.next++ < q.more) return;
      this.#pending.delete(message.id);
      this.#idle();
      return p.resolve({ message: q.message, fds: q.fds });
    }
    if (message.type === MessageType.LoadReplyMore) return fail('a LoadReplyMore without its LoadReply');
    const more = message.type === MessageType.LoadReply ? message.body.more : undefined;
    if (more !== undefined && more !== 0) {
      if (!Number.isSafeInteger(more) || (more as number) < 0 || (more as number) > 1 << 16) return fail('"more" is not a count of messages');
      p.partial = { message, fds: [...m.fds], next: 1, more: more as number };
      return;
    }
    this.#pending.delete(message.id);
    this.#idle();
    p.resolve({ message, fds: m.fds });
  }

  /** Throws unless requests can be sent; connects again (checking the server as connect() did) after an idle close. */
  #ready(path?: string): void {
    if (this.#state === 'gone' && this.#idleClosed) {
      this.#channel = this.#open(connectFd(this.socket, this.#serverUid));
      this.#state = 'open';
      this.#idleClosed = false;
    }
    if (this.#state !== 'open') throw this.#unusable(path);
  }

  #request(
    type: MessageType,
    body: object,
    fds: number[],
    path: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ message: Message; fds: number[] }> {
    try {
      this.#ready(path);
    } catch (e) {
      return Promise.reject(e);
    }
    if (signal?.aborted) return Promise.reject(new AbortError(undefined, { cause: signal.reason }));
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    const bytes = encode(type, id, body);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const p = this.#pending.get(id);
        if (p && this.#pending.delete(id)) {
          if (p.partial) closeFds(p.partial.fds);
          this.#idle();
          reject(new AbortError(undefined, { cause: signal!.reason }));
        }
      };
      const done = () => signal?.removeEventListener('abort', onAbort);
      this.#pending.set(id, {
        resolve: (r) => {
          done();
          resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      this.#release ??= keepAlive();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#channel.send(bytes, fds, (errno) => {
        if (errno === 0 || this.#state !== 'open') return;
        const p = this.#pending.get(id);
        if (!p) return;
        this.#pending.delete(id);
        this.#idle();
        p.reject(new DmaloadSystemError(errno, 'sendmsg', this.socket));
      });
    });
  }

  async load(path: string, options: ShareLoadOptions = {}): Promise<LoadedBuffer> {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    pathOption('path', path);
    const signal = signalOption(optionsObject(options, SHARE_LOAD_OPTIONS, 'client.load()').signal);
    this.#ready(path);
    let r: { message: Message; fds: number[] };
    if (isReference(path)) {
      // The server fetches it (if its operator allowed that reference): nothing is opened or asked here.
      checkScheme(path);
      r = await this.#request(MessageType.LoadRequest, { ref: path }, [], path, signal);
      path = /^https?:/i.test(path) ? redact(path) : path;
    } else {
      const file = resolve(path);
      // Refused before open() could block on a FIFO, as every local call refuses it.
      const h = await openRegular(path, FS.O_RDONLY).catch((e: unknown) => Promise.reject(asSystemError(e, path)));
      try {
        r = await this.#request(MessageType.LoadRequest, { path: file }, [h.fd], path, signal);
      } finally {
        await h.close();
      }
    }
    if (r.message.type === MessageType.Error) {
      closeFds(r.fds);
      throw serverError(r.message.body, path, this.socket);
    }
    if (r.message.type !== MessageType.LoadReply) {
      closeFds(r.fds);
      throw new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${this.socket}' answered a load with message type ${r.message.type}`, { path });
    }
    const body = r.message.body as unknown as LoadReplyBody;
    const { size, stats } = loadReplyStats(body, this.socket);
    const tMap = performance.now();
    const buf = mapReceived(path, this.socket, body, r.fds, stats);
    // Filled in once mapped, so that they describe this call.
    stats.allocMs = msSince(tMap);
    stats.ms = msSince(t0);
    stats.cpuMs = cpuMsSince(c0);
    stats.bytesPerSec = stats.ms > 0 ? Math.round(size / (stats.ms / 1000)) : 0;
    stats.parts = buf.parts.map((p) => ({ offset: p.offset, size: p.size, allocMs: 0, ioMs: 0 }));
    return buf;
  }

  async loadModel(path: string, options: ShareLoadModelOptions = {}): Promise<LoadedModel> {
    pathOption('path', path);
    const o = optionsObject(options, SHARE_LOAD_MODEL_OPTIONS, 'client.loadModel()');
    const signal = signalOption(o.signal);
    this.#ready(path);
    const partition = rankSpec({ rank: o.rank, worldSize: o.worldSize, split: o.split });
    const opts = signal ? { signal } : {};
    if (!isReference(path)) return modelFromFiles(path, o.tensors, (file) => this.load(file, opts), partition);
    return this.#loadRemoteModel(path, o.tensors, partition, opts);
  }

  /**
   * loadModel() of a reference: its headers are read from the buffers the server fetched (this process asks the
   * network nothing), and those buffers are the model's (each file loaded once).
   */
  async #loadRemoteModel(
    ref: string,
    tensors: ShareLoadModelOptions['tensors'],
    partition: RankSpec | undefined,
    opts: ShareLoadOptions,
  ): Promise<LoadedModel> {
    checkScheme(ref);
    if (!/\.(safetensors|gguf|json)$/i.test(new URL(ref).pathname)) {
      throw new DmaloadError(
        'ERR_SHARE_PROTOCOL',
        `'${redact(ref)}': through a server, name the model's file (a .safetensors, .gguf or .safetensors.index.json); the server fetches files, it does not list folders or repositories`,
        { path: redact(ref) },
      );
    }
    const held = new Map<string, LoadedBuffer>();
    const fetch = async (file: string) => {
      const b = held.get(file) ?? (await this.load(file, opts));
      held.set(file, b);
      return b;
    };
    const open: Opener = async (file, fn) => {
      const b = await fetch(file);
      const reader = {
        read: async (buf: Buffer, offset: number, length: number, position: number) => {
          const n = Math.max(0, Math.min(length, b.size - position));
          if (n > 0) buf.set(b.view(position, n), offset);
          return { bytesRead: n };
        },
      };
      return fn(reader, b.size);
    };
    try {
      const model = await modelFromFiles(
        ref,
        tensors,
        async (file) => {
          const b = await fetch(file);
          held.delete(file);
          return b;
        },
        partition,
        (p) => inspectWith(p, open),
      );
      return model;
    } finally {
      // What was read only for its header (an index, a shard none of the selected tensors lives in).
      for (const b of held.values()) b.close();
    }
  }

  async status(options: ShareLoadOptions = {}): Promise<ServerStatus> {
    const signal = signalOption(optionsObject(options, SHARE_LOAD_OPTIONS, 'client.status()').signal);
    const r = await this.#request(MessageType.StatusRequest, {}, [], undefined, signal);
    closeFds(r.fds);
    if (r.message.type === MessageType.Error) throw serverError(r.message.body, this.socket, this.socket);
    if (r.message.type !== MessageType.StatusReply)
      throw new DmaloadError('ERR_SHARE_REPLY', `the dmaload server at '${this.socket}' answered a status request with message type ${r.message.type}`, {
        path: this.socket,
      });
    return r.message.body as unknown as ServerStatus;
  }

  close(): void {
    if (this.#state === 'open') this.#state = 'closed';
    this.#failAll(() => this.#unusable());
    this.#channel.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/**
 * Checks who listens on a connected socket (SO_PEERCRED, the server's credentials when it called listen()) before a
 * single fd is sent: root, this process's own user, or `serverUid`. Returns `fd`, or closes it and throws.
 */
function checkServer(fd: number, socket: string, serverUid: number | undefined): number {
  const cred = native.peerCred(fd);
  const uid = typeof cred === 'number' ? undefined : cred[1];
  const me = process.geteuid?.() ?? 0;
  if (uid === 0 || uid === me || (uid !== undefined && uid === serverUid)) return fd;
  closeFd(fd);
  if (typeof cred === 'number') throw new DmaloadSystemError(cred, 'getsockopt', socket, 'SO_PEERCRED: who runs the server cannot be checked');
  throw new DmaloadError(
    'ERR_SHARE_UNTRUSTED_SERVER',
    `the server at '${socket}' runs as uid ${uid}, neither root nor this user (uid ${me}): it would receive the fds of the files this process loads. Use a server run by root or by you (sockets belong in a folder only its owner can write, such as /run/dmaload/), or pass { serverUid: ${uid} } to connect() if you trust that user`,
    { path: socket },
  );
}

/** One connection attempt, checked (no waiting on a full backlog): for reconnecting after an idle close. */
function connectFd(socket: string, serverUid: number | undefined): number {
  const fd = native.unixConnect(socket);
  if (fd < 0) throw new DmaloadSystemError(fd, 'connect', socket);
  return checkServer(fd, socket, serverUid);
}

/**
 * Connects to a `dmaload serve` server listening at `socket`.
 * @throws DmaloadSystemError ENOENT or ECONNREFUSED (no server there), EACCES (the socket's mode keeps this user
 *   out), EAGAIN (its queue of new connections stayed full for `timeout` ms); DmaloadError ERR_SHARE_UNTRUSTED_SERVER
 *   (the server runs as another user than root, this one or `serverUid`)
 */
export async function connect(socket: string, options: ConnectOptions = {}): Promise<ShareClient> {
  const path = resolve(pathOption('socket', socket));
  const o = optionsObject(options, CONNECT_OPTIONS, 'connect()');
  const timeout = integerOption('timeout', o.timeout, 0, 2 ** 31 - 1) ?? 5000;
  const serverUid = integerOption('serverUid', o.serverUid, 0, 2 ** 32 - 1);
  const deadline = performance.now() + timeout;
  for (;;) {
    const fd = native.unixConnect(path);
    if (fd >= 0) return new Client(path, checkServer(fd, path, serverUid), serverUid);
    if (fd === -EAGAIN && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    const hint =
      fd === -C.ENOENT || fd === -C.ECONNREFUSED
        ? 'is `dmaload serve` running there?'
        : fd === -C.EACCES
          ? "the socket's mode keeps this user out (dmaload serve --mode)"
          : fd === -EAGAIN
            ? `the server accepted no new connection for ${timeout} ms`
            : undefined;
    throw new DmaloadSystemError(fd, 'connect', path, hint);
  }
}
