/**
 * load(path, { into }): a reload into memory that already exists. Oracles: the SHA-256 of each source file, the
 * buffer's address (the same memory, not new memory), error codes, and the bytes of a memfd read back through its fd.
 */
import assert from 'node:assert/strict';
import { readSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { allocate, load, loadRanges } from '../src/index.js';
import type { LoadedBuffer } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import { bufferAddress as address, evictFile, leakCheck, makeFile, needsDirect, sha256, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);

describe('load into an existing buffer', () => {
  for (const target of ['memory', 'memfd'] as const) {
    test(`${target}: reloads into the same memory, bytes exact, the old handle closed`, async (t) => {
      if (needsDirect(t)) return;
      const leaks = leakCheck();
      const a = makeFile(dir, `a-${target}`, 6 * MiB + 13);
      const b = makeFile(dir, `b-${target}`, 3 * MiB + 4097);
      const c = makeFile(dir, `c-${target}`, 6 * MiB + 13, 99);
      evictFile(a.path);
      let buf = await load(a.path, { target });
      assert.equal(sha256(buf.bytes), a.sha256);
      assert.equal(buf.stats.memory, 'fresh');
      const at = address(buf);
      for (const f of [b, c, a]) {
        evictFile(f.path);
        const old = buf;
        const oldView = old.bytes;
        const oldWindow = old.view(4096, 4096);
        buf = await load(f.path, { into: old });
        assert.equal(old.closed, true, 'into is closed: its memory moved');
        assert.throws(() => old.bytes, { code: 'ERR_BUFFER_CLOSED' });
        // As after close(): the old handle's views are empty, not a window on the next file's bytes.
        assert.equal(oldView.byteLength, 0, 'the old bytes view is detached');
        assert.equal(oldWindow.byteLength, 0, 'the old window is detached');
        assert.equal(buf.path, f.path);
        assert.equal(sha256(buf.bytes), f.sha256);
        assert.equal(address(buf), at, 'the same memory');
        assert.equal(buf.target, target);
        assert.equal(buf.stats.memory, 'reused');
        assert.equal(buf.stats.io, 'direct');
        assert.equal(buf.stats.pageCacheBytes, 0);
        assert.equal(buf.parts[0]!.size, buf.size);
      }
      buf.close();
      assert.equal(await leaks(), undefined);
    });
  }

  test('into an allocate()d buffer of exactly the file size (memory, memfd)', async () => {
    const leaks = leakCheck();
    const f = makeFile(dir, 'exact', 5 * MiB + 7);
    for (const target of ['memory', 'memfd'] as const) {
      const empty = await allocate(5 * MiB + 7, { target });
      const buf = await load(f.path, { into: empty });
      assert.equal(buf.size, 5 * MiB + 7);
      assert.equal(sha256(buf.bytes), f.sha256);
      if (target === 'memfd') {
        const back = new Uint8Array(buf.size);
        assert.equal(readSync(buf.fd, back, 0, buf.size, 0), buf.size);
        assert.equal(sha256(back), f.sha256);
      }
      buf.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('memfd: the padding past a smaller file is zeroed, what lies beyond keeps its bytes', async () => {
    const big = makeFile(dir, 'pad-big', 64 * 1024, 5);
    const small = makeFile(dir, 'pad-small', 4097, 6);
    const first = await load(big.path, { target: 'memfd' });
    const before = first.bytes.slice();
    const buf = await load(small.path, { into: first });
    try {
      assert.equal(buf.size, 4097);
      assert.equal(sha256(buf.bytes), small.sha256);
      // The memfd keeps its sealed size; read all of it back through the fd.
      const all = new Uint8Array(64 * 1024);
      assert.equal(readSync(buf.fd, all, 0, all.length, 0), all.length);
      assert.equal(sha256(all.subarray(0, 4097)), small.sha256);
      assert.ok(
        all.subarray(4097, 8192).every((x) => x === 0),
        'padding to the block zeroed',
      );
      assert.deepEqual(all.subarray(8192), before.subarray(8192), 'beyond the padding: untouched');
    } finally {
      buf.close();
    }
  });

  test('errors: too small, wrong kind, wrong target, partSize, loadRanges, closed, busy — into stays usable', async () => {
    const leaks = leakCheck();
    const small = makeFile(dir, 'e-small', MiB);
    const large = makeFile(dir, 'e-large', 2 * MiB + 1);
    const buf = await load(small.path);
    await assert.rejects(load(large.path, { into: buf }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ERR_BUFFER_TOO_SMALL');
      assert.match(e.message, /e-large.*needs 2\.00 MiB.*holds 1\.00 MiB/);
      return true;
    });
    assert.equal(buf.closed, false);
    assert.equal(sha256(buf.bytes), small.sha256, 'a refused load reads nothing into the buffer');
    await assert.rejects(load(small.path, { into: {} as LoadedBuffer }), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(load(small.path, { into: buf, target: 'memfd' }), { code: 'ERR_INVALID_ARG_VALUE', message: /target.*'memory'/ });
    await assert.rejects(load(small.path, { into: buf, partSize: 4096 }), { code: 'ERR_INVALID_ARG_VALUE', message: /partSize/ });
    await assert.rejects(loadRanges(small.path, [{ offset: 0, length: 10 }], { into: buf }), { code: 'ERR_INVALID_ARG_VALUE', message: /into/ });
    // Two loads into one buffer at once: the second is refused, the first completes.
    const p1 = load(small.path, { into: buf });
    await assert.rejects(load(small.path, { into: buf }), { code: 'ERR_BUFFER_BUSY' });
    const again = await p1;
    assert.equal(sha256(again.bytes), small.sha256);
    await assert.rejects(load(small.path, { into: buf }), { code: 'ERR_BUFFER_CLOSED' });
    again.close();
    assert.equal(await leaks(), undefined);
  });

  test("a read that fails leaves into open and the caller's; the next load into it works", async (t) => {
    if (needsDirect(t)) return;
    const leaks = leakCheck();
    const f = makeFile(dir, 'fault', 8 * MiB + 5);
    const buf = await load(f.path);
    evictFile(f.path);
    native.setFault('read', 2, 5 /* EIO */);
    try {
      await assert.rejects(load(f.path, { into: buf, io: 'direct' }), { code: 'EIO', path: f.path });
    } finally {
      native.setFault('read', 0, 0);
    }
    assert.equal(buf.closed, false);
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(load(f.path, { into: buf, signal: ac.signal }), { name: 'AbortError' });
    assert.equal(buf.closed, false);
    const again = await load(f.path, { into: buf });
    assert.equal(sha256(again.bytes), f.sha256);
    again.close();
    assert.equal(await leaks(), undefined);
  });

  test('closing into while a load into it runs: the load rejects with ERR_BUFFER_CLOSED, nothing leaks', async () => {
    const leaks = leakCheck();
    const f = makeFile(dir, 'closing', 16 * MiB);
    const buf = await load(f.path);
    const p = load(f.path, { into: buf });
    buf.close();
    await assert.rejects(p, { code: 'ERR_BUFFER_CLOSED' });
    assert.equal(await leaks(), undefined);
  });
});
