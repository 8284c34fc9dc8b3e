/** `dmaload bench [FILE]`: the seeds' method matrix on this machine. */
import { statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { bench } from '../bench/bench.js';
import { DEFAULT_TARGETS, label } from '../bench/rows.js';
import type { BenchOptions, BenchReport, CacheState } from '../bench/bench.js';
import { METHODS } from '../bench/methods.js';
import type { Method, RowIo } from '../bench/methods.js';
import { markdown, pctOf, svg, table } from '../bench/report.js';
import type { TargetName } from '../targets/index.js';
import { GiB, formatBytes } from '../core/util.js';
import { UsageError, onInterrupt } from './io.js';
import { numaNodeFlag, sizeFlag } from './flags.js';
import { numaRequest } from '../api/pages.js';
import type { CliIO } from './io.js';

export const BENCH_HELP = `Usage: dmaload bench [FILE] [options]

Measure ways of moving a file into a buffer, side by side, each row in a fresh process, and answer first:
dmaload's best row against fio and Node's readFile (speed, CPU, page cache left), at the top and at the bottom of
the table. --all runs every method × target × io. Without FILE, a seeded random file of --size bytes is written to
a temporary folder on a disk (not tmpfs) and removed afterwards. Where the hugetlb pool (sysctl vm.nr_hugepages=N)
has enough free pages for the file, rows with memory from it are added (hugePages 'hugetlb': a fresh load and a
reload into it).

How long: every row reads the whole file once per round, so a run reads it rows × rounds times, plus writing and
hashing it once. The default run (no FILE: 1 GiB, 3 rounds, about a dozen rows; fewer without udmabuf or DMA heaps)
reads some 35 GiB, and keeps to 90 s: after its first round, it runs only the rounds that fit (saying so; --rounds 3
runs them all). As the first row ends, the run says about how long it will take here. --size, --rounds, --methods and --targets make it shorter. Each finished row prints a line on stderr
as the run goes ([done/total] round, row, MB/s, CPU, page cache), also when stderr is not a terminal.

Columns: I/O-ms and I/O-MB/s time the reading alone (median, min–max over rounds); I/O% is a row's I/O-MB/s as a
percentage of the buffered read row of the same target (100% = as fast as read(2) through the page cache; - where
that row is not in the run); CPU-ms is the CPU time (user + system) the row's work took; page cache is how much
of the file was cached right after it. fio reads the file with O_DIRECT, io_uring, 4 MiB requests, 32 in flight: a reference for
what this device gives a well-tuned direct reader, not a ceiling (a row can pass it: the device's or the host's
caches, run-to-run spread).

Options:
  --size SIZE          size of the generated file (default 1GiB; e.g. 256MiB)
  --all                every method × target × io (the full matrix)
  --verify             add rows with SHA-256 verification: a load checking it while reading (+verify) and
                       'dmaload verify' alone (verifyFile), to compare with the same load without it and fio
  --targets LIST       comma-separated: ${DEFAULT_TARGETS.join(',')} (default: all; missing kernel features are reported)
  --methods LIST       comma-separated: ${METHODS.join(',')}; each in every io it has
                       (default: the default rows)
  --io LIST            only rows of these ios: direct,buffered,uncached,auto (the peers stay)
  --rounds N           rounds, rows alternating (default 3); medians reported with min–max
  --cache LIST         cold (evicted before each row, default), warm (read first), half (every other 8 MiB
                       cached); several, e.g. cold,warm,half, give one table each
  --drop-caches        also drop every cache before cold rows (root)
  --numa-node N|interleave
                       dmaload rows' fresh memory on NUMA node N, or spread (as DMALOAD_NUMA_NODE, which the
                       rows' child processes inherit)
  --sweep LIST         sizes, e.g. 64MiB,256MiB,1GiB,4GiB,8GiB: throughput and CPU per GiB of each row at each
                       size (with --targets memory --methods dmaload: the scale check)
  --json               one JSON object on stdout
  --md                 a Markdown table on stdout
  --svg OUT.svg        write a chart
  -h, --help           this text
`;

function list<T extends string>(flag: string, v: string | undefined, allowed: readonly T[], dflt: readonly T[]): T[] {
  if (v === undefined) return [...dflt];
  const items = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const it of items) if (!(allowed as readonly string[]).includes(it)) throw new UsageError(`--${flag}: unknown '${it}'; valid: ${allowed.join(', ')}`);
  if (items.length === 0) throw new UsageError(`--${flag} needs at least one of ${allowed.join(', ')}`);
  return items as T[];
}

function size(flag: string, v: string): number {
  const n = sizeFlag(flag, v);
  if (n < 1) throw new UsageError(`--${flag}: '${v}' is not a size of at least 1 byte (e.g. 4096, 256MiB, 1GiB)`);
  return n;
}

export async function benchCommand(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      size: { type: 'string' },
      all: { type: 'boolean', default: false },
      verify: { type: 'boolean', default: false },
      io: { type: 'string' },
      targets: { type: 'string' },
      methods: { type: 'string' },
      rounds: { type: 'string' },
      cache: { type: 'string' },
      'drop-caches': { type: 'boolean', default: false },
      'numa-node': { type: 'string' },
      sweep: { type: 'string' },
      json: { type: 'boolean', default: false },
      md: { type: 'boolean', default: false },
      svg: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(BENCH_HELP);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError('bench takes at most one FILE');
  const rounds = values.rounds === undefined ? 3 : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 100) throw new UsageError(`--rounds must be an integer from 1 to 100 (got '${values.rounds}')`);
  const common = {
    file: positionals[0],
    targets: list<TargetName>('targets', values.targets, DEFAULT_TARGETS, DEFAULT_TARGETS),
    ...(values.methods === undefined ? {} : { methods: list<Method>('methods', values.methods, METHODS, METHODS) }),
    all: values.all,
    verify: values.verify,
    ...(values.io === undefined ? {} : { ios: list<RowIo>('io', values.io, ['direct', 'buffered', 'uncached', 'auto'], []) }),
    rounds,
    // The default run keeps its promise (90 s, writing the file included) on slow machines by running fewer rounds.
    timeBudgetMs: isDefaultRun(values, positionals) ? DEFAULT_BUDGET_MS : undefined,
    dropCaches: values['drop-caches'],
  };
  const caches = list<CacheState>('cache', values.cache, ['cold', 'warm', 'half'], ['cold']);
  const sweep = values.sweep?.split(',').map((s) => size('sweep', s.trim()));
  if (sweep && common.file) throw new UsageError('--sweep generates its own files; give no FILE');
  if (values.svg !== undefined) {
    const folder = dirname(resolve(values.svg));
    if (!statSync(folder, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--svg ${values.svg}: the folder ${folder} does not exist`);
  }
  // Each row runs in a child process that inherits the environment: the variable places its memory, checked here first.
  const numaNode = numaNodeFlag(values['numa-node']);
  const savedNuma = process.env.DMALOAD_NUMA_NODE;
  if (numaNode !== undefined) {
    numaRequest(numaNode, 'memory', false);
    process.env.DMALOAD_NUMA_NODE = String(numaNode);
  }
  const interrupt = onInterrupt();
  const reports: BenchReport[] = [];
  try {
    for (const sz of sweep ?? [values.size === undefined ? GiB : size('size', values.size)]) {
      for (const cache of caches) {
        reports.push(
          await bench({
            ...common,
            size: sz,
            cache,
            signal: interrupt.signal,
            onStatus: (m) => status(io, m),
            // A line per measured row, kept: the numbers arrive as the run goes (piped too, a plain line each).
            onRow: (p) => io.stderr(`${io.isTTY ? '\r\x1b[K' : ''}${progressLine(p, sz)}\n`),
          }),
        );
      }
    }
  } finally {
    // The variable was this command's, for its children: the process it ran in (a test, a script) gets its own back.
    if (numaNode !== undefined) {
      if (savedNuma === undefined) delete process.env.DMALOAD_NUMA_NODE;
      else process.env.DMALOAD_NUMA_NODE = savedNuma;
    }
    interrupt.dispose();
    if (io.isTTY) io.stderr('\r\x1b[K');
  }
  // The results first: a chart that cannot be written must not cost a run of minutes.
  if (values.json) io.stdout(JSON.stringify(reports.length > 1 ? { reports } : reports[0]) + '\n');
  else if (values.md) io.stdout(reports.map(markdown).join('\n'));
  else io.stdout(reports.map(table).join('\n'));
  if (sweep && !values.json) io.stdout(sweepTable(reports.filter((r) => r.cache === caches[0])));
  if (values.svg) {
    // One chart per table: OUT.svg, or OUT-SIZE-CACHE.svg when there are several.
    const base = values.svg.replace(/\.svg$/i, '');
    for (const r of reports) writeFileSync(reports.length === 1 ? values.svg : `${base}-${r.size}-${r.cache}.svg`, svg(r));
  }
  return 0;
}

/**
 * What the bench is doing: redrawn in place on a terminal; piped, only what is not a row starting (writing the
 * file, hashing it, warnings), one plain line each, since each finished row gets its own line anyway.
 */
function status(io: CliIO, m: string): void {
  if (io.isTTY) io.stderr(`\r\x1b[K${m}`);
  else if (!/^round \d+\/\d+: /.test(m)) io.stderr(`${m}\n`);
}

/** The default run's time: 90 s promised, a margin kept for the process's start and the report. */
const DEFAULT_BUDGET_MS = 85_000;

/** `dmaload bench` with nothing that asks for a longer run: no FILE, size, rounds, cache states, sweep or --all. */
function isDefaultRun(
  v: { rounds?: string | undefined; size?: string | undefined; all?: boolean | undefined; sweep?: string | undefined; cache?: string | undefined },
  positionals: string[],
): boolean {
  return positionals.length === 0 && v.rounds === undefined && v.size === undefined && !v.all && v.sweep === undefined && v.cache === undefined;
}

function progressLine(p: Parameters<NonNullable<BenchOptions['onRow']>>[0], size: number): string {
  const m = p.measure;
  const head = `[${String(p.done).padStart(String(p.total).length)}/${p.total}] round ${p.round} ${label(p.spec)}`;
  if (!m.supported) return `${head}: unsupported (${m.reason ?? ''})`;
  const mbps = m.ioMs > 0 ? (size / 1e6 / (m.ioMs / 1000)).toFixed(0) : '-';
  return `${head}: ${mbps} MB/s, CPU ${m.cpuMs.toFixed(0)} ms, page cache ${pctOf(m.pageCacheBytes, size)}${m.reason ? ` (${m.reason})` : ''}`;
}

/**
 * Throughput and CPU per GiB of each row at each size: flat lines are the goal. With fio in the run, each cell also
 * gives the row's speed against fio's at that size (the device drifts between sizes; the ratio does not), and the
 * spread is taken over those ratios.
 */
function sweepTable(reports: BenchReport[]): string {
  const first = reports[0]!;
  const hasFio = reports.every((r) => r.summary.fio);
  const what = hasFio ? "speed against fio's in the same run" : 'MB/s';
  const lines = [
    `\nsweep: MB/s (× fio's at that size), CPU ms per GiB; spread = the slowest size against the fastest, by ${what}`,
    ['row', ...reports.map((r) => formatBytes(r.size)), 'spread'].join('\t'),
  ];
  first.rows.forEach((row, i) => {
    if (!row.supported || row.method === 'fio') return;
    const speeds: number[] = [];
    const cells = reports.map((r) => {
      const x = r.rows[i]!;
      if (!x.supported) return '-';
      const vsFio = r.summary.fio ? x.mbps / r.summary.fio.mbps : undefined;
      speeds.push(vsFio ?? x.mbps);
      return `${x.mbps} MB/s${vsFio === undefined ? '' : ` (${vsFio.toFixed(2)}×)`}, ${((x.cpuMs * GiB) / r.size).toFixed(0)} ms/GiB`;
    });
    const spread = speeds.length > 1 && Math.max(...speeds) > 0 ? `-${(100 * (1 - Math.min(...speeds) / Math.max(...speeds))).toFixed(0)}%` : '-';
    lines.push([label(row), ...cells, spread].join('\t'));
  });
  if (hasFio) lines.push(['fio', ...reports.map((r) => `${r.summary.fio!.mbps} MB/s`), ''].join('\t'));
  return lines.join('\n') + '\n';
}
