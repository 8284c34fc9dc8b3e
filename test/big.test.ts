/**
 * Files and buffers over 4 GiB, on every supported Node: load, readInto, save, copy and the CLI's --hash, byte-exact
 * through windows. Node 20's typed arrays stop at 4 GiB: there `bytes` is a coded error and `view()` still works.
 * The files are sparse (holes read as zeros) with random islands at the start, around 4 GiB and at the end, and
 * their hashes come from the islands, not from reading them.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { allocate, copy, load, loadModel, loadRanges, readInto, save } from '../src/index.js';
import { nginxMissing, startNginx } from './net/nginx.js';
import { native } from '../src/engine/binding.js';
import { cli } from './cli/run.js';
import { bufferSha256, fileSha256Streamed, leakCheck, makeFile, makeSparseFile, needsDirect, sha256, tempDir } from './helpers.js';

const GiB = 2 ** 30;
const { dir, cleanup } = tempDir('dmaload-big-');
after(cleanup);

// CI runs these on Node 20, 22 and 24 and under the sanitizers; its tmpfs and non-root runs, which vary something
// else, set DMALOAD_SKIP_BIG=1 to stay within time.
const skipBig = process.env.DMALOAD_SKIP_BIG === '1' ? 'DMALOAD_SKIP_BIG=1: this run checks another dimension' : undefined;

describe('files over 4 GiB', { timeout: 600_000, skip: skipBig }, () => {
  for (const [label, size] of [
    ['4 GiB - 4096', 4 * GiB - 4096],
    ['4 GiB + 4096', 4 * GiB + 4096],
    ['6 GiB + 13', 6 * GiB + 13],
  ] as const) {
    test(`${label}: load is byte-exact through windows, views past 4 GiB, readInto at offsets past 4 GiB`, async (t) => {
      if (needsDirect(t)) return;
      const f = makeSparseFile(dir, `sparse-${size}`, size, size % 1000);
      const leaks = leakCheck();
      const b = await load(f.path, { io: 'direct' });
      try {
        assert.equal(b.size, size);
        assert.equal(b.stats.io, 'direct');
        assert.equal(bufferSha256(b), f.sha256);
        if (size > native.maxView()) {
          assert.throws(() => b.bytes, { code: 'ERR_BUFFER_TOO_LARGE', message: /view\(offset, length\)/ });
        } else {
          assert.equal(b.bytes.length, size);
        }
        // The island around 4 GiB, through a view, and the last bytes of the file.
        const mid = f.islands[1]!;
        assert.equal(sha256(b.view(mid.offset, mid.bytes.length)), sha256(mid.bytes));
        const last = f.islands.at(-1)!;
        assert.equal(sha256(b.view(size - 5, 5)), sha256(last.bytes.subarray(-5)));
        // readInto from a file offset past 4 GiB into a small buffer ...
        const small = await allocate(64 * 1024);
        const at = mid.offset + 4096 + 7;
        assert.equal(await readInto(small, f.path, { fileOffset: at, length: 64 * 1024 }), 64 * 1024);
        assert.equal(sha256(small.bytes), sha256(mid.bytes.subarray(at - mid.offset, at - mid.offset + 64 * 1024)));
        small.close();
        // ... and into the big buffer at an offset past 4 GiB, from another file, with io 'direct'.
        const other = makeFile(dir, `other-${size}`, 1 << 20, 99);
        const bufOffset = size - (2 << 20) - (size % 4096);
        assert.equal(await readInto(b, other.path, { bufOffset, length: 1 << 20, io: 'direct' }), 1 << 20);
        assert.equal(sha256(b.view(bufOffset, 1 << 20)), other.sha256);
      } finally {
        b.close();
      }
      assert.equal(await leaks(), undefined);
      rmSync(f.path);
    });
  }

  test("a model whose one tensor is over 4 GiB: loadModel is byte-exact through the tensor's views", async (t) => {
    if (needsDirect(t)) return;
    const size = 4 * GiB + 8192;
    const f = makeSparseFile(dir, 'big.safetensors', size, 11);
    // A safetensors header over the first island's first page: one U8 tensor from 4096 to the end of the file.
    const data = size - 4096;
    let json = JSON.stringify({ huge: { dtype: 'U8', shape: [data], data_offsets: [0, data] } });
    json = json.padEnd(4096 - 8, ' ');
    const header = Buffer.concat([Buffer.alloc(8), Buffer.from(json)]);
    header.writeBigUInt64LE(BigInt(json.length));
    const fd = openSync(f.path, 'r+');
    writeSync(fd, header, 0, header.length, 0);
    closeSync(fd);
    f.islands[0]!.bytes.set(header);
    // The tensor's hash from the islands: the file from 4096 on, holes as zeros.
    const h = createHash('sha256');
    const zeros = new Uint8Array(64 << 20);
    let pos = 4096;
    for (const isl of f.islands) {
      const from = Math.max(isl.offset, 4096);
      for (; pos < from; pos += Math.min(zeros.length, from - pos)) h.update(zeros.subarray(0, Math.min(zeros.length, from - pos)));
      h.update(isl.bytes.subarray(from - isl.offset));
      pos = isl.offset + isl.bytes.length;
    }
    for (; pos < size; pos += Math.min(zeros.length, size - pos)) h.update(zeros.subarray(0, Math.min(zeros.length, size - pos)));
    const want = h.digest('hex');

    const leaks = leakCheck();
    const model = await loadModel(f.path, { io: 'direct' });
    try {
      const huge = model.tensors.get('huge')!;
      assert.equal(huge.byteLength, data);
      const got = createHash('sha256');
      for (let at = 0; at < data; at += 256 << 20) got.update(huge.view(at, Math.min(256 << 20, data - at)));
      assert.equal(got.digest('hex'), want);
      if (data > native.maxView()) assert.throws(() => huge.bytes, { code: 'ERR_BUFFER_TOO_LARGE' });
      else assert.equal(huge.bytes.length, data);
      const mid = f.islands[1]!;
      assert.equal(sha256(huge.view(mid.offset - 4096, mid.bytes.length)), sha256(mid.bytes));
    } finally {
      model.close();
    }
    assert.equal(await leaks(), undefined);
    rmSync(f.path);
  });

  test('4 GiB + 4096: save and copy write it byte-exact; the CLI hashes it', async (t) => {
    if (needsDirect(t)) return;
    const size = 4 * GiB + 4096;
    const f = makeSparseFile(dir, 'sparse-save', size, 5);
    const leaks = leakCheck();
    const saved = join(dir, 'saved');
    const b = await load(f.path);
    try {
      const r = await save(b, saved);
      assert.equal(r.bytes, size);
    } finally {
      b.close();
    }
    assert.equal(fileSha256Streamed(saved), f.sha256);
    rmSync(saved);
    const copied = join(dir, 'copied');
    const c = await copy(f.path, copied);
    assert.equal(c.bytes, size);
    assert.equal(fileSha256Streamed(copied), f.sha256);
    rmSync(copied);
    assert.equal(await leaks(), undefined);
    const out = await cli('load', f.path, '--hash', 'sha256', '--json');
    assert.equal(out.code, 0, out.err);
    assert.equal(JSON.parse(out.out).sha256, f.sha256);
    rmSync(f.path);
  });

  test('a URL of a file over 4 GiB (nginx on loopback): load into a memfd is byte-exact, loadRanges past 4 GiB too', async (t) => {
    if (nginxMissing) return t.skip(nginxMissing);
    const size = 4 * GiB + 4096 + 17;
    const f = makeSparseFile(dir, 'net-big.bin', size, 23);
    const ng = await startNginx({ root: dir });
    const saved = { NO_PROXY: process.env.NO_PROXY, no_proxy: process.env.no_proxy };
    process.env.NO_PROXY = process.env.no_proxy = '127.0.0.1,localhost';
    try {
      const url = `${ng.urls.http}/net-big.bin`;
      const b = await load(url, { target: 'memfd' });
      try {
        assert.equal(b.size, size);
        assert.equal(b.stats.io, 'network');
        assert.equal(bufferSha256(b), f.sha256);
      } finally {
        b.close();
      }
      const mid = f.islands[1]!;
      const at = mid.offset + 4096 + 3;
      const r = await loadRanges(url, [{ offset: at, length: 100_000 }]);
      try {
        assert.equal(sha256(r.buffer.view(r.offsets[0], 100_000)), sha256(mid.bytes.subarray(at - mid.offset, at - mid.offset + 100_000)));
      } finally {
        r.buffer.close();
      }
    } finally {
      Object.assign(process.env, saved);
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k];
      await ng.stop();
      rmSync(f.path);
    }
  });
});
