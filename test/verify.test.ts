/**
 * Verification while loading (the `verify` option, verifyFile(), `dmaload verify`, cp --verify): the SHA-256 the
 * native hash thread computes is compared with Node's own (OpenSSL) hash of the bytes the test wrote, at awkward
 * sizes, in every io mode and target, with parts on and off; a flipped byte anywhere is ERR_CHECKSUM_MISMATCH with
 * nothing leaked; a generated Hugging Face hub cache is verified by its blob names without options.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join, relative } from 'node:path';
import { after, describe, test } from 'node:test';
import { copy, load, loadModel, loadRanges, verifyFile } from '../src/index.js';
import type { TargetName } from '../src/index.js';
import { C, native } from '../src/engine/binding.js';
import { cli } from './cli/run.js';
import { writeSafetensors } from './formats/model-files.js';
import { bufferSha256, evictFile, leakCheck, makeFile, makeSparseFile, needsDirect, repoRoot, sha256, tempDir, testBase, uncachedMissing } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-verify-');
after(cleanup);

/** Reads the first half of a file through the page cache (io 'auto' then copies that half and reads the rest). */
function warmHalf(path: string, size: number): void {
  const fd = openSync(path, 'r');
  try {
    native.fadvise(fd, 0, 0, C.POSIX_FADV_RANDOM); // no readahead: exactly the first half gets cached
    const b = Buffer.alloc(Math.max(1, Math.floor(size / 2)));
    readSync(fd, b, 0, b.length, 0);
  } finally {
    closeSync(fd);
  }
}

/** Copies `path` to `name` with one byte at `at` flipped. */
function flipped(path: string, name: string, at: number): string {
  const b = readFileSync(path);
  b[at] = b[at]! ^ 0x5a;
  const out = join(dir, name);
  writeFileSync(out, b);
  return out;
}

describe('SHA-256 implementations', () => {
  for (const impl of ['openssl', 'sha-ni', 'portable'] as const) {
    test(`${impl}: equal to OpenSSL's at block edges and odd sizes`, (t) => {
      if (native.sha256(new Uint8Array(1), impl) === null) return t.skip(`this CPU has no SHA extensions (${impl})`);
      for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 4095, 4096, 4097, MiB + 3]) {
        const b = randomBytes(n);
        assert.equal(native.sha256(b, impl), sha256(b), `${impl}, ${n} bytes`);
      }
    });
  }
  test("the process uses OpenSSL's SHA-256 (Node's), unless DMALOAD_SHA256 names another", () => {
    const cpu = readFileSync('/proc/cpuinfo', 'utf8');
    const force = process.env.DMALOAD_SHA256;
    const want = force === 'portable' ? 'portable' : force === 'sha-ni' && /\bsha_ni\b/.test(cpu) ? 'sha-ni' : 'openssl';
    assert.equal(native.sha256Impl, want);
    // And each choice, in a process of its own, loads a file to the right digest.
    for (const impl of ['openssl', 'sha-ni', 'portable']) {
      if (impl === 'sha-ni' && !/\bsha_ni\b/.test(cpu)) continue;
      const f = makeFile(dir, `impl-${impl}`, 3 * MiB + 7);
      const r = spawnSync(process.execPath, [join(repoRoot, 'bin', 'dmaload.js'), 'load', f.path, '--verify', 'on', '--json'], {
        env: { ...process.env, DMALOAD_SHA256: impl },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      const v = JSON.parse(r.stdout).verified;
      assert.deepEqual([v.impl, v.sha256], [impl, f.sha256]);
    }
  });
});

describe('load with verify', () => {
  const chunk = MiB;
  const sizes = [0, 1, 4095, 4097, chunk - 1, chunk + 1, 3 * chunk + 5];
  const ios = ['direct', 'buffered', 'auto', 'uncached'] as const;
  for (const io of ios) {
    test(`io ${io}: the hash equals OpenSSL's for every size, target and part layout`, async (t) => {
      if (io === 'direct' && needsDirect(t)) return;
      const why = io === 'uncached' ? uncachedMissing(dir) : undefined;
      if (why) return t.skip(why);
      const leaks = leakCheck();
      for (const size of sizes) {
        const f = makeFile(dir, `sizes-${io}-${size}`, size);
        for (const target of ['memory', 'memfd'] as TargetName[]) {
          for (const partSize of [undefined, chunk]) {
            evictFile(f.path);
            // io 'auto' on a half-cached file: the cached half copied, the rest direct, both hashed in file order.
            if (io === 'auto') warmHalf(f.path, size);
            const b = await load(f.path, { io, target, chunkSize: chunk, verify: { sha256: f.sha256 }, ...(partSize ? { partSize } : {}) });
            try {
              const at = `${size} bytes, ${target}, parts ${partSize ?? 'off'}`;
              assert.equal(b.stats.verified?.sha256, f.sha256, at);
              assert.equal(b.stats.verified?.source, 'option', at);
              assert.equal(bufferSha256(b), f.sha256, at);
              // The largest file really went both ways (its first half cached): both paths fed the hash.
              if (io === 'auto' && size === 3 * chunk + 5 && testBase.direct)
                assert.ok(b.stats.copiedBytes > 0 && b.stats.directBytes > 0, `${at}: ${b.stats.io}`);
            } finally {
              b.close();
            }
          }
        }
      }
      assert.equal(await leaks(), undefined);
    });
  }

  test('verify true computes and reports the hash with nothing to compare; false and auto (no hub cache) check nothing', async () => {
    const f = makeFile(dir, 'computed', 2 * MiB + 7);
    const b = await load(f.path, { verify: true });
    assert.deepEqual([b.stats.verified?.sha256, b.stats.verified?.source], [f.sha256, 'computed']);
    b.close();
    for (const verify of [false, 'auto', undefined] as const) {
      const c = await load(f.path, verify === undefined ? {} : { verify });
      assert.equal(c.stats.verified, undefined, String(verify));
      c.close();
    }
  });

  test('into: a reload is verified too', async () => {
    const f = makeFile(dir, 'into', 5 * MiB + 1);
    const first = await load(f.path);
    const again = await load(f.path, { into: first, verify: { sha256: f.sha256 } });
    assert.equal(again.stats.verified?.sha256, f.sha256);
    again.close();
  });

  test('a 1 GiB + 4097 byte file (sparse): load and verifyFile agree with the hash computed from its islands', async (t) => {
    if (process.env.DMALOAD_SKIP_BIG === '1') return t.skip('DMALOAD_SKIP_BIG=1');
    const f = makeSparseFile(dir, 'big', 2 ** 30 + 4097);
    const b = await load(f.path, { verify: { sha256: f.sha256 } });
    assert.equal(b.stats.verified?.sha256, f.sha256);
    b.close();
    const r = await verifyFile(f.path, { sha256: f.sha256 });
    assert.deepEqual([r.ok, r.sha256, r.size], [true, f.sha256, 2 ** 30 + 4097]);
    if (testBase.direct) assert.equal(r.pageCacheBytes, 0);
  });

  test('loadRanges: the bytes no range covers are read to hash them (a given hash), or not at all (auto)', async () => {
    const f = makeFile(dir, 'ranges', 8 * MiB + 123);
    const { buffer } = await loadRanges(f.path, [{ offset: MiB + 10, length: 2 * MiB }], { verify: { sha256: f.sha256 } });
    assert.equal(buffer.stats.verified?.sha256, f.sha256);
    const extra = buffer.stats.verified?.extraBytes ?? 0;
    assert.ok(extra >= 8 * MiB + 123 - 2 * MiB - 8192, `extraBytes ${extra}`);
    buffer.close();
  });
});

describe('a corrupt file is refused', () => {
  const size = 3 * MiB + 5;
  const spots = { start: 0, end: size - 1, middle: Math.floor(size / 2), 'chunk boundary': MiB, 'before a chunk boundary': MiB - 1 };
  for (const [where, at] of Object.entries(spots)) {
    test(`one flipped byte at the ${where}: ERR_CHECKSUM_MISMATCH from load, loadRanges, copy and verifyFile; nothing leaked`, async () => {
      const good = makeFile(dir, `good-${at}`, size);
      const bad = flipped(good.path, `bad-${at}`, at);
      const actual = sha256(readFileSync(bad));
      const leaks = leakCheck();
      for (const target of ['memory', 'memfd'] as TargetName[]) {
        await assert.rejects(
          load(bad, { target, chunkSize: MiB, verify: { sha256: good.sha256 } }),
          (e: Error & { code?: string; expected?: string; actual?: string; path?: string }) => {
            assert.equal(e.code, 'ERR_CHECKSUM_MISMATCH');
            assert.deepEqual([e.expected, e.actual, e.path], [good.sha256, actual, bad]);
            assert.match(e.message, new RegExp(`${actual}.*${good.sha256}`));
            return true;
          },
        );
      }
      await assert.rejects(loadRanges(bad, [{ offset: 4096, length: 4096 }], { verify: { sha256: good.sha256 } }), { code: 'ERR_CHECKSUM_MISMATCH' });
      const dst = join(dir, `copy-${at}`);
      await assert.rejects(copy(bad, dst, { verify: { sha256: good.sha256 } }), { code: 'ERR_CHECKSUM_MISMATCH' });
      assert.equal(existsSync(dst), false, 'no destination appears');
      const r = await verifyFile(bad, { sha256: good.sha256 });
      assert.deepEqual([r.ok, r.sha256, r.expected], [false, actual, good.sha256]);
      assert.equal(await leaks(), undefined);
    });
  }

  test('cp --verify over an existing destination leaves it as it was', async () => {
    const good = makeFile(dir, 'cp-good', 2 * MiB + 3);
    const bad = flipped(good.path, 'cp-bad', 12345);
    const dst = join(dir, 'cp-dst');
    writeFileSync(dst, 'the old destination');
    const r = await cli('cp', bad, dst, '--verify', `sha256:${good.sha256}`);
    assert.equal(r.code, 1);
    assert.match(r.err, /ERR_CHECKSUM_MISMATCH/);
    assert.equal(readFileSync(dst, 'utf8'), 'the old destination');
    const ok = await cli('cp', good.path, dst, '--verify', `sha256:${good.sha256.toUpperCase()}`, '--json');
    assert.equal(ok.code, 0, ok.err);
    assert.equal((JSON.parse(ok.out) as { sha256: string }).sha256, good.sha256);
    assert.equal(sha256(readFileSync(dst)), good.sha256);
  });

  test('abort during a verified load: AbortError, nothing leaked', async () => {
    const f = makeFile(dir, 'abort', 48 * MiB);
    const leaks = leakCheck();
    const ac = new AbortController();
    await assert.rejects(
      load(f.path, { chunkSize: MiB, queueDepth: 2, verify: { sha256: f.sha256 }, signal: ac.signal, onProgress: (p) => p.bytes > 4 * MiB && ac.abort() }),
      { name: 'AbortError' },
    );
    const ac2 = new AbortController();
    await assert.rejects(verifyFile(f.path, { chunkSize: MiB, signal: ac2.signal, onProgress: (p) => p.bytes > 0 && ac2.abort() }), { name: 'AbortError' });
    assert.equal(await leaks(), undefined);
  });

  test('bad verify values: coded errors naming the option', async () => {
    const f = makeFile(dir, 'bad-values', 10);
    const cases: Array<[unknown, string]> = [
      ['yes', 'ERR_INVALID_ARG_TYPE'],
      [null, 'ERR_INVALID_ARG_TYPE'],
      [{ sha256: 5 }, 'ERR_INVALID_ARG_TYPE'],
      [{ sha256: 'abc' }, 'ERR_INVALID_ARG_VALUE'],
      [{ sha256: 'g'.repeat(64) }, 'ERR_INVALID_ARG_VALUE'],
    ];
    for (const [verify, code] of cases) {
      await assert.rejects(
        load(f.path, { verify: verify as never }),
        (e: Error & { code?: string }) => e.code === code && /verify/.test(e.message),
        JSON.stringify(verify),
      );
    }
    const r = await cli('load', f.path, '--verify', 'sha256:xyz');
    assert.equal(r.code, 2);
    // dmaload verify: usage errors (exit 2, saying what is wrong) before anything is read.
    const usage: Array<[string[], RegExp]> = [
      [[], /at least one FILE/],
      [[f.path, '--sha256', 'abc'], /--sha256 must be 64 hex digits/],
      [[f.path, f.path, '--sha256', f.sha256], /--sha256 checks one FILE/],
      [[f.path, '--io', 'fast'], /--io must be one of/],
    ];
    for (const [args, says] of usage) {
      const u = await cli('verify', ...args);
      assert.equal(u.code, 2, `verify ${args.join(' ')}: ${u.err}`);
      assert.match(u.err, says);
    }
    const cp = await cli('cp', f.path, join(dir, 'cp-usage'), '--verify', 'maybe');
    assert.equal(cp.code, 2);
    assert.match(cp.err, /--verify must be auto, on, off or sha256:HEX/);
    assert.equal(existsSync(join(dir, 'cp-usage')), false);
  });
});

describe('a Hugging Face hub cache', () => {
  /** models--org--name/{blobs/<hash>, snapshots/<rev>/<file> -> ../../blobs/<hash>}, as huggingface_hub lays it out. */
  function hub(
    files: Record<string, Uint8Array>,
    blobName: (bytes: Uint8Array) => string = sha256,
  ): { root: string; snapshot: string; blob(file: string): string } {
    const root = join(dir, `hub-${Math.random().toString(36).slice(2)}`, 'models--org--tiny');
    const snapshot = join(root, 'snapshots', '0123456789abcdef0123456789abcdef01234567');
    const blobs: Record<string, string> = {};
    mkdirSync(join(root, 'blobs'), { recursive: true });
    for (const [name, bytes] of Object.entries(files)) {
      const blob = join(root, 'blobs', blobName(bytes));
      writeFileSync(blob, bytes);
      const link = join(snapshot, name);
      mkdirSync(dirname(link), { recursive: true });
      symlinkSync(relative(dirname(link), blob), link);
      blobs[name] = blob;
    }
    return { root, snapshot, blob: (f) => blobs[f]! };
  }

  test('a blob named by its SHA-256 is verified without options; verify false turns it off', async () => {
    const bytes = randomBytes(3 * MiB + 17);
    const h = hub({ 'model.bin': bytes });
    const b = await load(join(h.snapshot, 'model.bin'));
    assert.deepEqual([b.stats.verified?.sha256, b.stats.verified?.source], [sha256(bytes), 'hub-cache']);
    b.close();
    const off = await load(join(h.snapshot, 'model.bin'), { verify: false });
    assert.equal(off.stats.verified, undefined);
    off.close();
  });

  test('a corrupted blob is ERR_CHECKSUM_MISMATCH naming the file, from load, copy and dmaload verify', async () => {
    const bytes = randomBytes(2 * MiB + 1);
    const h = hub({ 'model.bin': bytes });
    const fd = openSync(h.blob('model.bin'), 'r+');
    writeSync(fd, Buffer.from([bytes[MiB]! ^ 1]), 0, 1, MiB);
    closeSync(fd);
    const leaks = leakCheck();
    const path = join(h.snapshot, 'model.bin');
    await assert.rejects(
      load(path),
      (e: Error & { code?: string; path?: string }) => e.code === 'ERR_CHECKSUM_MISMATCH' && e.path === path && /hub-cache|Hugging Face/.test(e.message),
    );
    await assert.rejects(copy(path, join(dir, 'hub-copy')), { code: 'ERR_CHECKSUM_MISMATCH' });
    assert.equal(await leaks(), undefined);
    const r = await cli('verify', path);
    assert.equal(r.code, 1);
    assert.match(r.out, /^MISMATCH /);
  });

  test('a blob named by a git SHA-1 (40 hex digits: small files) is not taken for a SHA-256', async () => {
    const bytes = Buffer.from('{"model_type": "tiny"}\n');
    const h = hub({ 'config.json': bytes }, (b) => createHash('sha1').update(b).digest('hex'));
    const b = await load(join(h.snapshot, 'config.json'));
    assert.equal(b.stats.verified, undefined);
    b.close();
    const r = await cli('verify', join(h.snapshot, 'config.json'));
    assert.equal(r.code, 0);
    assert.match(r.out, /^- +[0-9a-f]{64} .*nothing to compare with/);
  });

  test('a sharded safetensors model (index and shards) is verified per shard by loadModel; one bad shard fails it', async () => {
    const shard = (name: string, n: number) => {
      const p = join(dir, `tmp-${name}`);
      return writeSafetensors(p, [{ name: `${name}.w`, dtype: 'F32', shape: [n], data: randomBytes(n * 4) }]);
    };
    const s1 = shard('a', 300_000);
    const s2 = shard('b', 200_001);
    const index = Buffer.from(
      JSON.stringify({ metadata: {}, weight_map: { 'a.w': 'model-00001-of-00002.safetensors', 'b.w': 'model-00002-of-00002.safetensors' } }),
    );
    const h = hub({ 'model.safetensors.index.json': index, 'model-00001-of-00002.safetensors': s1, 'model-00002-of-00002.safetensors': s2 });
    const m = await loadModel(join(h.snapshot, 'model.safetensors.index.json'));
    try {
      assert.equal(m.stats.perFile.length, 2);
      for (const f of m.stats.perFile) {
        assert.equal(f.stats.verified?.source, 'hub-cache', f.file);
        assert.equal(f.stats.verified?.sha256, sha256(f.file.endsWith('1-of-00002.safetensors') ? s1 : s2));
      }
    } finally {
      m.close();
    }
    const fd = openSync(h.blob('model-00002-of-00002.safetensors'), 'r+');
    writeSync(fd, Buffer.from([s2[s2.length - 1]! ^ 1]), 0, 1, s2.length - 1);
    closeSync(fd);
    const leaks = leakCheck();
    await assert.rejects(
      loadModel(join(h.snapshot, 'model.safetensors.index.json')),
      (e: Error & { code?: string; path?: string }) => e.code === 'ERR_CHECKSUM_MISMATCH' && /00002/.test(e.path ?? ''),
    );
    assert.equal(await leaks(), undefined);
  });

  test('dmaload verify: one line per file, --json, exit 0 when all match', async () => {
    const a = randomBytes(MiB + 3);
    const b = randomBytes(5);
    const h = hub({ 'a.bin': a, 'b.bin': b });
    const r = await cli('verify', join(h.snapshot, 'a.bin'), join(h.snapshot, 'b.bin'));
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, new RegExp(`^OK +${sha256(a)} `));
    assert.match(lines[1]!, new RegExp(`^OK +${sha256(b)} `));
    const j = await cli('verify', '--json', join(h.snapshot, 'a.bin'), join(dir, 'no-such-file'));
    assert.equal(j.code, 1);
    // One JSON document (issue #28 item 6): the files in order.
    const [first, second] = (JSON.parse(j.out) as { files: Array<{ ok?: boolean; sha256?: string; error?: { code: string } }> }).files;
    assert.deepEqual([first!.ok, first!.sha256], [true, sha256(a)]);
    assert.equal(second!.error?.code, 'ENOENT');
  });
});
