/**
 * Cold means cold: evicting a file that was just written (dirty pages) flushes it first, so nothing of it stays in
 * the page cache; the oracle is mincore (pageCacheBytes), never the library's own return value alone.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { evict, evictPath } from '../src/pipeline/cache.js';
import { C, native, type Region } from '../src/engine/binding.js';
import { cli } from './cli/run.js';
import { cachedBytes, leakCheck, needsDirect, seededBytes, sha256, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);

/** A file whose pages are all dirty in the page cache: written, never synced. */
function dirtyFile(name: string, size: number): { path: string; sha256: string } {
  const path = join(dir, name);
  const bytes = seededBytes(size, size + name.length);
  writeFileSync(path, bytes);
  return { path, sha256: sha256(bytes) };
}

/**
 * Maps the whole file shared and reads every byte through the mapping, so that all of it is mapped into this process
 * (fadvise cannot drop mapped pages); the bytes read must be the file's. Returns the region; the caller unmaps it.
 */
function mapAndTouch(f: { sha256: string }, fd: number, size: number, prot: number): Region {
  const m = native.mmap(size, prot, C.MAP_SHARED, fd, 0, 0);
  if (typeof m === 'number') assert.fail(`mmap failed: ${m}`);
  const v = new Uint8Array(native.view(m, 0, size));
  const got = sha256(v);
  native.unview(v.buffer);
  if (got !== f.sha256) native.munmap(m);
  assert.equal(got, f.sha256, 'the mapping holds the file');
  return m;
}

describe('evict: cold means cold', () => {
  test('a just-written file (dirty pages) is flushed, then dropped: mincore sees none of it', () => {
    const size = 24 * MiB + 4097;
    const f = dirtyFile('dirty', size);
    assert.ok(cachedBytes(f.path, size) > 0, 'precondition: the written pages are cached');
    const left = evictPath(f.path);
    assert.equal(cachedBytes(f.path, size), 0, 'mincore: nothing of the file is cached');
    assert.equal(left, 0, 'evict reports what mincore sees');
  });

  test('pages that cannot be dropped (mapped by someone) are reported, not hidden', () => {
    const size = 4 * MiB;
    const f = dirtyFile('mapped', size);
    const fd = openSync(f.path, 'r+');
    const m = mapAndTouch(f, fd, size, C.PROT_READ | C.PROT_WRITE);
    try {
      const left = evict(fd, f.path);
      const seen = cachedBytes(f.path, size);
      assert.ok(seen > 0, 'precondition: mapped pages stay');
      assert.equal(left, seen, 'evict returns the bytes mincore still sees');
    } finally {
      native.munmap(m);
      closeSync(fd);
    }
  });

  test('CLI load --evict on a just-written file loads it cold: io direct, no page cache, bytes exact', async (t) => {
    if (needsDirect(t)) return;
    const leaks = leakCheck();
    const f = dirtyFile('cli', 16 * MiB + 123);
    const r = await cli('load', f.path, '--evict', '--json', '--hash', 'sha256');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assert.equal(j.sha256, f.sha256);
    assert.equal(j.io, 'direct', 'nothing was cached, so io auto read everything directly');
    assert.equal(j.pageCacheBytes, 0);
    assert.equal(j.evictedResidentBytes, 0, 'the eviction itself reports a cold file');
    assert.equal(r.err, '', 'no warning when the file is cold');
    assert.equal(await leaks(), undefined);
  });

  test('CLI load --evict says so when pages stay cached', async () => {
    const size = 4 * MiB;
    const f = dirtyFile('cli-mapped', size);
    const fd = openSync(f.path, 'r');
    const m = mapAndTouch(f, fd, size, C.PROT_READ);
    try {
      const r = await cli('load', f.path, '--evict', '--json');
      assert.equal(r.code, 0, r.err);
      const j = JSON.parse(r.out);
      const seen = cachedBytes(f.path, size);
      assert.ok(seen > 0);
      assert.ok(j.evictedResidentBytes > 0);
      assert.match(r.err, /warning: .* of '.*cli-mapped' stayed in the page cache after --evict/);
    } finally {
      native.munmap(m);
      closeSync(fd);
    }
  });

  test('evictPath and pageCacheBytesOf refuse what is not a regular file as load does: a folder, /dev/zero', () => {
    // (A FIFO, which would block this thread, is the CLI test's: test/cli/main.test.ts.)
    for (const f of [evictPath, (p: string) => cachedBytes(p, 4096)]) {
      assert.throws(() => f(dir), { code: 'EISDIR', path: dir });
      assert.throws(() => f('/dev/zero'), { code: 'ERR_NOT_REGULAR_FILE', path: '/dev/zero' });
    }
  });
});
