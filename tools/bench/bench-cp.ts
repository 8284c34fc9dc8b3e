/**
 * `npm run bench:cp`: dmaload cp against coreutils cp and dd (O_DIRECT both sides) on a cold 1 GiB file, and the
 * capture writer against fio's sequential O_DIRECT write, alternating rounds, medians. Page cache left behind is
 * measured for both files after each copy.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { writeSeededFile, seededBytes } from './data.js';
import { evictPath, pageCacheBytesOf } from '../../src/pipeline/cache.js';
import { createWriter } from '../../src/api/writer.js';
import { GiB, MiB, parseSize } from '../../src/core/util.js';

const run = promisify(execFile);
const bin = join(resolve(dirname(fileURLToPath(import.meta.url)), '../../..'), 'bin/dmaload.js');
const size = parseSize(process.argv[2] ?? '1GiB') ?? GiB;
const rounds = Number(process.argv[3] ?? 3);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

const dir = mkdtempSync(join(process.env.DMALOAD_BENCH_DIR ?? tmpdir(), 'dmaload-bench-cp-'));
try {
  if (statfsSync(dir).bavail * statfsSync(dir).bsize < 3 * size + GiB) throw new Error(`not enough space in ${dir}`);
  const src = join(dir, 'src.bin');
  writeSeededFile(src, size, 1);
  const copies: Record<string, (dst: string) => Promise<unknown>> = {
    'coreutils cp': (dst) => run('cp', [src, dst]),
    'dd direct 16M': (dst) => run('dd', [`if=${src}`, `of=${dst}`, 'iflag=direct', 'oflag=direct', 'bs=16M', 'status=none']),
    'dmaload cp': (dst) => run(process.execPath, [bin, 'cp', src, dst]),
  };
  const res: Record<string, { ms: number[]; srcCache: number[]; dstCache: number[] }> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, f] of Object.entries(copies)) {
      const dst = join(dir, 'dst.bin');
      rmSync(dst, { force: true });
      evictPath(src);
      const t = performance.now();
      await f(dst);
      const ms = performance.now() - t;
      const e = (res[name] ??= { ms: [], srcCache: [], dstCache: [] });
      e.ms.push(ms);
      e.srcCache.push(pageCacheBytesOf(src, size));
      e.dstCache.push(pageCacheBytesOf(dst, size));
    }
  }
  console.log(`copy of a cold ${size / MiB} MiB file, median of ${rounds} rounds (wall time of the whole command)`);
  console.log('method          ms      MB/s   src cache  dst cache');
  for (const [name, e] of Object.entries(res)) {
    const ms = median(e.ms);
    console.log(`${name.padEnd(14)} ${ms.toFixed(0).padStart(6)} ${(size / 1e6 / (ms / 1000)).toFixed(0).padStart(7)}   ${((100 * Math.max(...e.srcCache)) / size).toFixed(1).padStart(6)}%   ${((100 * Math.max(...e.dstCache)) / size).toFixed(1).padStart(6)}%`);
  }

  // Capture: a producer writing 4 MiB chunks as fast as the writer takes them, against fio's sequential write.
  const chunk = seededBytes(4 * MiB, 3);
  const cap: number[] = [];
  const fio: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const dst = join(dir, 'cap.bin');
    rmSync(dst, { force: true });
    const w = await createWriter(dst, {});
    for (let off = 0; off < size; off += chunk.length) await w.write(chunk.subarray(0, Math.min(chunk.length, size - off)));
    const out = await w.close();
    cap.push(out.bytesPerSec / 1e6);
    rmSync(dst, { force: true });
    try {
      const { stdout } = await run('fio', ['--name=w', `--filename=${dst}`, '--rw=write', '--bs=4M', '--iodepth=16', '--ioengine=io_uring', '--direct=1', `--size=${size}`, '--end_fsync=1', '--output-format=json']);
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ write: { bw_bytes: number } }> };
      fio.push(j.jobs[0]!.write.bw_bytes / 1e6);
    } catch (e) {
      console.log(`fio unavailable: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  console.log(`\ncapture writer (4 MiB chunks, fsync at close): ${median(cap).toFixed(0)} MB/s; fio O_DIRECT sequential write (bs 4M, depth 16, end_fsync): ${fio.length ? median(fio).toFixed(0) : 'n/a'} MB/s`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
