import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { loadRanges } from '../src/index.js';
import { leakCheck, makeFile, sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);

test('loadRanges: each range lands whole, at its file alignment, reading only its blocks', async () => {
  const size = 5 * 1024 * 1024 + 333;
  const f = makeFile(dir, 'r', size);
  const file = readFileSync(f.path);
  const ranges = [
    { offset: 0, length: 1 },
    { offset: 100, length: 50 }, // shares block 0 with the first
    { offset: 8192 + 7, length: 4096 * 3 },
    { offset: 2 * 1024 * 1024, length: 1024 * 1024 },
    { offset: size - 10, length: 10 }, // ends at EOF, mid-block
  ];
  for (const io of ['direct', 'buffered'] as const) {
    for (const target of ['memory', 'memfd'] as const) {
      const leaks = leakCheck();
      const { buffer, offsets } = await loadRanges(f.path, ranges, { io, target });
      ranges.forEach((r, i) => {
        const got = buffer.bytes.subarray(offsets[i], offsets[i]! + r.length);
        assert.equal(sha256(got), sha256(file.subarray(r.offset, r.offset + r.length)), `${io} ${target} range ${i}`);
        assert.equal(offsets[i]! % 512, r.offset % 512, 'file alignment kept');
      });
      const wanted = ranges.reduce((n, r) => n + r.length, 0);
      assert.ok(buffer.stats.bytesRead >= wanted);
      assert.ok(buffer.stats.bytesRead <= wanted + 4 * 2 * 4096, `read ${buffer.stats.bytesRead} for ${wanted} wanted`);
      buffer.close();
      assert.equal(await leaks(), undefined);
    }
  }
});

test('loadRanges: bad ranges are refused by code, nothing leaked', async () => {
  const f = makeFile(dir, 'bad', 10_000);
  const leaks = leakCheck();
  await assert.rejects(loadRanges(f.path, [{ offset: 9_000, length: 2_000 }]), { code: 'ERR_OUT_OF_RANGE', path: f.path });
  await assert.rejects(loadRanges(f.path, [{ offset: 10, length: 0 }]), { code: 'ERR_OUT_OF_RANGE', message: /ranges\[0\]\.length/ });
  await assert.rejects(
    loadRanges(f.path, [
      { offset: 100, length: 10 },
      { offset: 50, length: 10 },
    ]),
    { code: 'ERR_OUT_OF_RANGE', message: /ranges\[1\]\.offset/ },
  );
  await assert.rejects(loadRanges(f.path, [{ offset: -1, length: 10 }]), { code: 'ERR_OUT_OF_RANGE' });
  await assert.rejects(loadRanges(f.path, 'all' as never), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.equal(await leaks(), undefined);
});
