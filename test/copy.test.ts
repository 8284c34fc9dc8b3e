import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { copy } from '../src/index.js';
import { evictFile, leakCheck, makeFile, sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;

test('copy: sizes 0, 1, 4095, several slots + 3, byte-exact, direct both sides, no page cache', async () => {
  for (const size of [0, 1, 4095, 5 * MiB + 3]) {
    const src = makeFile(dir, `src-${size}`, size);
    evictFile(src.path);
    const dst = join(dir, `dst-${size}`);
    const leaks = leakCheck();
    let last = -1;
    const r = await copy(src.path, dst, { slotSize: MiB, slots: 3, onProgress: (p) => (last = p.bytes) });
    assert.equal(r.bytes, size);
    assert.equal(sha256(readFileSync(dst)), src.sha256);
    if (size > 0) {
      assert.equal(r.readIo, 'direct');
      assert.equal(r.io, 'direct');
      assert.equal(last, size);
    }
    assert.equal(await leaks(), undefined);
  }
});

test('copy: replaces an existing file atomically; refuses the same file and folders; abort leaves DST as it was', async () => {
  const src = makeFile(dir, 'a', 3 * MiB);
  const dst = join(dir, 'existing');
  writeFileSync(dst, 'old');
  await copy(src.path, dst);
  assert.equal(sha256(readFileSync(dst)), src.sha256);
  await assert.rejects(copy(src.path, src.path), { code: 'ERR_SAME_FILE' });
  await assert.rejects(copy(src.path, dir), { code: 'ERR_IS_DIRECTORY' });
  await assert.rejects(copy(join(dir, 'none'), dst), { code: 'ENOENT' });
  await assert.rejects(copy(src.path, dst, { slotSize: 1000 }), { code: 'ERR_OUT_OF_RANGE' });
  writeFileSync(dst, 'old');
  const ac = new AbortController();
  const leaks = leakCheck();
  await assert.rejects(copy(src.path, dst, { slotSize: 64 * 1024, signal: ac.signal, onProgress: () => ac.abort() }), { name: 'AbortError' });
  assert.equal(readFileSync(dst, 'utf8'), 'old');
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.endsWith('.tmp')),
    [],
  );
  assert.equal(await leaks(), undefined);
});
