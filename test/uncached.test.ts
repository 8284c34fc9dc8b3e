/**
 * io 'uncached': buffered reads and writes with RWF_DONTCACHE (Linux 6.14+; ext4 6.17+, xfs 6.15+) that leave no
 * page cache. Oracles: the SHA-256 of the source (or of what was written), mincore residency of the files, error
 * codes. Where the kernel or the test folder's file system does not take the flag, the tests skip, saying why.
 */
import assert from 'node:assert/strict';
import { existsSync, openSync, closeSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { allocate, copy, createWriter, load, probe, readInto, save, writeFrom } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import { evictPath } from '../src/pipeline/cache.js';
import { uncachedSupport } from '../src/pipeline/source.js';
import { cachedBytes, evictFile, leakCheck, makeFile, needsDirect, readJob, seededBytes, sha256, tempDir, uncachedMissing, warmFile } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);

const missing = uncachedMissing(dir);

function needsUncached(t: { skip(msg: string): void }): boolean {
  if (!missing) return false;
  t.skip(missing);
  return true;
}

describe("io 'uncached'", () => {
  test('probe reports it per file', async (t) => {
    if (needsUncached(t)) return;
    const f = makeFile(dir, 'p', 10);
    const p = await probe(f.path);
    assert.deepEqual(p.file?.uncached, { supported: true, error: undefined });
  });

  for (const target of ['memory', 'memfd'] as const) {
    test(`load ${target}: bytes exact, stats.io uncached, no page cache left (sizes 0, 1, 4097, 5 MiB + 3)`, async (t) => {
      if (needsUncached(t)) return;
      const leaks = leakCheck();
      for (const size of [0, 1, 4097, 5 * MiB + 3]) {
        const f = makeFile(dir, `l-${target}-${size}`, size);
        evictFile(f.path);
        const b = await load(f.path, { target, io: 'uncached' });
        try {
          assert.equal(sha256(b.bytes), f.sha256, `size ${size}`);
          assert.equal(b.stats.io, 'uncached');
          assert.equal(cachedBytes(f.path, size), 0, 'mincore: no page cache left');
          assert.equal(b.stats.pageCacheBytes, 0);
        } finally {
          b.close();
        }
      }
      assert.equal(await leaks(), undefined);
    });
  }

  test('threads engine (preadv2): the same bytes, no page cache', async (t) => {
    if (needsUncached(t)) return;
    const f = makeFile(dir, 'threads', 3 * MiB + 1);
    evictFile(f.path);
    process.env.DMALOAD_ENGINE = 'threads';
    try {
      const b = await load(f.path, { io: 'uncached', chunkSize: 65536, queueDepth: 3 });
      assert.equal(b.stats.engine, 'threads');
      assert.equal(sha256(b.bytes), f.sha256);
      assert.equal(cachedBytes(f.path, 3 * MiB + 1), 0);
      b.close();
    } finally {
      delete process.env.DMALOAD_ENGINE;
    }
  });

  test('a file already in the page cache stays there (uncached reads drop only what they bring in)', async (t) => {
    if (needsUncached(t)) return;
    const size = 4 * MiB;
    const f = makeFile(dir, 'warm', size);
    warmFile(f.path);
    const b = await load(f.path, { io: 'uncached' });
    assert.equal(sha256(b.bytes), f.sha256);
    b.close();
    assert.equal(cachedBytes(f.path, size), size);
    evictPath(f.path);
  });

  test("readInto: uncached at odd offsets, and io auto's ragged edges leave no page cache", async (t) => {
    if (needsUncached(t) || needsDirect(t)) return;
    const leaks = leakCheck();
    const size = 3 * MiB + 4096 * 2 + 11;
    const f = makeFile(dir, 'ri', size);
    const file = readFileSync(f.path);
    for (const io of ['uncached', 'auto'] as const) {
      evictFile(f.path);
      const buf = await allocate(2 * MiB + 8192);
      const fileOffset = 4096 + 17;
      const length = 2 * MiB + 5;
      const n = await readInto(buf, f.path, { fileOffset, bufOffset: 3, length, io });
      assert.equal(n, length);
      assert.equal(sha256(buf.bytes.subarray(3, 3 + length)), sha256(file.subarray(fileOffset, fileOffset + length)), io);
      assert.equal(cachedBytes(f.path, size), 0, `${io}: mincore sees no page of the file`);
      // Past the end of the file: the count read, the rest untouched.
      buf.bytes.fill(7);
      const m = await readInto(buf, f.path, { fileOffset: size - 10, bufOffset: 0, length: 100, io });
      assert.equal(m, 10);
      assert.equal(sha256(buf.bytes.subarray(0, 10)), sha256(file.subarray(size - 10)));
      assert.ok(buf.bytes.subarray(10, 100).every((x) => x === 7));
      buf.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('writes: writeFrom, save, createWriter and copy write exact bytes and leave no page cache', async (t) => {
    if (needsUncached(t)) return;
    const leaks = leakCheck();
    const size = 6 * MiB + 4097;
    const data = seededBytes(size, 42);
    const want = sha256(data);
    const buf = await allocate(size);
    buf.bytes.set(data);
    const wf = join(dir, 'wf.bin');
    assert.equal(await writeFrom(buf, wf, { io: 'uncached', fsync: true }), size);
    const sv = join(dir, 'save.bin');
    const r = await save(buf, sv, { io: 'uncached' });
    assert.equal(r.io, 'uncached');
    const cw = join(dir, 'writer.bin');
    const w = await createWriter(cw, { io: 'uncached', chunkSize: MiB });
    for (let off = 0; off < size; off += 777_777) await w.write(data.subarray(off, Math.min(size, off + 777_777)));
    assert.equal((await w.close()).io, 'uncached');
    const cp = join(dir, 'copy.bin');
    const c = await copy(sv, cp, { io: 'uncached' });
    assert.equal(c.io, 'uncached');
    assert.equal(c.readIo, 'uncached');
    buf.close();
    for (const p of [wf, sv, cw, cp]) {
      // After the data is on disk (fsync), the dropbehind pages go; allow the writeback completion a moment.
      let left = cachedBytes(p, size);
      for (let i = 0; i < 50 && left > 0; i++) {
        await new Promise((res) => setTimeout(res, 20));
        left = cachedBytes(p, size);
      }
      assert.equal(left, 0, `${p}: mincore sees no page of the written file`);
      assert.equal(sha256(readFileSync(p)), want, p);
    }
    assert.equal(await leaks(), undefined);
  });

  test('a file system without it: ERR_UNCACHED_IO_UNSUPPORTED naming the path; probe says EOPNOTSUPP; auto reads buffered', async (t) => {
    // tmpfs has no RWF_DONTCACHE (its pages are the file); /dev/shm is tmpfs on Linux.
    if (!existsSync('/dev/shm')) return t.skip('no /dev/shm (tmpfs) on this machine');
    const p = join('/dev/shm', `dmaload-uncached-${process.pid}`);
    writeFileSync(p, seededBytes(10_000, 3));
    try {
      const fd = openSync(p, 'r');
      const r = uncachedSupport(fd);
      closeSync(fd);
      if (r === 0) return t.skip('this kernel takes RWF_DONTCACHE on tmpfs too');
      await assert.rejects(load(p, { io: 'uncached' }), (e: Error & { code?: string; path?: string }) => {
        assert.equal(e.code, 'ERR_UNCACHED_IO_UNSUPPORTED');
        assert.equal(e.path, p);
        assert.match(e.message, /EOPNOTSUPP.*use io 'auto' or 'buffered'/);
        return true;
      });
      await assert.rejects(createWriter(join('/dev/shm', `dmaload-uncached-w-${process.pid}`), { io: 'uncached' }), { code: 'ERR_UNCACHED_IO_UNSUPPORTED' });
      const pr = await probe(p);
      assert.deepEqual(pr.file?.uncached, { supported: false, error: 'EOPNOTSUPP' });
      const b = await load(p);
      assert.equal(b.stats.io, 'buffered');
      assert.equal(sha256(b.bytes), sha256(readFileSync(p)));
      b.close();
    } finally {
      rmSync(p, { force: true });
    }
  });

  test('the addon refuses other preadv2 flags', () => {
    assert.throws(() => native.transfer(readJob(0, new ArrayBuffer(4096), 10, { rwFlags: 3 })), { code: 'ERR_OUT_OF_RANGE', message: /rwFlags/ });
  });
});
