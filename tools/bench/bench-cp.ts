/**
 * `npm run bench:cp [SIZE] [ROUNDS]`: writes at the device's limit, against their peers in the same run, rounds
 * alternating (A B C … A B C …), medians and the ratio of every round.
 *
 * - Copy: `dmaload cp` (the CLI, wall time of the whole command, Node's start included) against fio copying the
 *   same way (a read job on the source and a write job on a new file at once, the same block size and depth as
 *   dmaload's copy, end_fsync=1; fio's job runtime, its start and file layout excluded), `dd` with O_DIRECT on
 *   both sides and coreutils `cp`. Page cache left on both files is measured after each copy.
 * - Capture: createWriter (its defaults: 8 MiB requests, 8 in flight, fsync and atomic naming at close) fed 8 MiB
 *   chunks from a JS buffer, against fio's O_DIRECT sequential write with the same block size and depth and
 *   end_fsync=1. The writer's time runs from createWriter() to the end of close().
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { benchDiskDir, writeSeededFile, seededBytes } from '../../src/bench/data.js';
import { evictPath, pageCacheBytesOf } from '../../src/pipeline/cache.js';
import { DEFAULTS } from '../../src/api/options.js';
import { createWriter } from '../../src/api/writer.js';
import { GiB, MiB, parseSize } from '../../src/core/util.js';

const run = promisify(execFile);
const bin = join(resolve(dirname(fileURLToPath(import.meta.url)), '../../..'), 'bin/dmaload.js');
const size = parseSize(process.argv[2] ?? '1GiB') ?? GiB;
const rounds = Number(process.argv[3] ?? 5);

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const mbps = (ms: number) => size / 1e6 / (ms / 1000);

interface FioJob {
  job_runtime: number;
}
async function fio(args: string[]): Promise<FioJob[]> {
  const { stdout } = await run('fio', ['--ioengine=io_uring', '--direct=1', `--size=${size}`, '--output-format=json', ...args], { maxBuffer: 16 << 20 });
  return (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs;
}

const dir = mkdtempSync(join(benchDiskDir(), 'dmaload-bench-cp-'));
try {
  if (statfsSync(dir).bavail * statfsSync(dir).bsize < 3 * size + GiB) throw new Error(`not enough space in ${dir}`);
  const src = join(dir, 'src.bin');
  const dst = join(dir, 'dst.bin');
  writeSeededFile(src, size, 1);
  const { chunkSize: cpBs, queueDepth: cpDepth } = DEFAULTS.copy;
  const copies: Record<string, () => Promise<number>> = {
    'coreutils cp': async () => timed(() => run('cp', [src, dst])),
    'dd direct 16M': async () => timed(() => run('dd', [`if=${src}`, `of=${dst}`, 'iflag=direct', 'oflag=direct', 'bs=16M', 'status=none'])),
    'dmaload cp': async () => timed(() => run(process.execPath, [bin, 'cp', src, dst])),
    [`fio read+write (bs ${cpBs / MiB}M, depth ${cpDepth})`]: async () => {
      const jobs = await fio([
        `--bs=${cpBs}`,
        `--iodepth=${cpDepth}`,
        '--name=r',
        `--filename=${src}`,
        '--rw=read',
        '--name=w',
        `--filename=${dst}`,
        '--rw=write',
        '--end_fsync=1',
      ]);
      return Math.max(...jobs.map((j) => j.job_runtime));
    },
  };
  const res: Record<string, { ms: number[]; srcCache: number[]; dstCache: number[] }> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, f] of Object.entries(copies)) {
      rmSync(dst, { force: true });
      evictPath(src);
      const ms = await f();
      const e = (res[name] ??= { ms: [], srcCache: [], dstCache: [] });
      e.ms.push(ms);
      e.srcCache.push(pageCacheBytesOf(src, size) ?? NaN);
      e.dstCache.push(pageCacheBytesOf(dst, size) ?? NaN);
    }
  }
  console.log(`copy of a cold ${size / MiB} MiB file, median of ${rounds} rounds (min–max)`);
  console.log('method                             ms (min–max)          MB/s   src cache  dst cache');
  for (const [name, e] of Object.entries(res)) {
    const ms = median(e.ms);
    const range = `${Math.min(...e.ms).toFixed(0)}–${Math.max(...e.ms).toFixed(0)}`;
    console.log(
      `${name.padEnd(34)} ${ms.toFixed(0).padStart(6)} (${range})`.padEnd(56) +
        `${mbps(ms).toFixed(0).padStart(6)}   ${((100 * Math.max(...e.srcCache)) / size).toFixed(1).padStart(6)}%   ${((100 * Math.max(...e.dstCache)) / size).toFixed(1).padStart(6)}%`,
    );
  }
  const fioName = Object.keys(copies).find((n) => n.startsWith('fio'))!;
  const cpRatios = res['dmaload cp']!.ms.map((ms, i) => res[fioName]!.ms[i]! / ms);
  console.log(
    `dmaload cp speed / fio's, per round: ${cpRatios.map((x) => x.toFixed(2)).join(' ')}; median ${median(cpRatios).toFixed(2)}, min ${Math.min(...cpRatios).toFixed(2)}`,
  );

  // Capture: a producer writing chunks as fast as the writer takes them, against fio's sequential write.
  const { chunkSize: bs, queueDepth: depth } = DEFAULTS.write;
  const chunk = seededBytes(bs, 3);
  const cap: number[] = [];
  const fioW: number[] = [];
  for (let r = 0; r < rounds; r++) {
    rmSync(dst, { force: true });
    const t0 = performance.now();
    const w = await createWriter(dst, {});
    for (let off = 0; off < size; off += chunk.length) await w.write(chunk.subarray(0, Math.min(chunk.length, size - off)));
    await w.close();
    cap.push(performance.now() - t0);
    rmSync(dst, { force: true });
    try {
      const [j] = await fio(['--name=w', `--filename=${dst}`, '--rw=write', `--bs=${bs}`, `--iodepth=${depth}`, '--end_fsync=1']);
      fioW.push(j!.job_runtime);
    } catch (e) {
      console.log(`fio unavailable: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  console.log(
    `\ncapture writer (${bs / MiB} MiB chunks, depth ${depth}, fsync at close), median of ${rounds} rounds: ${mbps(median(cap)).toFixed(0)} MB/s (${cap.map((ms) => mbps(ms).toFixed(0)).join(' ')})`,
  );
  if (fioW.length === cap.length) {
    const ratios = cap.map((ms, i) => fioW[i]! / ms);
    console.log(
      `fio O_DIRECT sequential write (bs ${bs / MiB}M, depth ${depth}, end_fsync=1): ${mbps(median(fioW)).toFixed(0)} MB/s (${fioW.map((ms) => mbps(ms).toFixed(0)).join(' ')})`,
    );
    console.log(
      `writer speed / fio's, per round: ${ratios.map((x) => x.toFixed(2)).join(' ')}; median ${median(ratios).toFixed(2)}, min ${Math.min(...ratios).toFixed(2)}`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}
