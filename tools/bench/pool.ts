/**
 * `npm run bench:pool [SIZE] [ROUNDS]`: swapping between two models in one process, cold each time, with and
 * without a pool, rounds alternating (fresh A, pooled A, fresh B, pooled B, …): what a swap costs in wall time and
 * CPU when the memory is fresh (load, close) against memory the pool kept (pool.load, pool.release). Every load is
 * checked against its file's SHA-256.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { benchDiskDir, writeSeededFile } from '../../src/bench/data.js';
import { evictPath } from '../../src/pipeline/cache.js';
import { GiB, parseSize } from '../../src/core/util.js';
import { createPool, load } from '../../src/index.js';
import type { LoadedBuffer } from '../../src/index.js';

const size = parseSize(process.argv[2] ?? '1GiB') ?? GiB;
const rounds = Number(process.argv[3] ?? 5);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const dir = mkdtempSync(join(benchDiskDir(), 'dmaload-bench-pool-'));
try {
  if (statfsSync(dir).bavail * statfsSync(dir).bsize < 2 * size + GiB) throw new Error(`not enough space in ${dir}`);
  const files = ['a', 'b'].map((n, i) => {
    const path = join(dir, `${n}.bin`);
    return { path, sha256: writeSeededFile(path, size, 40 + i) };
  });
  const check = (b: LoadedBuffer, want: string) => {
    const h = createHash('sha256');
    for (const w of b.windows()) h.update(w);
    if (h.digest('hex') !== want) throw new Error(`${b.path}: bytes differ from the file`);
  };
  const pool = createPool();
  const rows: Record<'fresh' | 'pool', { ms: number[]; cpu: number[]; memory: string[] }> = {
    fresh: { ms: [], cpu: [], memory: [] },
    pool: { ms: [], cpu: [], memory: [] },
  };
  for (let r = 0; r < rounds; r++) {
    for (const f of files) {
      for (const kind of ['fresh', 'pool'] as const) {
        evictPath(f.path);
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        const b = kind === 'fresh' ? await load(f.path) : await pool.load(f.path);
        const ms = performance.now() - t0;
        const c = process.cpuUsage(c0);
        check(b, f.sha256);
        if (kind === 'fresh') b.close();
        else pool.release(b);
        // The first pooled load has nothing to reuse yet: it is fresh, and counted as what it was.
        rows[kind].ms.push(ms);
        rows[kind].cpu.push((c.user + c.system) / 1000);
        rows[kind].memory.push(b.stats.memory ?? '?');
      }
    }
  }
  pool.close();
  console.log(`swapping two ${(size / GiB).toFixed(2)} GiB files, cold, ${rounds} rounds × 2 files, alternating; medians (min–max)`);
  for (const [kind, v] of Object.entries(rows)) {
    const ms = median(v.ms);
    console.log(
      `${kind === 'fresh' ? 'load + close        ' : 'pool.load + release'}  ${ms.toFixed(0)} ms (${Math.min(...v.ms).toFixed(0)}–${Math.max(...v.ms).toFixed(0)})  ` +
        `${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s  CPU ${median(v.cpu).toFixed(0)} ms (${Math.min(...v.cpu).toFixed(0)}–${Math.max(...v.cpu).toFixed(0)})  memory: ${v.memory.join(' ')}`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
