import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { load } from '../src/index.js';
import { splitByResidency } from '../src/pipeline/plan.js';
import { setCache } from '../src/bench/bench.js';
import { cachedBytes, evictFile, leakCheck, makeFile, sha256, tempDir, warmFile } from './helpers.js';

// The rule these tests pin down (cached ranges copied): measured rates could choose direct I/O on another machine
// (test/io-rates.test.ts covers that).
process.env.DMALOAD_IO_RATES = 'off';
const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;

const cached = cachedBytes;

/** Caches every other 8 MiB range of the file, as the bench's --cache half does. */
async function halfWarm(path: string, size: number): Promise<number> {
  return (await setCache(path, size, 'half'))!;
}

test('auto on a cold file: all direct, nothing cached', async () => {
  const size = 40 * MiB + 5;
  const f = makeFile(dir, 'cold', size);
  evictFile(f.path);
  const b = await load(f.path);
  assert.equal(sha256(b.bytes), f.sha256);
  assert.equal(b.stats.io, 'direct');
  assert.equal(b.stats.directBytes, size);
  assert.equal(b.stats.copiedBytes, 0);
  assert.equal(cached(f.path, size), 0);
  b.close();
});

test('auto on a warm file: all copied from the cache, the cache left as it was', async () => {
  const size = 40 * MiB + 5;
  const f = makeFile(dir, 'warm', size);
  warmFile(f.path);
  const before = cached(f.path, size);
  const b = await load(f.path);
  assert.equal(sha256(b.bytes), f.sha256);
  assert.equal(b.stats.io, 'buffered');
  assert.equal(b.stats.copiedBytes, size);
  // Why it was not direct, and how to see a cold load: a first load of a file just written reads like a failure else.
  assert.match(b.stats.ioReason ?? '', /page cache/);
  assert.match(b.stats.ioReason ?? '', /evict/);
  assert.equal(cached(f.path, size), before);
  b.close();
});

test('auto on a half-warm file (alternate 8 MiB cached): mixed, bytes exact, no cache added', async () => {
  const size = 64 * MiB + 4097;
  const f = makeFile(dir, 'half', size);
  for (const target of ['memory', 'memfd'] as const) {
    await halfWarm(f.path, size);
    const before = cached(f.path, size);
    assert.ok(before > 30 * MiB && before < 40 * MiB, `half cached: ${before}`);
    const leaks = leakCheck();
    const b = await load(f.path, { target });
    assert.equal(sha256(b.bytes), f.sha256);
    assert.equal(b.stats.io, 'mixed');
    assert.equal(b.stats.directBytes + b.stats.copiedBytes, size);
    assert.ok(b.stats.copiedBytes >= 30 * MiB, `copied ${b.stats.copiedBytes}`);
    assert.ok(cached(f.path, size) <= before, 'keepCache false adds nothing');
    b.close();
    assert.equal(await leaks(), undefined);
  }
});

test('auto with partSize on a half-warm file, and io direct ignores the cache', async () => {
  const size = 48 * MiB;
  const f = makeFile(dir, 'half-parts', size);
  await halfWarm(f.path, size);
  const b = await load(f.path, { partSize: 5 * MiB });
  assert.equal(sha256(b.bytes), f.sha256);
  assert.equal(b.stats.io, 'mixed');
  b.close();
  const d = await load(f.path, { io: 'direct' });
  assert.equal(d.stats.io, 'direct');
  assert.equal(d.stats.copiedBytes, 0);
  assert.equal(sha256(d.bytes), f.sha256);
  d.close();
});

test('auto while the cache changes during the load: bytes exact', async () => {
  const size = 64 * MiB;
  const f = makeFile(dir, 'churn', size);
  await halfWarm(f.path, size);
  let n = 0;
  const b = await load(f.path, {
    chunkSize: 256 * 1024,
    queueDepth: 2,
    onProgress: () => {
      // Evict and re-cache while both paths are reading.
      if (n++ % 2) evictFile(f.path);
      else warmFile(f.path);
    },
  });
  assert.equal(sha256(b.bytes), f.sha256);
  b.close();
});

test('splitByResidency: page-aligned runs, short cached runs read directly', () => {
  const pages = new Uint8Array(1024);
  pages.fill(1, 0, 512); // 2 MiB cached
  pages.fill(1, 600, 610); // 40 KiB island: too short to be worth a copy
  const [direct, copy] = splitByResidency([0, 0, 1024 * 4096], pages, MiB);
  assert.deepEqual(copy, [0, 0, 512 * 4096]);
  assert.deepEqual(direct, [512 * 4096, 512 * 4096, 512 * 4096]);
  const [d2, c2] = splitByResidency([100 * 4096, 0, 10], pages, MiB);
  assert.deepEqual(c2, []);
  assert.deepEqual(d2, [100 * 4096, 0, 10]);
});

test('keepCache: true keeps what copying brought in', async () => {
  const size = 16 * MiB;
  const f = makeFile(dir, 'keep', size);
  warmFile(f.path);
  const b = await load(f.path, { keepCache: true });
  assert.equal(b.stats.io, 'buffered');
  assert.equal(sha256(b.bytes), f.sha256);
  b.close();
});
