import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { load, loadRanges } from '../src/index.js';
import { leakCheck, makeFile, sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;

test('parts: partSize splits memory and memfd loads, overlap on and off, bytes exact, parts timed', async () => {
  const size = 20 * MiB + 4097;
  const f = makeFile(dir, 'p', size);
  for (const target of ['memory', 'memfd'] as const) {
    for (const overlap of [true, false]) {
      for (const io of ['direct', 'buffered'] as const) {
        const leaks = leakCheck();
        let last = 0;
        const b = await load(f.path, { target, io, overlap, partSize: 4 * MiB, onProgress: (p) => (last = p.bytes) });
        assert.equal(sha256(b.bytes), f.sha256, `${target} ${io} overlap ${overlap}`);
        assert.equal(b.stats.overlap, overlap);
        assert.equal(b.stats.parts.length, 6);
        assert.deepEqual(
          b.stats.parts.map((p) => p.size),
          [4, 4, 4, 4, 4].map((n) => n * MiB).concat(4097),
        );
        // Each part's phases are wall times inside the load (all rounded to 0.01 ms).
        assert.ok(
          b.stats.parts.every((p) => p.allocMs >= 0 && p.allocMs <= b.stats.ms + 0.01 && p.ioMs >= 0 && p.ioMs <= b.stats.ms + 0.01),
          JSON.stringify(b.stats.parts),
        );
        assert.ok(b.stats.ioMs <= b.stats.ms + 1 && b.stats.allocMs <= b.stats.ms + 1, 'phases are wall times inside the load');
        assert.equal(last, size, 'progress sums every part');
        b.close();
        assert.equal(await leaks(), undefined);
      }
    }
  }
});

test('parts: overlap off with one part allocates first, then reads', async () => {
  const f = makeFile(dir, 'one', 3 * MiB + 1);
  const b = await load(f.path, { overlap: false });
  assert.equal(sha256(b.bytes), f.sha256);
  assert.equal(b.stats.parts.length, 1);
  b.close();
});

test('parts: selective ranges across part boundaries', async () => {
  const f = makeFile(dir, 'r', 9 * MiB);
  const { buffer, offsets } = await loadRanges(
    f.path,
    [
      { offset: MiB - 10, length: 3 * MiB },
      { offset: 7 * MiB, length: 5 },
    ],
    { partSize: MiB },
  );
  const { readFileSync } = await import('node:fs');
  const file = readFileSync(f.path);
  assert.equal(sha256(buffer.bytes.subarray(offsets[0], offsets[0]! + 3 * MiB)), sha256(file.subarray(MiB - 10, 4 * MiB - 10)));
  assert.equal(sha256(buffer.bytes.subarray(offsets[1], offsets[1]! + 5)), sha256(file.subarray(7 * MiB, 7 * MiB + 5)));
  buffer.close();
});

test('parts: abort mid-way through a parts load frees every part, overlap on and off', async () => {
  const f = makeFile(dir, 'abort', 32 * MiB);
  for (const target of ['memory', 'memfd'] as const) {
    for (const overlap of [true, false]) {
      const leaks = leakCheck();
      const ac = new AbortController();
      const p = load(f.path, {
        target,
        overlap,
        partSize: 2 * MiB,
        chunkSize: 65536,
        queueDepth: 1,
        signal: ac.signal,
        onProgress: (pr) => pr.bytes > 3 * MiB && ac.abort(),
      });
      await assert.rejects(p, { name: 'AbortError' });
      assert.equal(await leaks(), undefined);
    }
  }
});

test('parts: bad partSize and overlap values are refused by code', async () => {
  const f = makeFile(dir, 'bad', 100);
  await assert.rejects(load(f.path, { partSize: 1000 }), { code: 'ERR_OUT_OF_RANGE', message: /partSize/ });
  await assert.rejects(load(f.path, { partSize: 4097 }), { code: 'ERR_OUT_OF_RANGE', message: /partSize/ });
  // allocate() takes the same partSize, checked the same way (0 used to loop until memory ran out).
  const { allocate } = await import('../src/index.js');
  for (const partSize of [0, 1000, 4097, -4096, 1.5 * 4096])
    await assert.rejects(allocate(1 << 20, { partSize }), { code: 'ERR_OUT_OF_RANGE', message: /partSize/ });
  await assert.rejects(allocate(1 << 20, { partSize: 'x' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /partSize/ });
  const ok = await allocate(3 * 4096 + 1, { partSize: 4096 });
  assert.equal(ok.bytes.length, 3 * 4096 + 1);
  ok.close();
  await assert.rejects(load(f.path, { overlap: 'yes' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /overlap/ });
  await assert.rejects(load(f.path, { keepCache: 1 as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /keepCache/ });
  await assert.rejects(load(f.path, { target: 'dma-heap', heap: '../x' }), { code: 'ERR_INVALID_ARG_TYPE', message: /heap/ });
});
