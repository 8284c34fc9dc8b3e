/** `dmaload load FILE`: load a file into a target and say what it cost. */
import { locateModel } from '../api/locate.js';
import { isReference } from '../pipeline/sources/resolve.js';
import { cliRef } from './ref.js';
import { parseArgs } from 'node:util';
import { evictPath } from '../pipeline/cache.js';
import { load } from '../api/load.js';
import type { LoadedBuffer } from '../api/buffer.js';
import { IO_MODES } from '../api/options.js';
import type { LoadOptions } from '../api/load.js';
import type { IoMode } from '../pipeline/source.js';
import { TARGET_NAMES } from '../targets/index.js';
import type { TargetName } from '../targets/index.js';
import { formatBytes } from '../core/util.js';
import { UsageError, onInterrupt, progressBar, sha256 } from './io.js';
import { choice, hugePagesFlag, numaNodeFlag, partSizeFlag, verifyFlag } from './flags.js';
import type { CliIO } from './io.js';

export const LOAD_HELP = `Usage: dmaload load FILE [options]

Load FILE into memory, a memfd or dma-bufs by direct I/O (no page cache) and print what it cost.

Options:
  --target memory|memfd|udmabuf|dma-heap
                            where the bytes land (default memory)
  --heap NAME               dma-heap target: the heap under /dev/dma_heap (default system)
  --part-size SIZE          split into parts (e.g. 32MiB; 1 MiB to 64 GiB), each allocated while the previous
                            one is read
  --overlap on|off          allocation overlapped with I/O (default on); off runs them one after the other
  --huge-pages on|off|hugetlb|hugetlb-or-small
                            which pages fresh memory gets: on/off, memory target: transparent huge pages
                            or not (default: as this machine's measurement says); hugetlb: pages from the
                            reserved pool (sysctl vm.nr_hugepages=N; memory, memfd, udmabuf), an error when
                            it is short; hugetlb-or-small: small pages then
  --numa-node N|interleave  the NUMA node the memory comes from (memory, memfd, udmabuf), bound before it is
                            faulted in; interleave: spread over every node with memory (probe lists them)
  --io auto|direct|buffered|uncached
                            how to read (default auto: direct where the file system allows; uncached:
                            buffered reads that leave no page cache, RWF_DONTCACHE)
  --verify auto|on|off|sha256:HEX
                            check the file's SHA-256 while it loads (a native thread hashes the bytes as
                            reads complete): auto (default) checks a Hugging Face hub-cache blob against
                            its name; on also computes and prints it otherwise; sha256:HEX checks that.
                            A mismatch is ERR_CHECKSUM_MISMATCH and exit status 1
  --hash sha256             print the loaded bytes' SHA-256 (as --verify on)
  --evict                   drop FILE from the page cache first (flushed, then dropped, checked with mincore;
                            a warning says how much stayed)
  --json                    one JSON object on stdout (an error too: { "error": { code, message, path } })
  -h, --help                this text
Environment: DMALOAD_CHUNK_SIZE (bytes per request), DMALOAD_QUEUE_DEPTH (requests in flight),
DMALOAD_HUGE_PAGES (1, 0, hugetlb or hugetlb-or-small: as --huge-pages on, off, …),
DMALOAD_NUMA_NODE (N or interleave: as --numa-node)
`;

function parseLoadArgs(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: 'string' },
      io: { type: 'string' },
      hash: { type: 'string' },
      verify: { type: 'string' },
      evict: { type: 'boolean', default: false },
      heap: { type: 'string' },
      'part-size': { type: 'string' },
      overlap: { type: 'string' },
      'huge-pages': { type: 'string' },
      'numa-node': { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
}

type LoadFlags = ReturnType<typeof parseLoadArgs>['values'];

export async function loadCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseLoadArgs(argv);
  if (values.help) {
    io.stdout(LOAD_HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('load takes exactly one FILE');
  // A folder or a repository: its model file (one safetensors, index or GGUF; ambiguity is a coded error).
  const path = await locateModel(cliRef(positionals[0]!));
  const options = loadOptions(values);
  // Cold means cold: evictPath flushes dirty pages before dropping them and counts what stayed (mincore).
  const stayed = values.evict && !isReference(path) ? evictPath(path) : undefined;
  if (stayed === null) io.stderr(`note: --evict dropped '${path}' from the page cache, but this user cannot count what stayed (it may not write the file)\n`);
  else if (stayed)
    io.stderr(
      `warning: ${formatBytes(stayed)} of '${path}' stayed in the page cache after --evict (pages mapped or locked by a process); the load is not fully cold\n`,
    );
  const bar = progressBar(io, 'load');
  const interrupt = onInterrupt();
  let buf;
  try {
    buf = await load(path, { ...options, signal: interrupt.signal, onProgress: (p) => bar.update(p.bytes, p.total, p.network) });
  } finally {
    interrupt.dispose();
    bar.done();
  }
  try {
    const out = await summary(path, buf, options.target, stayed, values.hash !== undefined);
    if (values.json) io.stdout(JSON.stringify(out) + '\n');
    else io.stdout(sentence(path, buf, options.target, out.sha256 as string | undefined));
  } finally {
    buf.close();
  }
  return 0;
}

/** load()'s options from the flags (a usage error names a bad one). */
function loadOptions(values: LoadFlags): LoadOptions & { target: TargetName } {
  const target = choice<TargetName>('target', values.target, TARGET_NAMES, 'memory');
  const ioMode = choice<IoMode>('io', values.io, IO_MODES, 'auto');
  if (values.hash !== undefined && values.hash !== 'sha256') throw new UsageError(`--hash supports sha256 only (got '${values.hash}')`);
  const partSize = partSizeFlag(values['part-size']);
  const overlap = choice('overlap', values.overlap, ['on', 'off'], 'on') === 'on';
  let verify = verifyFlag(values.verify);
  if (values.hash && verify === 'auto') verify = true;
  const hugePages = hugePagesFlag(values['huge-pages']);
  const numaNode = numaNodeFlag(values['numa-node']);
  return {
    target,
    io: ioMode,
    ...(values.heap === undefined ? {} : { heap: values.heap }),
    ...(partSize === undefined ? {} : { partSize }),
    ...(hugePages === undefined ? {} : { hugePages }),
    ...(numaNode === undefined ? {} : { numaNode }),
    overlap,
    verify,
  };
}

/** What --json prints: the buffer's stats, flattened, and the SHA-256 (verified, or computed for --hash). */
async function summary(
  path: string,
  buf: LoadedBuffer,
  target: TargetName,
  stayed: number | null | undefined,
  hash: boolean,
): Promise<Record<string, unknown>> {
  const s = buf.stats;
  const out: Record<string, unknown> = {
    path,
    size: buf.size,
    target,
    io: s.io,
    ...(s.ioReason ? { ioReason: s.ioReason } : {}),
    directBytes: s.directBytes,
    copiedBytes: s.copiedBytes,
    bytesRead: s.bytesRead,
    engine: s.engine,
    ...(s.engineReason ? { engineReason: s.engineReason } : {}),
    ms: s.ms,
    allocMs: s.allocMs,
    ioMs: s.ioMs,
    cpuMs: s.cpuMs,
    bytesPerSec: s.bytesPerSec,
    pageCacheBytes: s.pageCacheBytes,
    ...(stayed === undefined ? {} : { evictedResidentBytes: stayed }),
    overlap: s.overlap,
    // One entry per part of the layout; targets with one fd (memfd) repeat it.
    parts: s.parts.map((p, i) => ({ fd: (buf.parts[i] ?? buf.parts[0])?.fd ?? -1, ...p })),
    chunkSize: s.chunkSize,
    queueDepth: s.queueDepth,
    memory: s.memory,
    ...(s.hugePages === undefined ? {} : { hugePages: s.hugePages }),
    ...(s.hugetlb === undefined ? {} : { hugetlb: s.hugetlb }),
    ...(s.memoryReason === undefined ? {} : { memoryReason: s.memoryReason }),
    ...(s.verified === undefined ? {} : { verified: s.verified }),
    ...(s.numa === undefined ? {} : { numa: s.numa }),
    ...(s.network === undefined ? {} : { network: s.network }),
  };
  if (s.verified) out.sha256 = s.verified.sha256;
  else if (hash) out.sha256 = await sha256(buf);
  return out;
}

/** The one line load prints without --json. */
function sentence(path: string, buf: LoadedBuffer, target: TargetName, sha: string | undefined): string {
  const s = buf.stats;
  const left =
    s.pageCacheBytes === null ? 'unknown' : `${formatBytes(s.pageCacheBytes)} (${buf.size > 0 ? ((100 * s.pageCacheBytes) / buf.size).toFixed(1) : '0.0'}%)`;
  return (
    `${path}: ${formatBytes(buf.size)} into ${target} in ${s.ms.toFixed(0)} ms (${(s.bytesPerSec / 1e6).toFixed(0)} MB/s), ` +
    `CPU ${s.cpuMs.toFixed(0)} ms, page cache left ${left}, io ${s.io}` +
    `${s.network ? ` (${s.network.requests} requests, ${s.network.retries} retries, up to ${s.network.connections} connections)` : ''}` +
    `${s.ioReason ? ` (${s.ioReason})` : ''}${s.memoryReason && /hugetlb/.test(s.memoryReason) ? `, ${s.memoryReason}` : ''}${s.numa ? `, ${s.numa.reason}` : ''}${sha ? `, sha256 ${sha}` : ''}` +
    `${s.verified && s.verified.source !== 'computed' ? ` (verified against ${s.verified.source === 'hub-cache' ? 'its hub-cache blob name' : '--verify'})` : ''}\n`
  );
}
