/**
 * serve(): checks its options, listens on the socket and starts a {@link Server} (server.ts: requests, replies,
 * close), then loads the `preload` files before it resolves. The security model is in server.ts and docs/serve.md.
 * @module
 */
import { unlinkSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  budgetOption,
  cacheOption,
  enumOption,
  hugePagesOption,
  integerOption,
  ioOption,
  modeOption,
  numaNodeOption,
  optionNames,
  optionsObject,
  partSizeOption,
  pathOption,
  signalOption,
  sourceOption,
} from '../api/options.js';
import { allowRule } from './sources.js';
import type { CacheOption } from '../pipeline/sources/open.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import type { HugePages } from '../api/options.js';
import { numaRequest } from '../api/pages.js';
import { invalidType } from '../core/errors.js';
import { memAvailable } from '../core/util.js';
import { closeFd } from '../engine/binding.js';
import type { NumaNode } from '../engine/numa.js';
import type { IoMode } from '../pipeline/source.js';
import type { Limits } from './connections.js';
import { SHARE_TARGETS } from './seal.js';
import type { ShareTarget } from './seal.js';
import { Server } from './server.js';
import type { ShareServer } from './server.js';
import { listen } from './socket.js';

export interface ServeOptions {
  /** Path of the Unix-domain socket to create (SOCK_SEQPACKET). A stale socket nobody listens on is replaced. */
  socket: string;
  /**
   * Bytes the server's buffers may hold, cached or held by clients (a buffer counts until its last holder lets go).
   * Least recently used files nobody holds are dropped to make room. Default: half of MemAvailable at start.
   */
  budget?: number;
  /** Bytes the loads of any one user may hold. The server's own user is not limited. Default: half the budget. */
  perUserBudget?: number;
  /** Connections open at once, in all. Default 256. */
  maxConnections?: number;
  /** Connections open at once per user (uid); the server's own user is not limited. Default 32. */
  perUserConnections?: number;
  /** Milliseconds a connection may stay idle (nothing sent, nothing in progress) before it is closed. Default 600000. */
  idleTimeout?: number;
  /** Milliseconds a client may leave replies unread before its connection is closed. Default 10000. */
  replyTimeout?: number;
  /**
   * Milliseconds a load may make no progress before it is abandoned: its requests fail with ERR_SHARE_LOAD_STALLED,
   * its budget is released and nothing is cached (a read stuck in the kernel keeps its memory until it ends).
   * Default 60000.
   */
  stallTimeout?: number;
  /**
   * Milliseconds a load that does not fit in the budget waits for room (buffers that clients let go, loads that end)
   * before ERR_MEMORY_BUDGET; waiters are served fairly across users. A load larger than the budget, or than a user's
   * share, fails at once. Default 30000.
   */
  budgetWait?: number;
  /**
   * Closes the server (its socket removed, `closed` resolved; the CLI exits 0) once it has had no connection and
   * nothing in progress for this many milliseconds: for a per-user server started on demand. Default: never.
   */
  exitWhenIdle?: number;
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
  /**
   * Pages of the server's buffers, as load()'s option: 'hugetlb' (or 'hugetlb-or-small') takes them from the reserved
   * hugetlb pool, cheap to fault in and to read into; clients then map them shared and read-only. Default: load()'s.
   */
  hugePages?: HugePages;
  /**
   * NUMA placement of the server's buffers, as load()'s option: a node number (every page on that node, e.g. the one
   * the consuming device or CPUs sit on) or 'interleave'. Default: DMALOAD_NUMA_NODE, else the kernel's policy.
   */
  numaNode?: NumaNode;
  /**
   * References clients may ask the server to fetch instead of sending an fd (off when empty, the default): prefixes
   * such as `https://models.example/org/`, `s3://bucket/prefix` or `hf://org/` (sources.ts has the rules). The server
   * fetches each one once, with its own credentials, for every client that asks.
   */
  allowSources?: readonly string[];
  /** Network options of those fetches (load()'s `source` option: connections, CA, hub token, S3 endpoint, …). */
  source?: SourceOptions;
  /** Where fetched references are kept on disk (load()'s `cache` option). Default: not kept. */
  cache?: CacheOption;
  /** Files to load before serve() resolves (the operator's own paths: the server opens these itself). */
  preload?: readonly string[];
  /** Called with one line per event (connections, loads, hits, evictions, errors), for logs. */
  log?: (line: string) => void;
  /** Stops the preloading: serve() closes the server (its socket removed) and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Starts a share server on a Unix-domain socket and resolves once it listens and every `preload` file is cached.
 *
 * Clients (connect(), the Python client in clients/python, anything speaking docs/protocol.md) get fds of one sealed
 * buffer per file, however many they are. Error codes: the socket's system errors (EADDRINUSE when a server already
 * listens there), load()'s codes for preload files, ERR_INVALID_ARG_* / ERR_OUT_OF_RANGE for bad options.
 */
const SERVE_OPTIONS = optionNames<ServeOptions>()([
  'socket',
  'budget',
  'perUserBudget',
  'maxConnections',
  'perUserConnections',
  'idleTimeout',
  'replyTimeout',
  'stallTimeout',
  'budgetWait',
  'exitWhenIdle',
  'mode',
  'target',
  'heap',
  'partSize',
  'io',
  'hugePages',
  'numaNode',
  'preload',
  'allowSources',
  'source',
  'cache',
  'log',
  'signal',
]);

export async function serve(options: ServeOptions): Promise<ShareServer> {
  const o = optionsObject(options, SERVE_OPTIONS, 'serve()');
  const socket = resolve(pathOption('socket', o.socket));
  const budget = o.budget === undefined ? Math.floor(memAvailable() / 2) : budgetOption(o.budget, 'budget');
  const perUserBudget = o.perUserBudget === undefined ? Math.floor(budget / 2) : budgetOption(o.perUserBudget, 'perUserBudget');
  const limits: Limits = {
    maxConnections: integerOption('maxConnections', o.maxConnections, 1, 65536) ?? 256,
    perUserConnections: integerOption('perUserConnections', o.perUserConnections, 1, 65536) ?? 32,
    idleTimeout: integerOption('idleTimeout', o.idleTimeout, 1, 2 ** 31 - 1) ?? 600_000,
    replyTimeout: integerOption('replyTimeout', o.replyTimeout, 1, 2 ** 31 - 1) ?? 10_000,
  };
  const stallMs = integerOption('stallTimeout', o.stallTimeout, 1, 2 ** 31 - 1) ?? 60_000;
  const budgetWaitMs = integerOption('budgetWait', o.budgetWait, 0, 2 ** 31 - 1) ?? 30_000;
  const exitWhenIdle = integerOption('exitWhenIdle', o.exitWhenIdle, 1, 2 ** 31 - 1);
  const mode = modeOption(o.mode) ?? 0o600;
  const target = enumOption<ShareTarget>('target', o.target, SHARE_TARGETS, 'memfd');
  const io = ioOption(o.io);
  const partSize = partSizeOption(o.partSize);
  const hugePages = hugePagesOption(o.hugePages);
  const numaNode = numaNodeOption(o.numaNode);
  // A node the machine lacks, or the dma-heap target, is refused now rather than in every load.
  numaRequest(numaNode, target, false);
  if (o.heap !== undefined && (typeof o.heap !== 'string' || o.heap === '' || o.heap.includes('/')))
    throw invalidType('heap', 'a heap name such as "system"', o.heap);
  if (o.log !== undefined && typeof o.log !== 'function') throw invalidType('log', 'a function', o.log);
  const given: unknown = o.preload ?? [];
  if (!Array.isArray(given)) throw invalidType('preload', 'an array of paths', given);
  const preload = (given as unknown[]).map((p, i) => pathOption(`preload[${i}]`, p));
  const allowGiven: unknown = o.allowSources ?? [];
  if (!Array.isArray(allowGiven)) throw invalidType('allowSources', 'an array of reference prefixes', allowGiven);
  const rules = (allowGiven as unknown[]).map((r, i) => allowRule(r, `allowSources[${i}]`));
  const fetch = { rules, source: sourceOption(o.source), cache: cacheOption(o.cache) };
  const signal = signalOption(o.signal);
  signal?.throwIfAborted();

  const fd = listen(socket, mode);
  let server: Server;
  try {
    server = new Server(socket, budget, perUserBudget, target, fd, limits, {
      io,
      heap: o.heap,
      partSize,
      hugePages,
      numaNode,
      log: o.log,
      fetch,
      stallMs,
      budgetWaitMs,
      exitWhenIdle,
    });
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
