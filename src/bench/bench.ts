/**
 * `dmaload bench`: every way of moving a file into a buffer, side by side, each row in a fresh child process, rows
 * alternating over rounds (A B C A B C …), cold rows evicted first and checked with mincore, medians reported.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DmaloadError } from '../core/errors.js';
import { evict, pageCacheBytes, pageCacheBytesOf } from '../pipeline/cache.js';
import { requireRegular } from '../pipeline/source.js';
import { load } from '../api/load.js';
import { C, native } from '../engine/binding.js';
import { targets } from '../targets/index.js';
import type { TargetName } from '../targets/index.js';
import { GiB, MiB, formatBytes, memAvailable } from '../core/util.js';
import { writeSeededFileAsync } from './data.js';
import { METHODS, staticUnsupported } from './methods.js';
import type { Method, RowIo, RowMeasure, RowSpec } from './methods.js';
import { DEFAULT_TARGETS, VERIFY_ROWS, hugetlbRows, label, planRows } from './rows.js';

export type CacheState = 'cold' | 'warm' | 'half';

export interface BenchOptions {
  /** The file to read; without one, a seeded random file of `size` bytes is made and removed afterwards. */
  file?: string | undefined;
  size?: number;
  targets?: TargetName[];
  /**
   * Methods to run, each in every io it has (the full matrix of these methods × targets). Without it, the default
   * run: a few rows that answer first (dmaload's best ways, a plain read, Node's readFile, fio); see `all`.
   */
  methods?: Method[];
  /** Every method × target × io (the full matrix), when `methods` is not given. */
  all?: boolean;
  /** Add the verification rows: a load checking its SHA-256 while reading, and verifyFile() (see VERIFY_ROWS). */
  verify?: boolean;
  /** Only rows of these ios (the peers, fio and node-readFile, stay). */
  ios?: RowIo[];
  rounds?: number;
  /**
   * The run's time promise (ms, from the start, writing the file included): after the first round, the rounds left
   * are cut to what fits (at least one in all), and onStatus says so. Undefined: every round runs.
   */
  timeBudgetMs?: number | undefined;
  cache?: CacheState;
  /** Drop every cache before cold rows (root only): echo 1 > /proc/sys/vm/drop_caches. */
  dropCaches?: boolean;
  /** Folder for the generated file (default: the system temp folder when it supports direct I/O, else cwd). */
  dir?: string | undefined;
  signal?: AbortSignal | undefined;
  onStatus?: ((msg: string) => void) | undefined;
  /** Called after each measurement (row of a round): for a progress line per row. */
  onRow?: ((p: { done: number; total: number; spec: RowSpec; round: number; measure: RowMeasure }) => void) | undefined;
}

export interface Stat3 {
  ioMs: number;
  mbps: number;
  cpuMs: number;
}

export interface BenchRow extends RowSpec {
  /** The +verify row: median time the hash thread spent inside the load, ms. */
  hashMs?: number;
  supported: boolean;
  reason: string | undefined;
  createMs: number;
  ioMs: number;
  closeMs: number;
  mbps: number;
  /** MB/s relative to the buffered `read` row of the same target, in percent. */
  pct: number | null;
  cpuMs: number;
  /** Largest page-cache residency of the source file seen right after the I/O, over the rounds. */
  pageCacheBytes: number | null;
  /** Hash of the destination bytes equals the source's in every round; null where nothing is kept (fio). */
  verified: boolean | null;
  ioUsed?: string | undefined;
  /** Where a dmaload row's memory came from: 'fresh' or 'reused' (a reload into existing memory). */
  memory?: string | undefined;
  /** Cold runs: the most bytes of the file still cached when a round of this row started (0 = really cold). */
  startCacheBytes: number | null;
  min: Stat3;
  max: Stat3;
}

/** A ratio of one row's figure to its peer's in the same run. */
export interface BenchSummary {
  /** dmaload's fastest row on fresh memory. */
  best: BenchRow | undefined;
  /** dmaload's row on fresh memory that cost the least CPU. */
  leanest: BenchRow | undefined;
  /** fio's O_DIRECT read: what a well-tuned direct reader gets from the device (a reference, not a ceiling). */
  fio: BenchRow | undefined;
  /** Node's fs.promises.readFile. */
  readFile: BenchRow | undefined;
  /** dmaload's reload into memory that already exists (load with `into`). */
  reload: BenchRow | undefined;
  /** Rows whose cold rounds found pages of the file cached (eviction could not drop them). */
  notCold: string[];
}

export interface BenchReport {
  file: string;
  size: number;
  cache: CacheState;
  rounds: number;
  machine: { kernel: string; cpus: number; memory: number; fs: string; node: string };
  rows: BenchRow[];
  summary: BenchSummary;
  /** With a +verify row: this process's SHA-256 alone on 64 MiB in memory (the sanity bound for the row's hashMs). */
  hashAlone?: { impl: string; gbps: number };
}

/** Why a target cannot be used on this machine, or undefined. */
function targetMissing(t: TargetName): string | undefined {
  if (!targets[t]) return `target ${t} is not available in this build`;
  if (t === 'udmabuf' && !existsSync('/dev/udmabuf')) return 'this kernel has no /dev/udmabuf (CONFIG_UDMABUF)';
  if (t === 'dma-heap' && !existsSync('/dev/dma_heap')) return 'this kernel has no DMA heaps (/dev/dma_heap)';
  return undefined;
}

const here = dirname(fileURLToPath(import.meta.url));

function runChild(spec: RowSpec, path: string, size: number, signal?: AbortSignal): Promise<RowMeasure> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [join(here, 'child.js'), JSON.stringify({ spec, path, size })], { signal, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (signal?.aborted) return reject(signal.reason);
      const line = stdout.trim().split('\n').pop();
      if (err && !line) return resolve(failed(`child exited: ${err.message} ${stderr.trim()}`));
      try {
        resolve(JSON.parse(line ?? '') as RowMeasure);
      } catch {
        resolve(failed(`child printed no result: ${stderr.trim()}`));
      }
    });
  });
}

function failed(reason: string): RowMeasure {
  return { supported: false, reason, createMs: 0, ioMs: 0, closeMs: 0, cpuMs: 0, pageCacheBytes: 0 };
}

/** fio, O_DIRECT io_uring with a deep queue: a reference for the device's speed (a load can pass it). */
function runFio(path: string, size: number, signal?: AbortSignal): Promise<RowMeasure> {
  const args = [
    '--name=dmaload-bench',
    `--filename=${path}`,
    '--rw=read',
    '--bs=4M',
    '--iodepth=32',
    '--ioengine=io_uring',
    '--direct=1',
    `--size=${size}`,
    '--output-format=json',
    '--invalidate=1',
  ];
  return new Promise((resolve, reject) => {
    execFile('fio', args, { signal, maxBuffer: 16 << 20 }, (err, stdout) => {
      if (signal?.aborted) return reject(signal.reason);
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return resolve(failed('fio is not installed (apt-get install fio)'));
      try {
        const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
          jobs: Array<{ read: { bw_bytes: number; runtime: number; io_bytes: number }; usr_cpu: number; sys_cpu: number }>;
        };
        const job = j.jobs[0]!;
        const ioMs = job.read.runtime;
        resolve({
          supported: true,
          createMs: 0,
          ioMs,
          closeMs: 0,
          cpuMs: ((job.usr_cpu + job.sys_cpu) / 100) * ioMs,
          pageCacheBytes: pageCacheBytesOf(path, size),
        });
      } catch (e) {
        resolve(failed(`fio failed: ${err ? err.message : (e as Error).message}`));
      }
    });
  });
}

/**
 * Makes the file cold (evicted, checked with mincore), warm (read through the cache) or half (every other 8 MiB
 * cached); resolves with the bytes then resident. Reads asynchronously: the event loop stays free.
 */
export async function setCache(path: string, size: number, state: CacheState, dropCaches = false): Promise<number | null> {
  const fh = await fsp.open(path, 'r');
  try {
    // evict() flushes dirty pages first, so a file just written is cold too; what stays (mapped pages) is reported.
    const stayed = evict(fh.fd, path);
    if (state === 'cold' && dropCaches && stayed !== 0) writeFileSync('/proc/sys/vm/drop_caches', '1');
    if (state !== 'cold') {
      // No readahead: 'half' must leave the other ranges cold.
      native.fadvise(fh.fd, 0, 0, C.POSIX_FADV_RANDOM);
      const buf = Buffer.allocUnsafe(MiB);
      const stride = 8 * MiB;
      for (let off = 0; off < size; off += state === 'half' ? 2 * stride : stride) {
        for (let o = off; o < Math.min(size, off + stride); o += MiB) await fh.read(buf, 0, MiB, o);
      }
    }
    return pageCacheBytes(fh.fd, size);
  } finally {
    await fh.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function fsOf(path: string): string {
  const real = realpathSync(path);
  let best = { mnt: '', desc: 'unknown' };
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [dev, mnt, type] = line.split(' ');
    if (!dev || !mnt || !type) continue;
    if ((real === mnt || real.startsWith(mnt.endsWith('/') ? mnt : mnt + '/')) && mnt.length >= best.mnt.length)
      best = { mnt, desc: `${type} on ${dev} (${mnt})` };
  }
  return best.desc;
}

const TMPFS_MAGIC = 0x01021994;

/** Picks a folder for the generated file: the temp folder unless it is tmpfs (no direct I/O there), else cwd. */
function benchDir(preferred?: string): string {
  if (preferred) return preferred;
  for (const d of [os.tmpdir(), process.cwd()]) {
    try {
      if (statfsSync(d).type !== TMPFS_MAGIC) return d;
    } catch {
      // not usable; try the next
    }
  }
  return process.cwd();
}

/** About how long the run takes, from its first row (rows differ: a rough figure, said as the run starts). */
function estimate(firstRowMs: number, rows: number, beforeMs: number): string {
  const s = Math.round((beforeMs + firstRowMs * rows) / 1000);
  return `about ${s < 120 ? `${s} s` : `${Math.round(s / 60)} min`} in all here (${rows} rows at the first one's pace; --rounds, --size and --methods make it shorter)`;
}

/** How many rounds fit `leftMs` after a first round of `roundMs`: at least the first. */
export function fitRounds(roundMs: number, leftMs: number, rounds: number): { rounds: number; note: string } {
  const n = Math.max(1, Math.min(rounds, 1 + Math.floor(Math.max(0, leftMs) / roundMs)));
  const secs = (ms: number) => `${Math.round(ms / 1000)} s`;
  return {
    rounds: n,
    note: `a round takes ${secs(roundMs)} here: ${n} of ${rounds} rounds keep the default run within its time (--rounds ${rounds} runs them all)`,
  };
}

/** Runs the bench and returns its report. Removes a generated file however it ends (abort included). */
export async function bench(o: BenchOptions = {}): Promise<BenchReport> {
  const t0 = performance.now();
  let rounds = o.rounds ?? 3;
  const cache = o.cache ?? 'cold';
  const methods = o.methods ?? [...METHODS];
  const tgts = o.targets ?? DEFAULT_TARGETS;
  const status = o.onStatus ?? (() => {});
  const made: { tmp?: string } = {};
  try {
    const { path, size, want } = await benchSource(o, status, made);

    const huge = hugetlbRows(size);
    if (huge.reason) status(huge.reason);
    const planned = planRows(methods, tgts, o.methods !== undefined || o.all === true, huge.ok);
    if (o.verify) planned.push(...VERIFY_ROWS.filter((r) => methods.includes(r.method) && tgts.includes(r.target)));
    const specs = planned.filter((s) => !o.ios || s.method === 'fio' || s.method === 'node-readFile' || o.ios.includes(s.io));
    const measures: RowMeasure[][] = specs.map(() => []);
    const startCache: Array<number | null> = specs.map(() => 0);
    const skip: Array<string | undefined> = specs.map(
      (s) => (s.method === 'fio' || s.method === 'node-readFile' ? undefined : targetMissing(s.target)) ?? staticUnsupported(s),
    );
    let total = rounds * skip.filter((s) => s === undefined).length;
    let done = 0;
    const tRows = performance.now();
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < specs.length; i++) {
        o.signal?.throwIfAborted();
        const spec = specs[i]!;
        if (skip[i]) continue;
        const resident = await setCache(path, size, cache, o.dropCaches);
        if (cache === 'cold') startCache[i] = resident === null || startCache[i] === null ? null : Math.max(startCache[i]!, resident);
        if (cache === 'cold' && resident !== null && resident > 0)
          status(`warning: ${formatBytes(resident)} of the file stayed in the page cache after eviction`);
        status(`round ${r + 1}/${rounds}: ${label(spec)}`);
        const m = spec.method === 'fio' ? await runFio(path, size, o.signal) : await runChild(spec, path, size, o.signal);
        if (m.sha256 !== undefined && m.sha256 !== want) m.reason = 'destination bytes differ from the source';
        measures[i]!.push(m);
        done++;
        o.onRow?.({ done, total, spec, round: r + 1, measure: m });
        if (done === 1) status(estimate(performance.now() - tRows, total, tRows - t0));
        // A row that cannot run (EXDEV, EFAULT, no fio) is reported once, not retried every round.
        if (!m.supported) skip[i] = m.reason ?? 'unsupported';
      }
      if (r === 0 && o.timeBudgetMs !== undefined) {
        const fit = fitRounds(performance.now() - tRows, o.timeBudgetMs - (performance.now() - t0), rounds);
        if (fit.rounds < rounds) {
          total = Math.round((total / rounds) * fit.rounds);
          rounds = fit.rounds;
          status(fit.note);
        }
      }
    }
    const rows = specs.map((spec, i) => ({ ...summarize(spec, measures[i]!, skip[i], size), startCacheBytes: startCache[i]! }));
    for (const row of rows) {
      const base = rows.find((b) => b.target === row.target && b.method === 'read' && b.io === 'buffered' && b.supported);
      row.pct = row.supported && base && base.mbps > 0 ? Math.round((100 * row.mbps) / base.mbps) : null;
    }
    return {
      file: path,
      size,
      cache,
      rounds,
      machine: { kernel: os.release(), cpus: os.availableParallelism(), memory: os.totalmem(), fs: fsOf(path), node: process.versions.node },
      rows,
      summary: summaryOf(rows, cache),
      ...(rows.some((r) => r.hashMs !== undefined) ? { hashAlone: hashAlone() } : {}),
    };
  } finally {
    if (made.tmp) rmSync(made.tmp, { recursive: true, force: true });
  }
}

/**
 * The file the bench reads and its SHA-256: the caller's (hashed by direct I/O), or a seeded random one generated in
 * a folder of its own, named in `made.tmp` as soon as it exists (the caller removes it however the run ends).
 */
async function benchSource(o: BenchOptions, status: (m: string) => void, made: { tmp?: string }): Promise<{ path: string; size: number; want: string }> {
  let path = o.file;
  let size: number;
  let want: string | undefined; // the source's SHA-256: from the generator, or read below
  if (path === undefined) {
    size = o.size ?? GiB;
    const dir = benchDir(o.dir);
    const free = statfsSync(dir);
    if (free.bavail * free.bsize < size + 256 * MiB) {
      throw new DmaloadError(
        'ERR_BENCH_NO_SPACE',
        `a ${formatBytes(size)} test file does not fit in ${dir} (${formatBytes(free.bavail * free.bsize)} free); pass a smaller --size or a FILE`,
        { path: dir },
      );
    }
    made.tmp = mkdtempSync(join(dir, 'dmaload-bench-'));
    path = join(made.tmp, 'data.bin');
    status(`writing a ${formatBytes(size)} seeded random file: ${path}`);
    want = await writeSeededFileAsync(path, size, 0x5eed, o.signal);
  } else {
    const st = statSync(path);
    requireRegular(st, path, 'stat');
    size = st.size;
    if (size === 0) throw new DmaloadError('ERR_BENCH_FILE_TOO_SMALL', `'${path}' is empty; the bench needs a file of at least 1 byte`, { path });
  }
  if (size > memAvailable() * 0.8) {
    throw new DmaloadError(
      'ERR_MEMORY_BUDGET',
      `${formatBytes(size)} does not fit in free memory (${formatBytes(memAvailable())} available); use a smaller --size`,
      { path },
    );
  }
  if (want === undefined) {
    status('hashing the source (direct I/O, no page cache)');
    const src = await load(path, { io: 'auto', signal: o.signal });
    const h = createHash('sha256');
    for (const w of src.windows()) h.update(w); // any size: a hash takes at most 2 GiB at once
    want = h.digest('hex');
    src.close();
  }
  return { path, size, want };
}

/** The SHA-256 loads use, alone on 64 MiB of warm memory: the best of three, GB/s. */
function hashAlone(): { impl: string; gbps: number } {
  const buf = new Uint8Array(64 * MiB).fill(0x5a);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    native.sha256(buf);
    best = Math.min(best, performance.now() - t);
  }
  return { impl: native.sha256Impl, gbps: Math.round((buf.length / best / 1e6) * 100) / 100 };
}

/** The rows the summary compares: dmaload's fastest on fresh memory, the reload, and the peers. */
export function summaryOf(rows: readonly BenchRow[], cache: CacheState): BenchSummary {
  const ok = rows.filter((r) => r.supported);
  // Loads only: the verification rows answer another question (and verifyFile keeps no buffer).
  const loads = ok.filter((r) => r.method === 'dmaload' && r.verify === undefined);
  const best = [...loads].sort((a, b) => b.mbps - a.mbps)[0];
  return {
    best,
    leanest: [...loads].sort((a, b) => a.cpuMs - b.cpuMs)[0],
    fio: ok.find((r) => r.method === 'fio'),
    readFile: ok.find((r) => r.method === 'node-readFile'),
    reload: ok.filter((r) => r.method === 'dmaload-reload').sort((a, b) => b.mbps - a.mbps)[0],
    notCold: cache === 'cold' ? rows.filter((r) => r.startCacheBytes !== 0).map(label) : [],
  };
}

function summarize(spec: RowSpec, ms: RowMeasure[], skipReason: string | undefined, size: number): BenchRow {
  const ok = ms.filter((m) => m.supported);
  const zero = { ioMs: 0, mbps: 0, cpuMs: 0 };
  if (ok.length === 0 || ok.length < ms.length) {
    return {
      ...spec,
      supported: false,
      reason: ms.find((m) => !m.supported)?.reason ?? skipReason,
      createMs: 0,
      ioMs: 0,
      closeMs: 0,
      mbps: 0,
      pct: null,
      cpuMs: 0,
      pageCacheBytes: 0,
      verified: null,
      startCacheBytes: 0,
      min: zero,
      max: zero,
    };
  }
  const mbps = (m: RowMeasure) => (m.ioMs > 0 ? size / 1e6 / (m.ioMs / 1000) : 0);
  const pick = (f: (m: RowMeasure) => number) => ({ min: Math.min(...ok.map(f)), max: Math.max(...ok.map(f)), med: median(ok.map(f)) });
  const io = pick((m) => m.ioMs);
  const mb = pick(mbps);
  const cpu = pick((m) => m.cpuMs);
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return {
    ...spec,
    supported: true,
    reason: ok.find((m) => m.reason)?.reason,
    createMs: r2(median(ok.map((m) => m.createMs))),
    ioMs: r2(io.med),
    closeMs: r2(median(ok.map((m) => m.closeMs))),
    mbps: Math.round(mb.med),
    pct: null,
    cpuMs: r2(cpu.med),
    // Unknown in any round (residency hidden from this user): unknown.
    pageCacheBytes: ok.some((m) => m.pageCacheBytes === null) ? null : Math.max(...ok.map((m) => m.pageCacheBytes!)),
    verified: spec.method === 'fio' ? null : ok.every((m) => m.reason === undefined && m.sha256 !== undefined),
    ioUsed: ok[0]!.ioUsed,
    memory: ok[0]!.memory,
    ...(ok.every((m) => m.hashMs !== undefined) ? { hashMs: r2(median(ok.map((m) => m.hashMs!))) } : {}),
    startCacheBytes: 0,
    min: { ioMs: r2(io.min), mbps: Math.round(mb.min), cpuMs: r2(cpu.min) },
    max: { ioMs: r2(io.max), mbps: Math.round(mb.max), cpuMs: r2(cpu.max) },
  };
}
