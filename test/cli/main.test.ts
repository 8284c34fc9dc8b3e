import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { evictFile, makeFile, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const root = resolve(fileURLToPath(import.meta.url), '../../../..');

describe('cli: load', () => {
  test('--json --hash sha256: the loaded bytes hash like the file', async () => {
    const f = makeFile(dir, 'a', 3 * 1024 * 1024 + 17);
    for (const target of ['memory', 'memfd']) {
      evictFile(f.path); // cold: io auto reads it directly
      const r = await cli('load', f.path, '--json', '--hash', 'sha256', '--target', target);
      assert.equal(r.code, 0, r.err);
      const j = JSON.parse(r.out);
      assert.equal(j.sha256, f.sha256);
      assert.equal(j.path, f.path);
      assert.equal(j.size, 3 * 1024 * 1024 + 17);
      assert.equal(j.target, target);
      assert.equal(j.io, 'direct');
      for (const k of ['ms', 'cpuMs', 'pageCacheBytes']) assert.equal(typeof j[k], 'number', k);
      // How the bytes came: all read directly here (cold), none copied from the page cache.
      assert.equal(j.directBytes, 3 * 1024 * 1024 + 17);
      assert.equal(j.copiedBytes, 0);
      assert.equal(j.bytesRead, 3 * 1024 * 1024 + 17);
    }
  });

  test('human summary: one line with size, time, MB/s, CPU, page cache, io', async () => {
    const f = makeFile(dir, 'b', 100_000);
    const r = await cli('load', f.path, '--io', 'buffered');
    assert.equal(r.code, 0);
    assert.match(r.out, /^.*97\.7 KiB into memory in \d+ ms \(\d+ MB\/s\), CPU \d+ ms, page cache left .* io buffered\n$/);
    assert.equal(r.err, '', 'no progress bar when stderr is not a terminal');
  });

  test('errors: code and path on stderr, exit 1, no stack trace', async () => {
    const p = join(dir, 'missing');
    const r = await cli('load', p);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`ENOENT.*'${p}'`));
    assert.doesNotMatch(r.err, /\n\s+at /);
    const d = await cli('load', '/dev/zero');
    assert.equal(d.code, 1);
    assert.match(d.err, /ERR_NOT_REGULAR_FILE.*\/dev\/zero/);
  });

  test('--evict on a FIFO, a folder without a model, /dev/zero: the same error as without --evict, at once', async () => {
    const fifo = join(dir, 'evict-fifo');
    execFileSync('mkfifo', [fifo]);
    const run = promisify(execFile);
    for (const [p, code] of [
      [fifo, 'ERR_NOT_REGULAR_FILE'],
      // A folder is looked into for its model (docs/sources.md): this one holds none.
      [dir, 'ERR_MODEL_NOT_FOUND'],
      ['/dev/zero', 'ERR_NOT_REGULAR_FILE'],
    ] as const) {
      const errs: string[] = [];
      for (const flags of [[], ['--evict']]) {
        // A process of its own, killed if it hangs: opening a FIFO blocks until a writer comes.
        const e = await run(process.execPath, [join(root, 'bin/dmaload.js'), 'load', p, ...flags], { timeout: 10_000, killSignal: 'SIGKILL' }).then(
          () => assert.fail(`load ${p} ${flags.join(' ')} succeeded`),
          (e: { code: number | null; killed: boolean; stderr: string }) => e,
        );
        assert.equal(e.killed, false, `load ${p} ${flags.join(' ')} still hung after 10 s`);
        assert.equal(e.code, 1, e.stderr);
        assert.match(e.stderr, new RegExp(`^dmaload load: ${code}: .*'${p}'`));
        errs.push(e.stderr);
      }
      assert.equal(errs[1], errs[0], `${p}: --evict changes nothing about the error`);
    }
  });

  test('usage errors exit 2: unknown option, bad target, bad io, missing FILE, unknown command', async () => {
    for (const argv of [
      ['load', '--bogus', 'x'],
      ['load', 'x', '--target', 'gpu'],
      ['load', 'x', '--io', 'fast'],
      ['load', 'x', '--part-size', '3000'],
      ['load', 'x', '--part-size', 'huge'],
      ['load', 'x', '--overlap', 'maybe'],
      ['load', 'x', '--hash', 'md5'],
      ['load'],
      ['frobnicate'],
      [],
    ]) {
      const r = await cli(...argv);
      assert.equal(r.code, 2, argv.join(' '));
      assert.ok(r.err.length > 0);
    }
    assert.match((await cli('load', 'x', '--target', 'gpu')).err, /memory, memfd/);
  });

  test("an unknown flag is named with the nearest known one, in the CLI's words (exit 2)", async () => {
    for (const [argv, want] of [
      [['load', '--trget', 'memfd', 'x'], '--target'],
      [['cp', 'a', 'b', '--verfy', 'on'], '--verify'],
      [['inspect', 'x', '--world-sise', '2'], '--world-size'],
      [['pull', 'org/x', '--includ', '*.json'], '--include'],
    ] as const) {
      const r = await cli(...argv);
      assert.equal(r.code, 2, argv.join(' '));
      assert.match(r.err, new RegExp(`unknown option '${argv.find((a) => a.startsWith('--'))!}'; did you mean '${want}'\\?`));
      assert.doesNotMatch(r.err, /To specify a positional argument/, "not the parser's own text");
    }
    const far = await cli('load', '--zzzzzzzz', 'x');
    assert.equal(far.code, 2);
    assert.match(far.err, /unknown option '--zzzzzzzz'/);
  });

  test('--part-size, --overlap and --evict: a cold parts load with its parts in --json', async () => {
    const f = makeFile(dir, 'parts', 5 * 1024 * 1024 + 1);
    const r = await cli('load', f.path, '--evict', '--target', 'memfd', '--part-size', '2MiB', '--overlap', 'off', '--json', '--hash', 'sha256');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assert.equal(j.sha256, f.sha256);
    assert.equal(j.io, 'direct');
    assert.equal(j.overlap, false);
    assert.equal(j.parts.length, 3);
    for (const p of j.parts) for (const k of ['fd', 'offset', 'size', 'allocMs', 'ioMs']) assert.equal(typeof p[k], 'number', k);
    const bad = await cli('load', f.path, '--target', 'dma-heap', '--heap', 'nope');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /ERR_NO_HEAP/);
  });

  test('--help on every command', async () => {
    for (const argv of [['--help'], ['load', '--help'], ['probe', '--help'], ['cp', '--help'], ['bench', '--help'], ['inspect', '--help']]) {
      const r = await cli(...argv);
      assert.equal(r.code, 0);
      assert.match(r.out, /Usage: dmaload/);
    }
  });
});

describe('cli: probe', () => {
  test('--json reports kernel facts and the file system alignment', async () => {
    const f = makeFile(dir, 'p', 10);
    const r = await cli('probe', f.path, '--json');
    assert.equal(r.code, 0);
    const j = JSON.parse(r.out);
    assert.equal(typeof j.kernel, 'string');
    assert.equal(typeof j.ioUring.usable, 'boolean');
    assert.equal(j.file.path, f.path);
    assert.equal(typeof j.udmabuf.present, 'boolean');
    assert.ok(Array.isArray(j.dmaHeaps));
    if (j.file.directIo) assert.ok(j.file.offsetAlign >= 512);
  });

  test('table output names each fact', async () => {
    const r = await cli('probe');
    assert.equal(r.code, 0);
    for (const k of ['kernel', 'io_uring', 'transparent huge pages', 'udmabuf', 'DMA heaps', 'memlock limit']) assert.ok(r.out.includes(k), k);
  });
});

describe('cli: the bin script', () => {
  test('bin/dmaload.js runs as a process with exit codes', async () => {
    const run = promisify(execFile);
    const f = makeFile(dir, 'bin', 5000);
    const ok = await run(process.execPath, [join(root, 'bin/dmaload.js'), 'load', f.path, '--json', '--hash', 'sha256']);
    assert.equal(JSON.parse(ok.stdout).sha256, f.sha256);
    await assert.rejects(
      run(process.execPath, [join(root, 'bin/dmaload.js'), 'load', join(dir, 'nope')]),
      (e: { code: number; stderr: string }) => e.code === 1 && /ENOENT/.test(e.stderr),
    );
  });

  test("--version prints package.json's version; --help lists it", async () => {
    const run = promisify(execFile);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-v']) assert.equal((await run(process.execPath, [join(root, 'bin/dmaload.js'), flag])).stdout, `${pkg.version}\n`);
    assert.match((await cli('--help')).out, /--version/);
  });
});
