/** Issue #28 item 7: messages say a thing once and name what is wrong. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
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
});
