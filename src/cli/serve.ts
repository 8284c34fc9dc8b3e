/** `dmaload serve --socket PATH`: load files once, hand their sealed buffers to any number of local processes. */
import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { formatBytes } from '../core/util.js';
import type { IoMode } from '../pipeline/source.js';
import { serve } from '../share/serve.js';
import { allowRule } from '../share/sources.js';
import { SHARE_TARGETS } from '../share/seal.js';
import type { ShareTarget } from '../share/seal.js';
import type { ServeOptions } from '../share/serve.js';
import { UsageError, onInterrupt, takeInterrupt } from './io.js';
import type { CliIO } from './io.js';
import { choice, hugePagesFlag, numaNodeFlag, partSizeFlag, sizeFlag as size } from './flags.js';
import { IO_MODES } from '../api/options.js';

export const SERVE_HELP = `Usage: dmaload serve --socket PATH [options] [FILE...]

Listen on a Unix-domain socket and give every client that sends a file's fd the same sealed buffer of that file:
loaded once (by direct I/O), mapped read-only by each client. Clients: connect() in the library, the Python client
in clients/python, or anything that speaks docs/protocol.md. Runs until SIGINT, SIGTERM or SIGHUP (exit 0; during
--preload, exit 128 + the signal), removing its socket.

Options:
  --socket PATH             the socket to create (required); a stale one nobody listens on is replaced
  --budget SIZE             bytes the server's buffers may hold, cached or held by clients (a buffer counts until
                            its last holder lets go; default: half of MemAvailable); least recently used files
                            nobody holds are dropped first
  --per-user-budget SIZE    bytes the loads of one user may hold (default: half the budget; the server's own user
                            is not limited)
  --max-connections N       connections at once, in all (default 256)
  --per-user-connections N  connections at once per user (default 32; the server's own user is not limited)
  --idle-timeout TIME       close a connection that sends nothing for TIME (default 10m; clients reconnect)
  --reply-timeout TIME      close a connection that leaves replies unread for TIME (default 10s)
  --stall-timeout TIME      abandon a load that makes no progress for TIME (default 60s; its requests fail with
                            ERR_SHARE_LOAD_STALLED)
  --exit-when-idle TIME     exit (0, socket removed) after TIME with no connection and nothing in progress: for a
                            per-user server started on demand
  --budget-wait TIME        how long a load that does not fit in the budget waits for room, fairly across users,
                            before ERR_MEMORY_BUDGET (default 30s; 0: fail at once)
  --preload FILE            load FILE before accepting requests (repeatable; FILE arguments are preloaded too)
  --allow-source PREFIX     let clients name a reference under PREFIX instead of sending an fd (repeatable; off by
                            default): https://HOST/PATH/, s3://BUCKET/PREFIX or hf://ORG/[NAME]. The server
                            fetches it once, with its own credentials (HF_TOKEN, AWS_*), for every client
  --download-cache DIR      keep what the server fetches in DIR (hf:// in huggingface_hub's layout), resumable
  --mode MODE               the socket's permissions in octal (default 0600: only this user can connect)
  --target memfd|udmabuf|dma-heap
                            where buffers live (default memfd, sealed; dma-bufs cannot be sealed)
  --heap NAME               dma-heap target: the heap under /dev/dma_heap (default system)
  --part-size SIZE          bytes per dma-buf (1 MiB to 64 GiB)
  --io auto|direct|buffered|uncached
                            how the server reads (default auto)
  --huge-pages hugetlb|hugetlb-or-small|on|off
                            pages of the server's buffers: hugetlb takes them from the reserved pool (sysctl
                            vm.nr_hugepages), cheap to fill; clients map those shared and read-only. Default:
                            memfds of huge folios (MADV_COLLAPSE, Linux 6.1+); off: small pages
  --numa-node N|interleave  NUMA placement of the server's buffers: every page on node N, or spread over all
                            (default DMALOAD_NUMA_NODE, else the kernel's)
  -v, --verbose             log connections, loads, hits and evictions to stderr
  -h, --help                this text
`;

function parseServeArgs(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      socket: { type: 'string' },
      budget: { type: 'string' },
      'per-user-budget': { type: 'string' },
      'max-connections': { type: 'string' },
      'per-user-connections': { type: 'string' },
      'idle-timeout': { type: 'string' },
      'stall-timeout': { type: 'string' },
      'budget-wait': { type: 'string' },
      'exit-when-idle': { type: 'string' },
      'reply-timeout': { type: 'string' },
      preload: { type: 'string', multiple: true },
      'allow-source': { type: 'string', multiple: true },
      'download-cache': { type: 'string' },
      mode: { type: 'string' },
      target: { type: 'string' },
      heap: { type: 'string' },
      'part-size': { type: 'string' },
      io: { type: 'string' },
      'huge-pages': { type: 'string' },
      'numa-node': { type: 'string' },
      verbose: { type: 'boolean', short: 'v', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
}

/** A size flag (--budget, --per-user-budget): 8GiB and the like; a usage error names a unit not understood. */
function sizeFlag(flag: string, v: string | undefined): number | undefined {
  return v === undefined ? undefined : size(flag, v);
}

/** --socket PATH in a folder that exists: else a usage error naming that folder (not the server's temporary name in it). */
function socketFlag(socket: string): string {
  const folder = dirname(resolve(socket));
  const st = statSync(folder, { throwIfNoEntry: false });
  if (!st) throw new UsageError(`--socket ${socket}: the folder '${folder}' does not exist`);
  if (!st.isDirectory()) throw new UsageError(`--socket ${socket}: '${folder}' is not a folder`);
  return socket;
}

/** A count flag (--max-connections, --per-user-connections): 1 to 65536. */
function countFlag(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^[1-9][0-9]{0,4}$/.test(v)) throw new UsageError(`--${flag} must be a whole number from 1 to 65536 (got '${v}')`);
  return Number(v);
}

/** A time flag (--idle-timeout, --reply-timeout): 30s, 500ms, 10m, 1h (seconds without a unit), in milliseconds. */
function durationFlag(flag: string, v: string | undefined, min = 1): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v);
  const ms = m ? Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms']) : NaN;
  if (!(ms >= min && ms <= 2 ** 31 - 1)) throw new UsageError(`--${flag} must be a time such as 30s, 500ms or 10m (got '${v}')`);
  return ms;
}

/** serve()'s options from the flags, but for the signal (a usage error names a bad one). */
function serveOptions(values: ReturnType<typeof parseServeArgs>['values'], positionals: string[], io: CliIO): ServeOptions & { target: ShareTarget } {
  if (!values.socket) throw new UsageError('--socket PATH is required');
  const socket = socketFlag(values.socket);
  const budget = sizeFlag('budget', values.budget);
  const limits = {
    perUserBudget: sizeFlag('per-user-budget', values['per-user-budget']),
    maxConnections: countFlag('max-connections', values['max-connections']),
    perUserConnections: countFlag('per-user-connections', values['per-user-connections']),
    idleTimeout: durationFlag('idle-timeout', values['idle-timeout']),
    stallTimeout: durationFlag('stall-timeout', values['stall-timeout']),
    budgetWait: durationFlag('budget-wait', values['budget-wait'], 0),
    exitWhenIdle: durationFlag('exit-when-idle', values['exit-when-idle']),
    replyTimeout: durationFlag('reply-timeout', values['reply-timeout']),
  };
  let mode: number | undefined;
  if (values.mode !== undefined) {
    if (!/^0?[0-7]{1,3}$/.test(values.mode)) throw new UsageError(`--mode must be an octal permission mode such as 0600 or 0660 (got '${values.mode}')`);
    mode = parseInt(values.mode, 8);
  }
  const partSize = partSizeFlag(values['part-size']);
  const target = choice<ShareTarget>('target', values.target, SHARE_TARGETS, 'memfd');
  const ioMode = choice<IoMode>('io', values.io, IO_MODES, 'auto');
  const hugePages = hugePagesFlag(values['huge-pages']);
  const numaNode = numaNodeFlag(values['numa-node']);
  const preload = [...(values.preload ?? []), ...positionals];
  for (const r of values['allow-source'] ?? []) allowRule(r, '--allow-source');
  const log = values.verbose ? (line: string) => io.stderr(`dmaload serve: ${line}\n`) : undefined;
  return {
    socket,
    target,
    io: ioMode,
    preload,
    allowSources: values['allow-source'] ?? [],
    ...(values['download-cache'] === undefined ? {} : { cache: values['download-cache'] }),
    ...(budget === undefined ? {} : { budget }),
    ...(hugePages === undefined ? {} : { hugePages }),
    ...(numaNode === undefined ? {} : { numaNode }),
    ...Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined)),
    ...(mode === undefined ? {} : { mode }),
    ...(values.heap === undefined ? {} : { heap: values.heap }),
    ...(partSize === undefined ? {} : { partSize }),
    ...(log ? { log } : {}),
  };
}

export async function serveCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseServeArgs(argv);
  if (values.help) {
    io.stdout(SERVE_HELP);
    return 0;
  }
  const options = serveOptions(values, positionals, io);

  // From here a signal stops the server cleanly (its socket removed), also while it preloads.
  const interrupt = onInterrupt();
  let server;
  try {
    server = await serve({ ...options, signal: interrupt.signal });
  } catch (e) {
    interrupt.dispose();
    throw e;
  }
  const st = server.status();
  io.stderr(
    `dmaload serve: listening on ${server.socket} (pid ${process.pid}, target ${options.target}, budget ${formatBytes(server.budget)}, ${st.entries} files preloaded)\n`,
  );
  // Serving until SIGINT, SIGTERM or SIGHUP: a stop the operator asked for, so exit 0.
  // Or until it closes by itself (--exit-when-idle).
  const stopped = interrupt.signal;
  if (!stopped.aborted) await Promise.race([new Promise((resolve) => stopped.addEventListener('abort', resolve, { once: true })), server.closed]);
  interrupt.dispose();
  takeInterrupt();
  const end = server.status();
  await server.close();
  io.stderr(`dmaload serve: stopped (${end.hits} hits, ${end.misses} misses, ${end.loads} loads, ${end.evictions} evictions, ${end.errors} errors)\n`);
  return 0;
}
