/**
 * io 'auto' and the page-cache figures for a user who may read a file but not write it (a root-owned 0644 model, a
 * service user): since Linux 5.2 mincore() on such a mapping answers "resident" for every page, and cachestat() is
 * refused the same way, so residency cannot be known. The library must say so (`pageCacheBytes: null`, an ioReason)
 * and read by direct I/O, never copy from a cache it imagined. The oracle is root's own view of the page cache
 * (util-linux `fincore`), and the bytes' SHA-256 against the file.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, openSync, closeSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { load } from '../src/index.js';
import { C, native } from '../src/engine/binding.js';
import { evictFile, makeFile, needsDirect, repoRoot, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const NOBODY = 65534;
const bin = join(repoRoot, 'bin', 'dmaload.js');
const { dir, cleanup } = tempDir('dmaload-reader-');
after(cleanup);

/** Why this cannot run here, or undefined: root must make the file and become uid 65534, who must run the checkout. */
function cannotRun(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (to own the file and to become uid 65534)';
  if (!existsSync('/usr/bin/fincore')) return 'util-linux fincore is missing (the oracle)';
  chmodSync(dir, 0o755);
  const probe = spawnSync(process.execPath, [bin, '--version'], { uid: NOBODY, gid: NOBODY });
  if (probe.status !== 0) return `uid ${NOBODY} cannot run this checkout (${repoRoot}) or ${process.execPath}`;
  return undefined;
}

/** Bytes of the file in the page cache as root's fincore sees them. */
function fincore(path: string): number {
  const r = spawnSync('/usr/bin/fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', path], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

/**
 * Reads [offset, offset+length) through the page cache (as root): those pages, and only those, become resident (no
 * readahead past them, which would still be landing while a test compares figures: CI saw 40 MiB at the load and
 * 48 MiB in fincore a moment later).
 */
function warm(path: string, offset: number, length: number): void {
  const fd = openSync(path, 'r');
  native.fadvise(fd, 0, 0, C.POSIX_FADV_RANDOM);
  const b = Buffer.alloc(MiB);
  for (let at = offset; at < offset + length; at += MiB) readSync(fd, b, 0, Math.min(MiB, offset + length - at), at);
  closeSync(fd);
}

/** `dmaload load PATH --json --hash sha256` as uid 65534: its JSON document. */
function loadAsNobody(path: string, ...flags: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [bin, 'load', path, '--json', '--hash', 'sha256', ...flags], { uid: NOBODY, gid: NOBODY, encoding: 'utf8' });
  assert.equal(r.status, 0, `dmaload load as uid ${NOBODY}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe('a reader that may not write the file', () => {
  test('cold file: read by direct I/O, residency reported unknown, nothing left in the page cache (fincore)', (t) => {
    const why = cannotRun();
    if (why) return t.skip(why);
    if (needsDirect(t)) return;
    const f = makeFile(dir, 'cold.bin', 64 * MiB + 4097);
    chmodSync(f.path, 0o644);
    evictFile(f.path);
    assert.equal(fincore(f.path), 0, 'precondition: cold');
    const out = loadAsNobody(f.path);
    assert.equal(out.sha256, f.sha256, 'the bytes');
    assert.equal(out.io, 'direct');
    assert.equal(out.pageCacheBytes, null, 'residency cannot be known by this user: null, not a guess');
    assert.match(String(out.ioReason), /cannot be known|unknown/i);
    assert.equal(fincore(f.path), 0, 'the load filled no page cache');
  });

  test('half cached: still direct for the reader (what is cached cannot be seen), the cache left as it was', (t) => {
    const why = cannotRun();
    if (why) return t.skip(why);
    if (needsDirect(t)) return;
    const f = makeFile(dir, 'half.bin', 64 * MiB);
    chmodSync(f.path, 0o644);
    evictFile(f.path);
    warm(f.path, 0, 32 * MiB);
    const before = fincore(f.path);
    assert.ok(before >= 32 * MiB, `precondition: half cached (${before})`);
    const out = loadAsNobody(f.path);
    assert.equal(out.sha256, f.sha256);
    assert.equal(out.io, 'direct');
    assert.equal(out.pageCacheBytes, null);
    assert.equal(fincore(f.path), before, 'the reader added nothing to the page cache');
  });

  test('the owner of the same half-cached file: copied where cached, direct elsewhere, and the figure is fincore', async (t) => {
    const why = cannotRun();
    if (why) return t.skip(why);
    if (needsDirect(t)) return;
    const f = makeFile(dir, 'owner.bin', 64 * MiB);
    evictFile(f.path);
    warm(f.path, 0, 32 * MiB);
    const b = await load(f.path, { io: 'auto' });
    try {
      assert.equal(b.stats.io, 'mixed');
      assert.ok(b.stats.copiedBytes >= 32 * MiB && b.stats.directBytes > 0);
      assert.equal(b.stats.pageCacheBytes, fincore(f.path), 'the figure is what fincore sees');
    } finally {
      b.close();
    }
  });

  test('--evict as the reader drops the pages and says it cannot count what stayed', (t) => {
    const why = cannotRun();
    if (why) return t.skip(why);
    if (needsDirect(t)) return;
    const f = makeFile(dir, 'evict.bin', 16 * MiB);
    chmodSync(f.path, 0o644);
    warm(f.path, 0, 16 * MiB);
    const out = loadAsNobody(f.path, '--evict');
    assert.equal(out.sha256, f.sha256);
    assert.equal(out.evictedResidentBytes, null, 'what stayed cannot be counted by this user');
    assert.equal(fincore(f.path), 0, 'the pages were dropped (fadvise needs no write permission)');
  });
});
