/**
 * `npm run bench:onnx -- [SIZE] [ROUNDS] [--no-prepack] [--malloc-huge] [--modes a,b,…]`: an ONNX Runtime
 * (onnxruntime-node, a devDependency) session over a generated Gemm model whose float32 weight (SIZE, default 256MiB)
 * is the external initializer in model.onnx_data, made ready in several ways, cold (the data file evicted before
 * each), ROUNDS rounds (default 5), each way in a fresh process, the ways alternating. Reports the time to a ready
 * session, the first run, the CPU, the page cache left (bytes of model.onnx_data resident), the anonymous memory the
 * process grew by and its peak, medians (min–max), and checks that every way computes the path session's output bit
 * for bit. docs/onnxruntime.md has the figures.
 *
 * Ways (--modes, default all):
 *   path        InferenceSession.create('…/model.onnx'): ORT maps model.onnx_data (page cache)
 *   path-evict  path, then the data file evicted (evictPath: POSIX_FADV_DONTNEED) before the session counts as ready;
 *               pages ORT still maps stay
 *   buffer      load(data) then create(onnxBytes, { externalData: [{ path, data: buf.bytes }] }), buffer closed at ready
 *   reused      the same into memory already faulted in: load(data, { into }) with `into` allocated and touched
 *               before the clock starts (what a pool gives a process that swaps models)
 *   huge        buffer with load(data, { hugePages: true })
 *   memfd       buffer with load(data, { target: 'memfd' })
 *   shm         copy(data, '/dev/shm/…/model.onnx_data') (direct reads through a 32 MiB ring, tmpfs writes), then create()
 *               from that path (model.onnx copied beside it):
 *               ORT maps the tmpfs file and copies nothing; the folder is removed at ready
 *   readfile    fs.readFile(data) then create(onnxBytes, { externalData }) (no dmaload, for comparison)
 * --no-prepack  sets ORT's session.disable_prepacking = 1 (Gemm then uses the weight as it is instead of packing a copy
 *               at create(), so a mapped file is read during the first run instead).
 * --malloc-huge  runs the children with GLIBC_TUNABLES=glibc.malloc.hugetlb=1: glibc's malloc asks for transparent huge
 *               pages (MADV_HUGEPAGE) for its large blocks, which are where ORT puts its copies and its packed weights.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchDiskDir } from '../../src/bench/data.js';
import { evictPath, pageCacheBytesOf } from '../../src/pipeline/cache.js';
import { MiB, parseSize } from '../../src/core/util.js';
import { allocate, copy, load } from '../../src/index.js';
import type { LoadedBuffer } from '../../src/index.js';
import { encodeModel, seededFloats, writeGemmModel } from '../../test/onnx-writer.js';

const MODES = ['path', 'path-evict', 'buffer', 'reused', 'huge', 'memfd', 'shm', 'readfile'] as const;
type Mode = (typeof MODES)[number];

interface ChildArgs {
  mode: Mode;
  dir: string;
  M: number;
  K: number;
  N: number;
  prepack: boolean;
}

interface Row {
  mode: Mode;
  prepMs: number; // load / copy / readFile, before create()
  readyMs: number; // from the clock's start to create() resolved (includes prepMs)
  runMs: number; // the first run
  cpuMs: number; // process CPU, start to ready
  cacheReady: number; // bytes of model.onnx_data in the page cache at ready
  cacheRun: number; // … after the first run
  anonMiB: number; // RssAnon growth, start to ready
  peakMiB: number; // VmHWM at ready − VmRSS at the start: the most memory the process held on the way to ready
  outSha: string;
  note: string;
}

const statusMiB = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;

async function child(a: ChildArgs): Promise<Row> {
  const { default: ort } = await import('onnxruntime-node');
  const opts = { intraOpNumThreads: 2, ...(a.prepack ? {} : { extra: { session: { disable_prepacking: '1' } } }) };
  const onnxPath = join(a.dir, 'model.onnx');
  const dataPath = join(a.dir, 'model.onnx_data');
  const size = a.K * a.N * 4;
  // ORT's one-time start-up, outside the clock: a tiny model with its weight inline.
  const tiny = await ort.InferenceSession.create(
    encodeModel({
      nodes: [{ opType: 'Gemm', inputs: ['A', 'B'], outputs: ['Z'] }],
      initializers: [{ name: 'B', dims: [1, 1], raw: new Uint8Array(new Float32Array([2]).buffer) }],
      inputs: [{ name: 'A', dims: [1, 1] }],
      outputs: [{ name: 'Z', dims: [1, 1] }],
    }),
    opts,
  );
  await tiny.run({ A: new ort.Tensor('float32', new Float32Array([1]), [1, 1]) });
  await tiny.release();
  const X = new ort.Tensor('float32', seededFloats(a.M * a.K, 99), [a.M, a.K]);
  const onnx = readFileSync(onnxPath);
  let into: LoadedBuffer | undefined;
  if (a.mode === 'reused') {
    into = await allocate(size);
    into.bytes.fill(1); // faulted in before the clock starts, as memory a pool kept
  }
  const shm = a.mode === 'shm' ? mkdtempSync('/dev/shm/dmaload-bench-onnx-') : undefined;
  const left = evictPath(dataPath);
  let note = left ? `${left} B stayed cached after eviction` : '';

  const anon0 = statusMiB('RssAnon');
  const rss0 = statusMiB('VmRSS');
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let session: Awaited<ReturnType<typeof ort.InferenceSession.create>>;
  let prepMs = 0;
  const withData = (data: Uint8Array) => ort.InferenceSession.create(onnx, { ...opts, externalData: [{ path: 'model.onnx_data', data }] });
  if (a.mode === 'path' || a.mode === 'path-evict') {
    session = await ort.InferenceSession.create(onnxPath, opts);
    if (a.mode === 'path-evict') evictPath(dataPath);
  } else if (a.mode === 'shm') {
    copyFileSync(onnxPath, join(shm!, 'model.onnx'));
    // A 32 MiB ring (4 slots of 8 MiB) instead of copy()'s default 256 MiB: less fresh memory to fault in.
    const r = await copy(dataPath, join(shm!, 'model.onnx_data'), { partSize: 16 * MiB, parts: 2 });
    prepMs = performance.now() - t0;
    note += `copy read ${r.readIo ?? '?'}, wrote ${r.io}`;
    session = await ort.InferenceSession.create(join(shm!, 'model.onnx'), opts);
    rmSync(shm!, { recursive: true, force: true }); // ORT keeps its own mapping (or its packed copy)
  } else if (a.mode === 'readfile') {
    const bytes = await readFile(dataPath);
    prepMs = performance.now() - t0;
    session = await withData(bytes);
  } else {
    const buf =
      a.mode === 'reused'
        ? await load(dataPath, { into })
        : a.mode === 'huge'
          ? await load(dataPath, { hugePages: true })
          : a.mode === 'memfd'
            ? await load(dataPath, { target: 'memfd' })
            : await load(dataPath);
    prepMs = performance.now() - t0;
    note += `io ${buf.stats.io}, memory ${buf.stats.memory}, huge pages ${buf.stats.hugePages}`;
    session = await withData(buf.bytes);
    buf.close(); // ORT copied the data during create()
  }
  const readyMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const anonMiB = statusMiB('RssAnon') - anon0;
  const peakMiB = statusMiB('VmHWM') - rss0;
  const cacheReady = pageCacheBytesOf(dataPath, size) ?? NaN;
  const t1 = performance.now();
  const y = (await session.run({ X })).Y!.data as Float32Array;
  const runMs = performance.now() - t1;
  const cacheRun = pageCacheBytesOf(dataPath, size) ?? NaN;
  await session.release();
  const outSha = createHash('sha256')
    .update(new Uint8Array(y.buffer, y.byteOffset, y.byteLength))
    .digest('hex');
  return { mode: a.mode, prepMs, readyMs, runMs, cpuMs: (c.user + c.system) / 1000, cacheReady, cacheRun, anonMiB, peakMiB, outSha, note };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const stat = (xs: number[], digits = 0) => `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') {
    process.stdout.write(JSON.stringify(await child(JSON.parse(argv[1]!) as ChildArgs)) + '\n');
    return;
  }
  const flags = argv.filter((x) => x.startsWith('--'));
  const pos = argv.filter((x, i) => !x.startsWith('--') && !(argv[i - 1] === '--modes'));
  const size = parseSize(pos[0] ?? '256MiB') ?? 256 * MiB;
  const rounds = Number(pos[1] ?? 5);
  const prepack = !flags.includes('--no-prepack');
  const mallocHuge = flags.includes('--malloc-huge');
  const mi = argv.indexOf('--modes');
  const modes = (mi >= 0 ? argv[mi + 1]!.split(',') : [...MODES]) as Mode[];
  const known = ['--no-prepack', '--malloc-huge', '--modes'];
  if (modes.some((m) => !MODES.includes(m)) || !(rounds >= 1) || flags.some((f) => !known.includes(f))) {
    console.error(`usage: onnx.js [SIZE] [ROUNDS] [--no-prepack] [--malloc-huge] [--modes ${MODES.join(',')}]`);
    process.exit(2);
  }
  if (modes.includes('shm') && !existsSync('/dev/shm')) throw new Error('mode shm needs /dev/shm');
  const N = 8192;
  const K = Math.max(1, Math.round(size / 4 / N));
  const dir = mkdtempSync(join(benchDiskDir(), 'dmaload-bench-onnx-'));
  try {
    const m = writeGemmModel(dir, { M: 4, K, N }, 7);
    const rows = new Map<Mode, Row[]>(modes.map((x) => [x, []]));
    const self = fileURLToPath(import.meta.url);
    for (let r = 0; r < rounds; r++) {
      for (const mode of modes) {
        const args: ChildArgs = { mode, dir, M: m.M, K, N, prepack };
        const env = mallocHuge ? { ...process.env, GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1' } : process.env;
        const p = spawnSync(process.execPath, [self, '--child', JSON.stringify(args)], { encoding: 'utf8', env });
        if (p.status !== 0) throw new Error(`${mode}: child failed (${p.status ?? p.signal})\n${p.stderr}`);
        rows.get(mode)!.push(JSON.parse(p.stdout.trim().split('\n').pop()!) as Row);
      }
    }
    const ref = rows.get('path')?.[0]?.outSha ?? [...rows.values()][0]![0]!.outSha;
    console.log(
      `ONNX Runtime (onnxruntime-node ${(await import('onnxruntime-node')).default.env.versions.node}), ` +
        `Gemm with a ${(m.weightBytes / MiB).toFixed(0)} MiB float32 external weight, cold, ${rounds} rounds, ways alternating, each in a fresh process; ` +
        `prepacking ${prepack ? 'on (ORT default)' : 'off'}${mallocHuge ? ', GLIBC_TUNABLES=glibc.malloc.hugetlb=1' : ''}; ms, medians (min–max)`,
    );
    console.log(
      'way        ready               of which load/copy   first run        ready+run         CPU to ready      page cache at ready / after run   RssAnon +MiB at ready   peak RSS +MiB   output',
    );
    for (const [mode, rs] of rows) {
      const pc = (f: (x: Row) => number) => `${(median(rs.map(f)) / MiB).toFixed(0)} MiB`;
      const same = rs.every((x) => x.outSha === ref) ? 'same bits as path' : 'DIFFERS';
      console.log(
        `${mode.padEnd(10)} ${stat(rs.map((x) => x.readyMs)).padEnd(19)} ${(mode.startsWith('path') ? '—' : stat(rs.map((x) => x.prepMs))).padEnd(20)} ${stat(rs.map((x) => x.runMs)).padEnd(16)} ` +
          `${stat(rs.map((x) => x.readyMs + x.runMs)).padEnd(17)} ${stat(rs.map((x) => x.cpuMs)).padEnd(17)} ${`${pc((x) => x.cacheReady)} / ${pc((x) => x.cacheRun)}`.padEnd(33)} ` +
          `${stat(rs.map((x) => x.anonMiB)).padEnd(23)} ${stat(rs.map((x) => x.peakMiB)).padEnd(15)} ${same}${rs[0]!.note ? `  (${rs[0]!.note})` : ''}`,
      );
    }
    if ([...rows.values()].some((rs) => rs.some((x) => x.outSha !== ref))) process.exitCode = 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
