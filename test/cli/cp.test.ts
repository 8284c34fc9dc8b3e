import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { evictFile, makeFile, sha256, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;
const bin = join(resolve(fileURLToPath(import.meta.url), '../../../..'), 'bin/dmaload.js');

describe('cli: cp', () => {
  test('--verify on over many chunks: byte-exact, and not one process warning (no abort listener piles up)', async () => {
    const src = makeFile(dir, 'many-chunks', 96 * MiB + 5);
    const dst = join(dir, 'many-chunks.copy');
    const child = spawn(process.execPath, [bin, 'cp', src.path, dst, '--verify', 'on', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.on('close', r));
    assert.equal(code, 0, err);
    assert.doesNotMatch(err, /Warning/, 'no process warning');
    assert.equal(JSON.parse(out).verified.sha256, src.sha256);
    assert.equal(sha256(readFileSync(dst)), src.sha256);
  });

  test('copies exactly, atomically, reports MB/s; --json', async () => {
    const src = makeFile(dir, 'src', 5 * MiB + 3);
    const dst = join(dir, 'dst');
    evictFile(src.path);
    const r = await cli('cp', src.path, dst, '--json');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assert.equal(j.size, 5 * MiB + 3);
    assert.equal(j.readIo, 'direct');
    assert.equal(j.writeIo, 'direct');
    assert.equal(sha256(readFileSync(dst)), src.sha256);
    const h = await cli('cp', src.path, dst, '--io', 'buffered');
    assert.match(h.out, /MB\/s/);
  });

  test('refuses the same file (ERR_SAME_FILE) and a missing SRC, copies into a folder DST; usage errors exit 2', async () => {
    const src = makeFile(dir, 'same', 100);
    const same = await cli('cp', src.path, join(dir, '.', 'same'));
    assert.equal(same.code, 1);
    assert.match(same.err, /ERR_SAME_FILE/);
    // Into a folder, as coreutils' cp does: DIR/basename(SRC); copy() itself still refuses a folder.
    const folder = join(dir, 'into');
    mkdirSync(folder);
    const into = await cli('cp', src.path, `${folder}/`);
    assert.equal(into.code, 0, into.err);
    assert.equal(sha256(readFileSync(join(folder, 'same'))), src.sha256);
    assert.match((await cli('cp', join(dir, 'nope'), join(dir, 'x'))).err, /ENOENT/);
    assert.equal((await cli('cp', src.path)).code, 2);
    assert.equal((await cli('cp', src.path, join(dir, 'y'), '--io', 'fast')).code, 2);
  });

  test('crash safety: SIGKILL at random moments leaves DST wholly old or wholly new, and no file behind', async () => {
    const oldF = makeFile(dir, 'old', 48 * MiB, 1);
    const newF = makeFile(dir, 'new', 48 * MiB + 4097, 2);
    const dst = join(dir, 'victim');
    const trials = Number(process.env.DMALOAD_CRASH_TRIALS ?? 16);
    const seen = { old: 0, new: 0 };
    let seed = 7;
    const leftovers = () => readdirSync(dir).filter((n) => /^\.victim\.dmaload-\d+-[0-9a-f]+\.tmp$/.test(n));
    for (let i = 0; i < trials; i++) {
      rmSync(dst, { force: true });
      // The file has no name until it is complete (O_TMPFILE). Only the microseconds between linking it to a
      // hidden name and renaming that over DST can leave a name behind, and the next run removes it: check after it.
      await cli('cp', oldF.path, dst);
      assert.deepEqual(leftovers(), [], `trial ${i}: a killed cp left a file behind`);
      seed = (seed * 1103515245 + 12345) >>> 0;
      const delay = seed % 400; // node start-up, the load and the save all fall in this window
      const child = spawn(process.execPath, [bin, 'cp', newF.path, dst], { stdio: 'ignore' });
      const timer = setTimeout(() => child.kill('SIGKILL'), delay);
      await new Promise((r) => child.on('exit', r));
      clearTimeout(timer);
      const h = sha256(readFileSync(dst));
      assert.ok(h === oldF.sha256 || h === newF.sha256, `trial ${i} (kill after ${delay} ms): DST is torn`);
      seen[h === oldF.sha256 ? 'old' : 'new']++;
    }
    assert.equal(seen.old + seen.new, trials);
    await cli('cp', oldF.path, dst);
    assert.deepEqual(leftovers(), []);
  });
});
