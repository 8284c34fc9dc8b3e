/**
 * createPool(): released buffers' memory reused by later loads. Oracles: each source file's SHA-256, the memory's
 * address (the same memory or not), /proc/self/maps and the addon's live counts (leakCheck), and error codes.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { allocate, createPool, load } from '../src/index.js';
import { bufferAddress as address, evictFile, leakCheck, makeFile, needsDirect, sha256, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);

describe('buffer pool', () => {
  for (const target of ['memory', 'memfd'] as const) {
    test(`${target}: a released buffer's memory takes the next load that fits; its old views are empty`, async (t) => {
      if (needsDirect(t)) return;
      const leaks = leakCheck();
      const a = makeFile(dir, `a-${target}`, 6 * MiB + 13);
      const b = makeFile(dir, `b-${target}`, 4 * MiB + 4097, 7);
      const pool = createPool();
      evictFile(a.path);
      const first = await pool.load(a.path, { target });
      assert.equal(sha256(first.bytes), a.sha256);
      assert.equal(first.stats.memory, 'fresh');
      const at = address(first);
      const view = first.bytes;
      pool.release(first);
      assert.equal(first.closed, true);
      assert.equal(view.byteLength, 0, "the released buffer's views are empty, as after close()");
      assert.equal(pool.idleBuffers, 1);
      assert.ok(pool.idleBytes >= 6 * MiB + 13, `idle ${pool.idleBytes}`);
      evictFile(b.path);
      const second = await pool.load(b.path, { target });
      assert.equal(second.stats.memory, 'reused');
      assert.equal(address(second), at, 'the same memory');
      assert.equal(second.size, 4 * MiB + 4097);
      assert.equal(sha256(second.bytes), b.sha256);
      assert.equal(second.target, target);
      assert.equal(pool.idleBuffers, 0);
      pool.release(second);
      pool.close();
      assert.equal(pool.idleBuffers, 0);
      await assert.rejects(pool.load(a.path), { code: 'ERR_POOL_CLOSED' });
      assert.equal(await leaks(), undefined);
    });
  }

  test('fit: at least the file, at most twice it, smallest first, same target; otherwise fresh memory', async () => {
    const leaks = leakCheck();
    const pool = createPool();
    const small = makeFile(dir, 'small', MiB);
    const mid = makeFile(dir, 'mid', 5 * MiB, 3);
    const big = makeFile(dir, 'big', 12 * MiB, 4);
    for (const size of [8 * MiB, 16 * MiB]) pool.release(await allocate(size));
    pool.release(await allocate(8 * MiB, { target: 'memfd' }));
    assert.equal(pool.idleBuffers, 3);
    // 1 MiB: both memory buffers are more than twice it.
    const s = await pool.load(small.path);
    assert.equal(s.stats.memory, 'fresh');
    assert.equal(sha256(s.bytes), small.sha256);
    // 5 MiB: the 8 MiB memory buffer (the smallest that fits), not the memfd one.
    const m = await pool.load(mid.path);
    assert.equal(m.stats.memory, 'reused');
    assert.equal(m.room, 8 * MiB);
    assert.equal(m.target, 'memory');
    assert.equal(sha256(m.bytes), mid.sha256);
    // 12 MiB: the 16 MiB one.
    const g = await pool.load(big.path);
    assert.equal(g.stats.memory, 'reused');
    assert.equal(g.room, 16 * MiB);
    assert.equal(sha256(g.bytes), big.sha256);
    // The memfd one stays for a memfd load.
    assert.equal(pool.idleBuffers, 1);
    const f = await pool.load(mid.path, { target: 'memfd' });
    assert.equal(f.stats.memory, 'reused');
    assert.equal(sha256(f.bytes), mid.sha256);
    for (const x of [s, m, g, f]) x.close();
    pool.close();
    assert.equal(await leaks(), undefined);
  });

  test('maxIdleBytes: a release past it frees the buffers released longest ago', async () => {
    const leaks = leakCheck();
    const pool = createPool({ maxIdleBytes: 20 * MiB });
    const first = await allocate(8 * MiB);
    const at = address(first);
    pool.release(first);
    pool.release(await allocate(8 * MiB));
    assert.equal(pool.idleBytes, 16 * MiB);
    pool.release(await allocate(8 * MiB));
    assert.equal(pool.idleBuffers, 2, 'the first released was freed');
    assert.equal(pool.idleBytes, 16 * MiB);
    const f = makeFile(dir, 'seven', 7 * MiB, 8);
    const got = [await pool.load(f.path), await pool.load(f.path)];
    for (const g of got) {
      assert.equal(g.stats.memory, 'reused');
      assert.notEqual(address(g), at, 'not the freed buffer');
      assert.equal(sha256(g.bytes), f.sha256);
    }
    for (const g of got) g.close();
    // Bigger than the limit: closed at once.
    pool.release(await allocate(32 * MiB));
    assert.equal(pool.idleBuffers, 0);
    pool.close();
    assert.equal(await leaks(), undefined);
  });

  test('errors: bad arguments, a closed or busy buffer, a failed load keeps the idle buffer; release after close closes', async () => {
    const leaks = leakCheck();
    assert.throws(() => createPool({ maxIdleBytes: -1 }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => createPool({ budget: 1 } as never), { code: 'ERR_INVALID_ARG_VALUE' });
    const pool = createPool();
    assert.throws(() => pool.release({} as never), { code: 'ERR_INVALID_ARG_TYPE' });
    const closed = await allocate(MiB);
    closed.close();
    assert.throws(() => pool.release(closed), { code: 'ERR_BUFFER_CLOSED' });
    const f = makeFile(dir, 'err', 3 * MiB, 9);
    await assert.rejects(pool.load(f.path, { into: closed } as never), { code: 'ERR_INVALID_ARG_VALUE' });
    pool.release(await allocate(4 * MiB));
    await assert.rejects(pool.load(`${dir}/missing`), { code: 'ENOENT' });
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(pool.load(f.path, { signal: ac.signal }), { name: 'AbortError' });
    assert.equal(pool.idleBuffers, 1, 'failed loads leave the idle buffer in the pool');
    // A buffer in use by another call cannot be released.
    const busy = await load(f.path);
    const pending = load(f.path, { into: busy });
    assert.throws(() => pool.release(busy), { code: 'ERR_BUFFER_BUSY' });
    const reloaded = await pending;
    const ok = await pool.load(f.path);
    assert.equal(ok.stats.memory, 'reused');
    assert.equal(sha256(ok.bytes), f.sha256);
    pool.close();
    pool.release(ok);
    assert.equal(ok.closed, true, 'release after close() closes');
    reloaded.close();
    assert.equal(await leaks(), undefined);
  });

  test('concurrent loads never share a buffer', async () => {
    const leaks = leakCheck();
    const pool = createPool();
    pool.release(await allocate(4 * MiB));
    const files = [1, 2, 3].map((i) => makeFile(dir, `c${i}`, 3 * MiB + i, 20 + i));
    const got = await Promise.all(files.map((f) => pool.load(f.path)));
    assert.deepEqual(got.map((g) => g.stats.memory).sort(), ['fresh', 'fresh', 'reused']);
    for (const [i, g] of got.entries()) assert.equal(sha256(g.bytes), files[i]!.sha256);
    for (const g of got) g.close();
    pool.close();
    assert.equal(await leaks(), undefined);
  });
});
