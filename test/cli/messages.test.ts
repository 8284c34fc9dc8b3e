/** Issue #28 item 7: messages say a thing once and name what is wrong. */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../../src/engine/binding.js';
import { after, describe, test } from 'node:test';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);

describe('cli: messages', () => {
  test("verify: a file it cannot read is named with its errno's code once", async () => {
    const missing = join(dir, 'missing');
    const r = await cli('verify', missing);
    assert.equal(r.code, 1);
    assert.match(r.err, /^dmaload verify: ENOENT: no such file or directory/);
    assert.doesNotMatch(r.err, /ENOENT: ENOENT/);
    assert.match(r.err, new RegExp(missing));
    // The others are still checked.
    const ok = makeFile(dir, 'ok', 100);
    const two = await cli('verify', missing, ok.path);
    assert.equal(two.code, 1);
    assert.match(two.out, new RegExp(`${ok.sha256}  ${ok.path}`));
  });

  test('serve --socket in a folder that does not exist: that folder is named, exit 2', async () => {
    const folder = join(dir, 'nonexistent-dir');
    const r = await cli('serve', '--socket', join(folder, 's.sock'));
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, new RegExp(`--socket.*the folder '${folder}' does not exist`));
    assert.doesNotMatch(r.err, /mkdtemp|XXXXXX/);
    const file = makeFile(dir, 'a-file', 10).path;
    const f = await cli('serve', '--socket', join(file, 's.sock'));
    assert.equal(f.code, 2, f.err);
    assert.match(f.err, new RegExp(`'${file}' is not a folder`));
  });

  test('load --io direct of a file on a file system without direct I/O says so once', async (t) => {
    // tmpfs has no direct I/O (no STATX_DIOALIGN): /dev/shm where it is one.
    const shm = mkdtempSync('/dev/shm/dmaload-msg-');
    try {
      const probe = openSync(join(shm, '.probe'), 'w');
      const dio = native.statxDio(probe);
      closeSync(probe);
      if (typeof dio !== 'number' && dio[0] !== 0) return t.skip('/dev/shm does direct I/O here');
      const f = makeFile(shm, 'x', 8192);
      const r = await cli('load', f.path, '--io', 'direct');
      assert.equal(r.code, 1, r.err);
      assert.equal(r.err.split('does not support direct I/O').length - 1, 1, r.err);
      assert.match(r.err, /ERR_DIRECT_IO_UNSUPPORTED/);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });
});
