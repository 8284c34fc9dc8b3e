import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { allocate, createWriter, load, save } from '../src/index.js';
import { leakCheck, makeFile, seededBytes, sha256, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const MiB = 1024 * 1024;
const root = resolve(fileURLToPath(import.meta.url), '../../..');

/** Files in `d` that look like our temporary files. */
function temps(d: string): string[] {
  return readdirSync(d).filter((n) => /\.dmaload-\d+-[0-9a-f]+\.tmp$/.test(n));
}

describe('save', () => {
  test('a loaded buffer, sizes 1, 4095, 4097, 64 MiB + 3: exact bytes and size, no temporary file left', async () => {
    for (const size of [1, 4095, 4097, 64 * MiB + 3]) {
      for (const io of ['auto', 'buffered'] as const) {
        const f = makeFile(dir, `src-${size}`, size);
        const leaks = leakCheck();
        const b = await load(f.path);
        const dst = join(dir, `dst-${size}-${io}`);
        const r = await save(b, dst, { io });
        b.close();
        assert.equal(r.bytes, size);
        assert.equal(r.io, io === 'auto' ? 'direct' : 'buffered');
        assert.equal(statSync(dst).size, size);
        assert.equal(sha256(readFileSync(dst)), f.sha256, `${size} ${io}`);
        assert.deepEqual(temps(dir), []);
        assert.equal(await leaks(), undefined);
      }
    }
  });

  test('an array of Uint8Arrays and buffers, concatenated; over an existing file, keeping its mode', async () => {
    const dst = join(dir, 'multi');
    writeFileSync(dst, 'old contents', { mode: 0o600 });
    const a = seededBytes(5000, 1);
    const b = await allocate(3 * MiB + 1);
    b.bytes.set(seededBytes(3 * MiB + 1, 2));
    const c = seededBytes(1, 3);
    await save([a, b, c], dst);
    const expect = Buffer.concat([a, b.bytes, c]);
    b.close();
    assert.equal(sha256(readFileSync(dst)), sha256(expect));
    assert.equal(statSync(dst).mode & 0o777, 0o600);
    await save(new Uint8Array(0), dst, { mode: 0o640 });
    assert.equal(statSync(dst).size, 0);
    assert.equal(statSync(dst).mode & 0o777, 0o640);
  });

  test('to a missing folder: ENOENT; to a read-only place: EACCES/EROFS; a closed buffer: ERR_BUFFER_CLOSED', async () => {
    const leaks = leakCheck();
    await assert.rejects(save(new Uint8Array(10), join(dir, 'no', 'such', 'x')), { code: 'ENOENT' });
    await assert.rejects(save(new Uint8Array(10), '/sys/dmaload-test-file'), (e: NodeJS.ErrnoException) => e.code === 'EACCES' || e.code === 'EROFS');
    const b = await allocate(10);
    b.close();
    await assert.rejects(save(b, join(dir, 'closed')), { code: 'ERR_BUFFER_CLOSED' });
    await assert.rejects(save('text' as never, join(dir, 'bad')), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(save(new Uint8Array(1), '/dev/null'), { code: 'ERR_NOT_REGULAR_FILE' });
    assert.equal(await leaks(), undefined);
  });

  test('abort mid-save: AbortError, destination untouched, no temporary file', async () => {
    const dst = join(dir, 'aborted');
    writeFileSync(dst, 'precious');
    const data = seededBytes(64 * MiB, 9);
    const leaks = leakCheck();
    const ac = new AbortController();
    setImmediate(() => ac.abort());
    await assert.rejects(save(data, dst, { signal: ac.signal, bufferSize: MiB, queueDepth: 1 }), { name: 'AbortError' });
    assert.equal(readFileSync(dst, 'utf8'), 'precious');
    assert.deepEqual(temps(dir), []);
    assert.equal(await leaks(), undefined);
  });

  test('past RLIMIT_FSIZE: EFBIG, destination untouched, no temporary file', async () => {
    const dst = join(dir, 'efbig');
    writeFileSync(dst, 'old');
    const script = `import { save } from ${JSON.stringify(join(root, 'dist/src/index.js'))};
      try { await save(new Uint8Array(4 * 1024 * 1024), ${JSON.stringify(dst)}); console.log('saved'); }
      catch (e) { console.log(e.code); }`;
    const out = await new Promise<string>((res, rej) =>
      execFile('bash', ['-c', `ulimit -f 1024; exec "${process.execPath}" --input-type=module -e '${script.replace(/'/g, `'\\''`)}'`], (err, stdout, stderr) =>
        err ? rej(new Error(stderr)) : res(stdout.trim()),
      ),
    );
    assert.equal(out, 'EFBIG');
    assert.equal(readFileSync(dst, 'utf8'), 'old');
    assert.deepEqual(temps(dir), []);
  });
});

describe('createWriter', () => {
  test('1,000 random-size chunks come back exactly, with backpressure and a small queue', async () => {
    const dst = join(dir, 'capture');
    const leaks = leakCheck();
    const w = await createWriter(dst, { bufferSize: 256 * 1024, queueDepth: 2 });
    const h = (await import('node:crypto')).createHash('sha256');
    let total = 0;
    let seed = 42;
    for (let i = 0; i < 1000; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      const size = seed % 3 === 0 ? seed % 17 : seed % (700 * 1024); // tiny and large, 0 included
      const chunk = seededBytes(size, i);
      h.update(chunk);
      total += size;
      await w.write(chunk);
    }
    const r = await w.close();
    assert.equal(r.bytes, total);
    assert.equal(w.bytesWritten, total);
    assert.equal(statSync(dst).size, total);
    assert.equal(sha256(readFileSync(dst)), h.digest('hex'));
    assert.equal(await leaks(), undefined);
    await assert.rejects(w.write(new Uint8Array(1)), { code: 'ERR_WRITER_CLOSED' });
  });

  test('aligned chunks are written in place (zero-copy), mixed with copied ones, bytes exact', async () => {
    const dst = join(dir, 'zero-copy');
    const big = await allocate(5 * MiB + 3);
    big.bytes.set(seededBytes(5 * MiB + 3, 11));
    const small = seededBytes(777, 12);
    const w = await createWriter(dst, { bufferSize: MiB, queueDepth: 2 });
    await w.write(big.bytes); // aligned: in place, its 3-byte tail staged
    await w.write(small); // staged behind it
    await w.write(big.bytes, { copy: true }); // forced through staging
    await assert.rejects(Promise.all([w.write(small), w.write(small)]), { code: 'ERR_WRITER_BUSY' });
    const r = await w.close();
    const expect = Buffer.concat([big.bytes, small, big.bytes, small]);
    assert.equal(r.bytes, expect.length);
    assert.equal(sha256(readFileSync(dst)), sha256(expect));
    big.close();
  });

  test('space allocated ahead never shows: exact size after close, and after abort of a kept file', async () => {
    const { statSync: st } = await import('node:fs');
    const dst = join(dir, 'prealloc');
    const w = await createWriter(dst, { bufferSize: 64 * 1024, queueDepth: 2, expectedSize: 10 * MiB });
    await w.write(seededBytes(3 * MiB + 5, 1));
    await w.close();
    assert.equal(st(dst).size, 3 * MiB + 5);
    const kept = join(dir, 'prealloc-abort');
    const a = await createWriter(kept, { chunkSize: 64 * 1024, queueDepth: 2, atomic: false });
    await a.write(seededBytes(MiB, 2));
    await a.abort();
    assert.ok(st(kept).size <= MiB, `kept file holds only what was written: ${st(kept).size}`);
    await assert.rejects(createWriter(join(dir, 'bad-size'), { expectedSize: -1 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(createWriter(join(dir, 'bad-size'), { expectedSize: '1' as never }), { code: 'ERR_INVALID_ARG_TYPE' });
  });

  test('bad options and chunks are refused by code', async () => {
    await assert.rejects(createWriter(join(dir, 'w1'), { bufferSize: 1000 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(createWriter(join(dir, 'w2'), { queueDepth: 0 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(createWriter(join(dir, 'w3'), { io: 'fast' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    const w = await createWriter(join(dir, 'w4'));
    await assert.rejects(w.write('text' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    await w.abort();
  });
});
