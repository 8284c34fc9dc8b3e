/**
 * serve(): a local daemon that loads a file once and hands any number of processes fds of the same sealed buffer —
 * safely among users who distrust each other (docs/serve.md has the security model).
 *
 * - Clients send the O_RDONLY fd of a file they opened themselves: having it proves they may read the file, and the
 *   server never opens a client's path. The cache (cache.ts) pins what it loaded and matches requests by an identity
 *   no client can forge; its budget counts every buffer until nobody holds it (ledger.ts).
 * - A received fd is never touched on the JS thread: FUSE is refused from procfs alone, statx and close run on native
 *   threads with a time bound (fds.ts).
 * - Connections are limited in all and per user; one that sends nothing past the idle timeout, or leaves replies
 *   unread past the reply timeout, is closed and what its replies held is released.
 * - Every reply is the client's own read-only file description of the memfd (sealed against every change before the
 *   first fd leaves, seal.ts), sent in messages of at most MAX_FDS fds.
 * - The socket is bound in a private folder and linked into place, created with mode 0600 unless asked otherwise.
 *
 * Every request gets a reply or its connection is closed: malformed messages, missing or extra fds, fds of FIFOs,
 * directories, devices, FUSE or O_PATH/O_WRONLY opens each get a coded error reply.
 *
 * This file is the running server (requests, replies, close); serve.ts checks serve()'s options and starts it.
 * @module
 */
import { constants as FS, lstatSync, unlinkSync } from 'node:fs';
import type { NumaNode } from '../engine/numa.js';
import { DmaloadError, DmaloadSystemError } from '../core/errors.js';
import { formatBytes, msSince, printable } from '../core/util.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { FdInspection } from '../engine/binding.js';
import { openRegular } from '../pipeline/source.js';
import type { IoMode } from '../pipeline/source.js';
import type { HugePages } from '../api/options.js';
import { Cache, versionOf } from './cache.js';
import type { Acquired } from './cache.js';
import { keepAlive } from './channel.js';
import { Connections } from './connections.js';
import type { Conn, Limits } from './connections.js';
import type { Incoming } from './channel.js';
import { FdGuard } from './fds.js';
import type { Sender } from './fds.js';
import { Ledger } from './ledger.js';
import { modelOf, plan, planMemfd, planRequest, tensorsOf } from './plan.js';
import type { FileModel } from './plan.js';
import type { ModelTensor } from '../formats/common.js';
import { MAX_FDS, MessageType, ProtocolError, VERSION, decode, encode } from './protocol.js';
import type { ErrorBody, LoadReplyBody, ServerStatus } from './protocol.js';
import type { ShareTarget } from './seal.js';
import { allowedBy, notAllowed } from './sources.js';
import type { AllowRule } from './sources.js';
import { openRef } from '../pipeline/sources/open.js';
import type { CacheOption } from '../pipeline/sources/open.js';
import { redact } from '../pipeline/sources/http.js';
import { scrubbed } from '../pipeline/sources/resolve.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';

/** What the server fetches for clients that name a reference: only what the rules allow, with these options. */
export interface FetchPolicy {
  rules: readonly AllowRule[];
  source: SourceOptions;
  cache: CacheOption;
}

const S = native.shareConstants;
/** Milliseconds a statx or close of a received fd may take before the request fails. */
const FD_TIMEOUT = 2000;
/**
 * Milliseconds close() waits for requests in progress before it abandons them (a read stuck in the kernel cannot be
 * waited for): with the fd closes' own wait, close() ends within CLOSE_WAIT + FD_TIMEOUT.
 */
export const CLOSE_WAIT = 5000;
/** Longest display name a request may give for its file (it is only used in messages and logs). */
const MAX_NAME = 4096;

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
  /** Resolves once the server has closed, for whatever reason (close(), or idle past `exitWhenIdle`). */
  readonly closed: Promise<void>;
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

/** A received fd that is not a readable regular file proves nothing: coded errors, as a local load gives. */
function requireReadableFile(st: FdInspection, name: string): void {
  if (st.flags & S.O_PATH || (st.flags & S.O_ACCMODE) === FS.O_WRONLY) {
    throw new DmaloadError(
      'ERR_SHARE_FD_ACCESS',
      `the fd sent for '${name}' is not open for reading (O_PATH or O_WRONLY), so it proves nothing; open the file O_RDONLY and send that`,
      { path: name },
    );
  }
  const type = st.mode & FS.S_IFMT;
  if (type === FS.S_IFREG) return;
  if (type === FS.S_IFDIR) throw new DmaloadSystemError(C.EISDIR, 'fstat', name);
  throw new DmaloadError('ERR_NOT_REGULAR_FILE', `'${name}' is not a regular file; dmaload reads regular files only (their size is known and stable)`, {
    path: name,
  });
}

/** The running server: each connection's requests and replies, preloads, close(). serve() (serve.ts) starts it. */
export class Server implements ShareServer {
  readonly socket: string;
  readonly budget: number;
  readonly target: ShareTarget;
  readonly #perUserBudget: number;
  readonly #log: (line: string) => void;
  readonly #listenFd: number;
  readonly #ident: { dev: number; ino: number };
  readonly #guard: FdGuard;
  readonly #ledger: Ledger;
  readonly #cache: Cache;
  readonly #conns: Connections;
  readonly #tasks = new Set<Promise<unknown>>();
  readonly #own: Sender = { uid: process.getuid?.() ?? 0, pid: process.pid };
  readonly #rules: readonly AllowRule[];
  #count = { errors: 0 };
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Aborts loads in progress when the server closes, so that shutting down never waits for a long read. */
  readonly #abort = new AbortController();
  #release: () => void;

  constructor(
    socket: string,
    budget: number,
    perUserBudget: number,
    target: ShareTarget,
    listenFd: number,
    limits: Limits,
    o: {
      io: IoMode;
      heap: string | undefined;
      partSize: number | undefined;
      hugePages: HugePages | undefined;
      numaNode: NumaNode | undefined;
      log: ((line: string) => void) | undefined;
      /** What clients may ask the server to fetch (`--allow-source`), and how it fetches. */
      fetch: FetchPolicy;
      /** Closes the server once it had no connection and nothing in progress for this long, ms (undefined: never). */
      exitWhenIdle: number | undefined;
      stallMs: number;
      budgetWaitMs: number;
    },
  ) {
    this.socket = socket;
    this.budget = budget;
    this.target = target;
    this.#perUserBudget = perUserBudget;
    const log = o.log;
    this.#log = log ? (line) => log(printable(line)) : () => {};
    this.#listenFd = listenFd;
    this.#rules = o.fetch.rules;
    this.closed = new Promise((r) => (this.#markClosed = r));
    const st = lstatSync(socket);
    this.#ident = { dev: st.dev, ino: st.ino };
    this.#guard = new FdGuard({ timeoutMs: FD_TIMEOUT, log: this.#log });
    this.#release = keepAlive();
    let ledger: Ledger | undefined;
    try {
      this.#ledger = ledger = new Ledger(this.#log);
      this.#cache = new Cache(
        {
          budget,
          perUserBudget,
          ownUid: this.#own.uid,
          target,
          io: o.io,
          heap: o.heap,
          partSize: o.partSize,
          hugePages: o.hugePages,
          numaNode: o.numaNode,
          signal: this.#abort.signal,
          log: this.#log,
          releaseSource: (fd) => this.#guard.release([fd], this.#own, 'a cached file'),
          inspect: (fd, name, from) => this.#guard.inspect(fd, name, from),
          reopen: (fd, name, from, direct) => this.#guard.reopen(fd, name, from, direct),
          release: (fds, from, name) => this.#guard.release(fds, from, name),
          stallMs: o.stallMs,
          budgetWaitMs: o.budgetWaitMs,
          openRef: (ref, signal) => {
            const f = o.fetch;
            // A plain URL's redirects must stay within what is allowed; the hub's and a store's addresses are the
            // operator's own (HF_ENDPOINT, the S3 endpoint), and the hub redirects to its CDN.
            const redirectAllowed = /^https?:/i.test(ref) ? (url: string) => allowedBy(f.rules, url) : undefined;
            return openRef(ref, o.io, { ...f.source, cache: f.cache, signal, redirectAllowed });
          },
        },
        this.#ledger,
      );
      this.#conns = new Connections(socket, listenFd, limits, this.#guard, this.#log, (conn, m) => this.#onMessage(conn, m));
      if (o.exitWhenIdle !== undefined) this.#exitWhenIdle(o.exitWhenIdle);
    } catch (e) {
      ledger?.close();
      this.#release();
      throw e;
    }
  }

  status(): ServerStatus {
    this.#ledger.drain();
    return {
      pid: process.pid,
      version: VERSION,
      target: this.target,
      budget: this.budget,
      perUserBudget: this.#perUserBudget,
      used: this.#cache.used,
      cachedBytes: this.#cache.cachedBytes,
      entries: this.#cache.size,
      ...this.#cache.count,
      errors: this.#count.errors,
      connections: this.#conns.size,
      dropped: this.#conns.dropped,
      queued: this.#cache.queued,
      fdCalls: this.#guard.pending,
      fdsParked: this.#guard.parked,
    };
  }

  #replyError(conn: Conn, id: number, body: ErrorBody): void {
    this.#count.errors++;
    this.#log(`${conn.peer}: request ${id}: ${body.code}: ${body.message}`);
    conn.channel.send(encode(MessageType.Error, id, body), []);
  }

  #onMessage(conn: Conn, m: Incoming): void {
    const t0 = performance.now();
    conn.lastActive = t0;
    let msg;
    try {
      msg = decode(m.bytes, m.length);
    } catch (e) {
      this.#guard.release(m.fds, conn.from);
      const pe = e as ProtocolError;
      this.#replyError(conn, pe.id, { code: pe.code, message: pe.message });
      if (pe.fatal) conn.channel.close();
      return;
    }
    if (m.fdsTruncated) {
      this.#guard.release(m.fds, conn.from);
      return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_FDS', message: `a message may carry at most ${MAX_FDS} fds` });
    }
    switch (msg.type) {
      case MessageType.LoadRequest:
        return this.#onLoad(conn, msg.id, msg.body, m.fds, t0);
      case MessageType.PlanRequest:
        return this.#onPlan(conn, msg.id, msg.body, m.fds);
      case MessageType.StatusRequest:
        if (m.fds.length > 0) {
          this.#guard.release(m.fds, conn.from);
          return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_FDS', message: 'a status request carries no fds' });
        }
        return conn.channel.send(encode(MessageType.StatusReply, msg.id, this.status()), []);
      default:
        this.#guard.release(m.fds, conn.from);
        return this.#replyError(conn, msg.id, { code: 'ERR_SHARE_PROTOCOL', message: `unknown request type ${msg.type}` });
    }
  }

  #onLoad(conn: Conn, id: number, body: Record<string, unknown>, fds: number[], t0: number): void {
    if (body.ref !== undefined) return this.#onRef(conn, id, body.ref, fds, t0);
    if (fds.length === 0)
      return this.#replyError(conn, id, {
        code: 'ERR_SHARE_NO_FD',
        message: "a load request must carry the file's fd (SCM_RIGHTS); open the file O_RDONLY and attach it",
      });
    if (fds.length > 1) {
      this.#guard.release(fds, conn.from);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_FDS', message: `a load request carries exactly one fd (got ${fds.length})` });
    }
    const fd = fds[0]!;
    const path = body.path;
    if (path !== undefined && (typeof path !== 'string' || path.length > MAX_NAME)) {
      this.#guard.release(fds, conn.from);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_PROTOCOL', message: `"path" must be a string of at most ${MAX_NAME} characters` });
    }
    // Only for messages and logs, escaped: control and bidi characters could forge or disguise log lines.
    const name = path ? printable(path) : `fd ${fd}`;
    this.#inFlight(conn, [fd], name, () => this.#serveLoad(conn, id, fd, name, t0));
  }

  /**
   * A load request naming a reference instead of carrying an fd: refused unless the operator allowed it, before
   * anything is asked of the network; else fetched once for every client that asks (cache.ts acquireRef).
   */
  #onRef(conn: Conn, id: number, ref: unknown, fds: number[], t0: number): void {
    if (fds.length > 0) {
      this.#guard.release(fds, conn.from);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_FDS', message: 'a load request naming a "ref" carries no fd' });
    }
    if (typeof ref !== 'string' || ref.length > MAX_NAME)
      return this.#replyError(conn, id, { code: 'ERR_SHARE_PROTOCOL', message: `"ref" must be a string of at most ${MAX_NAME} characters` });
    const name = printable(/^https?:/i.test(ref) ? redact(ref) : ref);
    if (!allowedBy(this.#rules, ref)) {
      const e = notAllowed(ref, this.#rules);
      return this.#replyError(conn, id, { code: e.code, message: e.message });
    }
    this.#inFlight(conn, [], name, async () => {
      let got: Acquired;
      try {
        if (this.#closed) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
        got = await this.#cache.acquireRef(ref, name, conn.from, conn.gone.signal);
      } catch (e) {
        if (!conn.channel.closed) this.#replyError(conn, id, errorBody(scrubbed(e, ref), undefined, name));
        return;
      }
      this.#sendReply(conn, id, got, name, t0);
    });
  }

  /**
   * Runs one request's work as a task the server's close() waits for, counted against the connection's requests in
   * progress; the request's received fds are released when it ends, however it ends.
   */
  #inFlight(conn: Conn, fds: number[], name: string, work: () => Promise<void>): void {
    conn.inflight++;
    this.#conns.hold(conn);
    const task = work().finally(() => {
      this.#guard.release(fds, conn.from, name);
      this.#tasks.delete(task);
      conn.inflight--;
      conn.lastActive = performance.now();
      this.#conns.hold(conn);
    });
    this.#tasks.add(task);
  }

  /** A PlanRequest: like a load, one task per request, its fds released when it ends. */
  #onPlan(conn: Conn, id: number, body: Record<string, unknown>, fds: number[]): void {
    const name = typeof body.path === 'string' ? printable(body.path.slice(0, MAX_NAME)) : 'a model';
    if (body.refs !== undefined) return this.#onPlanRefs(conn, id, body, fds, name);
    this.#inFlight(conn, fds, name, () => this.#servePlan(conn, id, body, fds, name));
  }

  /**
   * A PlanRequest naming references (`refs`, one per file, no fds): each is fetched as a load request's would be
   * (allowed first, once for everyone), and its header read from the server's own buffer.
   */
  #onPlanRefs(conn: Conn, id: number, body: Record<string, unknown>, fds: number[], name: string): void {
    const refs = body.refs;
    if (fds.length > 0) {
      this.#guard.release(fds, conn.from);
      return this.#replyError(conn, id, { code: 'ERR_SHARE_FDS', message: 'a plan request naming "refs" carries no fds' });
    }
    if (!Array.isArray(refs) || refs.length === 0 || refs.length > MAX_FDS || !refs.every((r) => typeof r === 'string' && r.length <= MAX_NAME)) {
      return this.#replyError(conn, id, {
        code: 'ERR_SHARE_PROTOCOL',
        message: `"refs" must be 1 to ${MAX_FDS} strings of at most ${MAX_NAME} characters`,
      });
    }
    const refused = (refs as string[]).find((r) => !allowedBy(this.#rules, r));
    if (refused !== undefined) {
      const e = notAllowed(refused, this.#rules);
      return this.#replyError(conn, id, { code: e.code, message: e.message });
    }
    this.#inFlight(conn, [], name, async () => {
      let out: { fd: number; bytes: number };
      try {
        if (this.#closed) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
        if (this.target !== 'memfd')
          throw new DmaloadError('ERR_SHARE_PROTOCOL', `plans of references need the memfd target (this server's is ${this.target}); send the files' fds`);
        const req = planRequest(body, refs.length);
        const all: ModelTensor[] = [];
        for (const [i, ref] of (refs as string[]).entries()) {
          const file = printable(/^https?:/i.test(ref) ? redact(ref) : ref);
          const got = await this.#cache.acquireRef(ref, file, conn.from, conn.gone.signal);
          // Read through the reply's own fd of the memfd (the entry's could be closed by an eviction meanwhile),
          // closed once read: the client loads the files next.
          try {
            all.push(...(await tensorsOf(got.fds[0]!, got.entry.size, file, i)));
          } finally {
            for (const f of got.fds) closeFd(f);
          }
        }
        out = planMemfd(plan(all, req, name), name);
      } catch (e) {
        if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, undefined, name));
        return;
      }
      this.#log(`${conn.peer}: ${name}: planned rank ${String(body.rank)} of ${String(body.worldSize)}`);
      conn.channel.send(encode(MessageType.PlanReply, id, { bytes: out.bytes }), [out.fd], () => closeFd(out.fd));
    });
  }

  /** Reads the headers through the client's fds (checked as a load's are), plans the rank, sends the plan's memfd. */
  async #servePlan(conn: Conn, id: number, body: Record<string, unknown>, fds: number[], name: string): Promise<void> {
    let out: { fd: number; bytes: number };
    try {
      if (this.#closed) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
      const req = planRequest(body, fds.length);
      const all: ModelTensor[] = [];
      let first: FileModel | undefined;
      for (const [i, fd] of fds.entries()) {
        const file = printable(req.files[i]!);
        const st = await this.#guard.inspect(fd, file, conn.from);
        requireReadableFile(st, file);
        const m = await modelOf(fd, Number(st.size), file, i);
        first ??= m;
        if (m.format !== first.format)
          throw new DmaloadError('ERR_MODEL_FORMAT', `'${file}' is ${m.format}, '${printable(req.files[0]!)}' is ${first.format}: one model is one format`, {
            path: file,
          });
        all.push(...m.tensors);
      }
      // The first file's metadata with the plan (a GGUF's key/values: its client has no parser of its own).
      out = planMemfd(plan(all, req, name, first!.format), name, { format: first!.format, metadata: first!.metadata });
    } catch (e) {
      if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, undefined, name));
      return;
    }
    this.#log(`${conn.peer}: ${name}: planned rank ${String(body.rank)} of ${String(body.worldSize)}`);
    conn.channel.send(encode(MessageType.PlanReply, id, { bytes: out.bytes }), [out.fd], () => closeFd(out.fd));
  }

  /** Answers one load request; never rejects (every failure becomes an error reply). */
  async #serveLoad(conn: Conn, id: number, fd: number, name: string, t0: number): Promise<void> {
    let got: Acquired;
    try {
      if (this.#closed) throw new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down');
      const st = await this.#guard.inspect(fd, name, conn.from);
      requireReadableFile(st, name);
      got = await this.#cache.acquire(fd, versionOf(st), name, conn.from);
    } catch (e) {
      if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, `/proc/self/fd/${fd}`, name));
      return;
    }
    this.#sendReply(conn, id, got, name, t0);
  }

  /** Sends a LoadReply (and LoadReplyMore messages past MAX_FDS fds); closes the reply's fds once each is sent. */
  #sendReply(conn: Conn, id: number, got: Acquired, name: string, t0: number): void {
    const { entry, fds, cached, bytesRead } = got;
    const chunks: number[][] = [];
    for (let i = 0; i < fds.length; i += MAX_FDS) chunks.push(fds.slice(i, i + MAX_FDS));
    const reply: LoadReplyBody = {
      size: entry.size,
      target: this.target,
      parts: entry.parts,
      cached,
      stats: { ...entry.stats, bytesRead, serverMs: msSince(t0) },
      ...(chunks.length > 1 ? { more: chunks.length - 1 } : {}),
    };
    let messages: Uint8Array[];
    try {
      messages = chunks.map((_, i) => (i === 0 ? encode(MessageType.LoadReply, id, reply) : encode(MessageType.LoadReplyMore, id, { index: i })));
    } catch (e) {
      for (const f of fds) closeFd(f);
      if (!conn.channel.closed) this.#replyError(conn, id, errorBody(e, undefined, name));
      return;
    }
    this.#log(`${conn.peer}: ${name}: ${cached ? 'hit' : bytesRead > 0 ? 'loaded' : 'joined a load'} (${formatBytes(entry.size)}, ${reply.stats.serverMs} ms)`);
    let left = messages.length;
    let failed = 0;
    messages.forEach((bytes, i) => {
      conn.channel.send(bytes, chunks[i]!, (errno) => {
        // The kernel holds its own references to what it took: ours go now, whatever happened.
        for (const f of chunks[i]!) closeFd(f);
        if (errno < 0 && failed === 0) failed = errno;
        if (--left > 0) return;
        // Once per reply, after its last message.
        this.#conns.replied(conn);
        if (failed < 0 && failed !== -C.EPIPE && !conn.channel.closed) {
          const e = new DmaloadSystemError(
            failed,
            'sendmsg',
            name,
            failed === -C.ETOOMANYREFS ? "the server's user has too many fds in flight to clients that do not read them" : undefined,
          );
          // Half a reply has gone out: the conversation cannot continue.
          if (messages.length > 1) this.#conns.drop(conn, e.code, e.message);
          else this.#replyError(conn, id, errorBody(e, undefined, name));
        }
      });
    });
  }

  async preload(path: string): Promise<void> {
    const h = await openRegular(path, FS.O_RDONLY);
    try {
      const st = await this.#guard.inspect(h.fd, path, this.#own);
      const got = await this.#cache.acquire(h.fd, versionOf(st), path, this.#own);
      for (const f of got.fds) closeFd(f);
      this.#log(`preloaded ${path} (${formatBytes(got.entry.size)}${got.cached ? ', already cached' : ''})`);
    } finally {
      await h.close();
    }
  }

  readonly closed: Promise<void>;
  #markClosed!: () => void;
  #idleTimer: NodeJS.Timeout | undefined;

  /** Closes the server once nothing happened for `ms`: no connection, no request in progress, no load waiting. */
  #exitWhenIdle(ms: number): void {
    let idleSince = performance.now();
    this.#idleTimer = setInterval(
      () => {
        if (this.#conns.size > 0 || this.#tasks.size > 0 || this.#cache.queued > 0) {
          idleSince = performance.now();
          return;
        }
        if (performance.now() - idleSince < ms) return;
        this.#log(`idle for ${ms} ms: closing (--exit-when-idle)`);
        void this.close();
      },
      Math.max(10, Math.min(1000, Math.floor(ms / 4))),
    );
    this.#idleTimer.unref();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#idleTimer);
      this.#closed = true;
      this.#abort.abort(new DmaloadError('ERR_SHARE_SERVER_CLOSING', 'the dmaload server is shutting down'));
      this.#conns.close();
      closeFd(this.#listenFd);
      // Only our own socket file: another server may have replaced it since.
      try {
        const st = lstatSync(this.socket);
        if (st.isSocket() && st.dev === this.#ident.dev && st.ino === this.#ident.ino) unlinkSync(this.socket);
      } catch {
        /* already gone */
      }
      // Loads were aborted above; one stuck in the kernel is abandoned after CLOSE_WAIT (its result, if it ever
      // comes, is dropped: the cache takes nothing once closing).
      const tasks = [...this.#tasks];
      let timer: NodeJS.Timeout | undefined;
      const settled = await Promise.race([
        Promise.allSettled(tasks).then(() => true),
        new Promise<false>((r) => (timer = setTimeout(() => r(false), CLOSE_WAIT))),
      ]);
      clearTimeout(timer);
      if (!settled) this.#log(`closing: requests still in progress after ${CLOSE_WAIT} ms (storage that does not answer) are abandoned`);
      this.#cache.clear();
      this.#ledger.close();
      // Closes of received fds in progress: waited for briefly, never for a file system that does not answer.
      await this.#guard.drain(FD_TIMEOUT);
      this.#release();
      this.#markClosed();
    })();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
