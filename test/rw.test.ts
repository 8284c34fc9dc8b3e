import assert from 'node:assert/strict';
import { open, readFile } from 'node:fs/promises';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { allocate, load, readInto, writeFrom } from '../src/index.js';
import { leakCheck, makeFile, seededBytes, sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;

describe('readInto', () => {
  test('bytes exact at offsets, every io, sizes 1, 4095, 4097, 64 MiB + 3', async () => {
    const f = makeFile(dir, 'src', 64 * MiB + 4096 * 3 + 11);
    const file = await readFile(f.path);
    for (const length of [1, 4095, 4097, 64 * MiB + 3]) {
      for (const io of ['auto', 'buffered'] as const) {
        const leaks = leakCheck();
        const buf = await allocate(length + 8192);
        const fileOffset = 4096 + 17;
        const bufOffset = 100;
        const n = await readInto(buf, f.path, { fileOffset, bufOffset, length, io });
        assert.equal(n, length);
        assert.equal(sha256(buf.bytes.subarray(bufOffset, bufOffset + length)), sha256(file.subarray(fileOffset, fileOffset + length)), `${io} ${length}`);
        buf.close();
        assert.equal(await leaks(), undefined);
      }
    }
  });

  test('io direct with aligned values, into a memfd buffer, through an open FileHandle', async () => {
    const f = makeFile(dir, 'aligned', 8 * MiB);
    const file = await readFile(f.path);
    const buf = await allocate(4 * MiB, { target: 'memfd' });
    const fh = await open(f.path, 'r');
    try {
      const n = await readInto(buf, fh, { fileOffset: 2 * MiB, bufOffset: 4096, length: 3 * MiB, io: 'direct' });
      assert.equal(n, 3 * MiB);
      assert.equal(sha256(buf.bytes.subarray(4096, 4096 + 3 * MiB)), sha256(file.subarray(2 * MiB, 5 * MiB)));
    } finally {
      await fh.close();
      buf.close();
    }
  });

  test('mismatched buffer/file alignment under auto: bounce buffers, still exact', async () => {
    const f = makeFile(dir, 'mis', 3 * MiB);
    const file = await readFile(f.path);
    const buf = await allocate(3 * MiB);
    const n = await readInto(buf, f.path, { fileOffset: 4096, bufOffset: 1, length: 2 * MiB, io: 'auto' });
    assert.equal(n, 2 * MiB);
    assert.equal(sha256(buf.bytes.subarray(1, 1 + 2 * MiB)), sha256(file.subarray(4096, 4096 + 2 * MiB)));
    buf.close();
  });

  test('reads past EOF return the count read; the rest of the range is untouched', async () => {
    const size = 10_000;
    const f = makeFile(dir, 'eof', size);
    const file = await readFile(f.path);
    // Unaligned and aligned ranges in every io mode: 'direct' and an aligned 'auto' read whole blocks, and must
    // still leave every byte past the returned count as it was.
    const cases = [
      ['auto', 9000, 4096],
      ['auto', 8192, 8192],
      ['buffered', 9000, 4096],
      ['buffered', 8192, 8192],
      ['direct', 8192, 8192],
      ['direct', 4096, 12288],
    ] as const;
    for (const [io, from, length] of cases) {
      const buf = await allocate(16384);
      buf.bytes.fill(0xee);
      const n = await readInto(buf, f.path, { fileOffset: from, length, io });
      assert.equal(n, size - from, `${io} ${from}+${length}`);
      assert.equal(sha256(buf.bytes.subarray(0, n)), sha256(file.subarray(from)));
      assert.ok(
        buf.bytes.subarray(n).every((b) => b === 0xee),
        `${io} ${from}+${length}: bytes past the count were overwritten`,
      );
      buf.close();
    }
  });

  test('validations, each by code', async () => {
    const f = makeFile(dir, 'v', 64 * 1024);
    const leaks = leakCheck();
    const buf = await allocate(8192);
    await assert.rejects(readInto(buf, f.path, { length: 0 }), { code: 'ERR_OUT_OF_RANGE', message: /"length"/ });
    await assert.rejects(readInto(buf, f.path, { bufOffset: 8000, length: 1000 }), { code: 'ERR_OUT_OF_RANGE', message: /bufOffset \+ length/ });
    // Past 2^53: exact in BigInt, refused rather than rounded.
    await assert.rejects(readInto(buf, f.path, { bufOffset: 2n ** 60n, length: 1 }), { code: 'ERR_OUT_OF_RANGE', message: /bufOffset \+ length/ });
    await assert.rejects(readInto(buf, f.path, { bufOffset: 2 ** 53, length: 1 }), { code: 'ERR_OUT_OF_RANGE', message: /bufOffset/ });
    await assert.rejects(readInto(buf, f.path, { fileOffset: 2n ** 63n - 2n, length: 10 }), { code: 'ERR_OUT_OF_RANGE', message: /wrap/ });
    await assert.rejects(readInto(buf, f.path, { fileOffset: -1, length: 10 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(readInto(buf, f.path, { fileOffset: 100, length: 4096, io: 'direct' }), { code: 'ERR_DIRECT_IO_ALIGNMENT', message: /fileOffset/ });
    await assert.rejects(readInto(buf, f.path, { bufOffset: 100, length: 4096, io: 'direct' }), { code: 'ERR_DIRECT_IO_ALIGNMENT', message: /bufOffset/ });
    await assert.rejects(readInto(buf, f.path, { length: 1000, io: 'direct' }), { code: 'ERR_DIRECT_IO_ALIGNMENT', message: /length/ });
    await assert.rejects(readInto(buf, join(dir, 'missing'), { length: 10 }), { code: 'ENOENT' });
    await assert.rejects(readInto(buf, dir, { length: 10 }), { code: 'EISDIR' });
    await assert.rejects(readInto(new Uint8Array(10) as never, f.path), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(readInto(buf, f.path, { io: 'fast' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    const fh = await open(f.path, 'r');
    await fh.close();
    await assert.rejects(readInto(buf, fh, { length: 10 }), { code: 'ERR_FILE_CLOSED' });
    buf.close();
    await assert.rejects(readInto(buf, f.path, { length: 10 }), { code: 'ERR_BUFFER_CLOSED' });
    assert.equal(await leaks(), undefined);
  });

  test('close() during a readInto waits for the I/O before freeing', async () => {
    const f = makeFile(dir, 'race', 32 * MiB);
    const file = await readFile(f.path);
    const b = await load(f.path);
    const p = readInto(b, f.path, { length: 32 * MiB, io: 'direct' });
    b.close();
    assert.equal(await p, 32 * MiB);
    assert.throws(() => b.bytes, { code: 'ERR_BUFFER_CLOSED' });
    void file;
  });
});

describe('writeFrom', () => {
  test('bytes exact into the middle of an existing file, sizes 1, 4095, 4097, 64 MiB + 3', async () => {
    for (const length of [1, 4095, 4097, 64 * MiB + 3]) {
      for (const io of ['auto', 'buffered'] as const) {
        const f = makeFile(dir, `dst-${length}-${io}`, 70 * MiB, 7);
        const before = await readFile(f.path);
        const buf = await allocate(length + 300);
        buf.bytes.set(seededBytes(length + 300, length));
        const fileOffset = 12345;
        const n = await writeFrom(buf, f.path, { fileOffset, bufOffset: 300, length, io, fsync: true });
        assert.equal(n, length);
        const after = await readFile(f.path);
        const expect = Buffer.from(before);
        expect.set(buf.bytes.subarray(300, 300 + length), fileOffset);
        assert.equal(after.length, before.length, 'size unchanged');
        assert.equal(sha256(after), sha256(expect), `${io} ${length}`);
        buf.close();
      }
    }
  });

  test('creates a missing file; io direct with aligned values', async () => {
    const p = join(dir, 'new');
    const buf = await allocate(MiB);
    buf.bytes.set(seededBytes(MiB, 3));
    assert.equal(await writeFrom(buf, p, { fileOffset: 8192, io: 'direct' }), MiB);
    const got = await readFile(p);
    assert.equal(got.length, 8192 + MiB);
    assert.equal(sha256(got.subarray(8192)), sha256(buf.bytes));
    assert.ok(got.subarray(0, 8192).every((b) => b === 0));
    buf.close();
  });

  test('validations mirror readInto', async () => {
    const p = join(dir, 'w-v');
    writeFileSync(p, 'x');
    const buf = await allocate(4096);
    await assert.rejects(writeFrom(buf, p, { length: 0 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(writeFrom(buf, p, { fileOffset: 1, io: 'direct' }), { code: 'ERR_DIRECT_IO_ALIGNMENT' });
    await assert.rejects(writeFrom(buf, '/dev/zero'), { code: 'ERR_NOT_REGULAR_FILE' });
    buf.close();
    await assert.rejects(writeFrom(buf, p), { code: 'ERR_BUFFER_CLOSED' });
  });
});
