import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { copy, load } from '../src/index.js';
import { evict } from '../src/pipeline/cache.js';
import { C, native } from '../src/engine/binding.js';
import { bufferSha256, leakCheck, makeFile, sha256, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);

describe('load: bytes exact for every size, target and io', () => {
  const sizes = [0, 1, 4095, 4096, 4097, MiB + 1, 9 * MiB + 12345];
  for (const target of ['memory', 'memfd'] as const) {
    for (const io of ['direct', 'buffered', 'auto'] as const) {
      test(`${target} ${io}: sizes ${sizes.join(', ')}`, async () => {
        const leaks = leakCheck();
        for (const size of sizes) {
          const f = makeFile(dir, `s-${size}`, size);
          const fd = openSync(f.path, 'r');
          evict(fd);
          closeSync(fd);
          const t0 = performance.now();
          const c0 = process.cpuUsage();
          const b = await load(f.path, { target, io });
          const wall = performance.now() - t0;
          const cpu = process.cpuUsage(c0);
          try {
            assert.equal(b.size, size);
            assert.equal(b.bytes.length, size);
            assert.equal(bufferSha256(b), f.sha256, `size ${size}`);
            assert.equal(b.stats.io, io === 'buffered' ? 'buffered' : 'direct');
            // The load's own clocks run inside the call: never longer than this test measured around it (the stats
            // are rounded to 0.01 ms), and a load always takes some time.
            assert.ok(b.stats.ms > 0 && b.stats.ms <= wall + 0.01, `ms ${b.stats.ms}, wall around the call ${wall}`);
            assert.ok(b.stats.cpuMs >= 0 && b.stats.cpuMs <= (cpu.user + cpu.system) / 1000 + 0.01, `cpuMs ${b.stats.cpuMs}`);
            if (io !== 'buffered') assert.equal(b.stats.pageCacheBytes, 0, 'direct reads leave no page cache');
            if (target === 'memfd') {
              // The fd holds exactly the file, sealed against resizing; read it back through the fd itself.
              const st = fstatSync(b.fd);
              assert.equal(st.size, size);
              const seals = native.seals(b.fd, 0);
              assert.equal(seals & (C.F_SEAL_SHRINK | C.F_SEAL_GROW), C.F_SEAL_SHRINK | C.F_SEAL_GROW);
              const back = new Uint8Array(size);
              assert.equal(size ? readSync(b.fd, back, 0, size, 0) : 0, size);
              assert.equal(sha256(back), f.sha256);
              assert.throws(() => truncateSync(`/proc/self/fd/${b.fd}`, size + 1), { code: 'EPERM' });
            } else {
              assert.equal(b.fd, -1);
            }
          } finally {
            b.close();
          }
        }
        assert.equal(await leaks(), undefined);
      });
    }
  }

  test('threads engine (io_uring refused) gives the same bytes', async () => {
    const f = makeFile(dir, 'threads', 5 * MiB + 7);
    process.env.DMALOAD_ENGINE = 'threads';
    try {
      const b = await load(f.path, { io: 'direct', chunkSize: 65536, queueDepth: 4 });
      assert.equal(b.stats.engine, 'threads');
      assert.equal(sha256(b.bytes), f.sha256);
      b.close();
    } finally {
      delete process.env.DMALOAD_ENGINE;
    }
  });

  test('huge pages: memory target 2 MiB-aligned with hugePages on and off', async () => {
    const f = makeFile(dir, 'huge', 6 * MiB + 1);
    for (const hugePages of [true, false]) {
      const b = await load(f.path, { hugePages });
      assert.equal(native.address(b.bytes.buffer as ArrayBuffer) % BigInt(2 * MiB), 0n);
      assert.equal(sha256(b.bytes), f.sha256);
      b.close();
    }
  });

  test('a file on /dev/shm (tmpfs): io auto loads buffered and says why, io direct is ERR_DIRECT_IO_UNSUPPORTED', async (t) => {
    if (!existsSync('/dev/shm')) return t.skip('no /dev/shm on this machine');
    const shm = mkdtempSync('/dev/shm/dmaload-test-');
    try {
      const f = makeFile(shm, 'shm', 3 * MiB + 3);
      const leaks = leakCheck();
      await assert.rejects(load(f.path, { io: 'direct' }), { code: 'ERR_DIRECT_IO_UNSUPPORTED', path: f.path });
      assert.equal(await leaks(), undefined);
      const b = await load(f.path);
      assert.equal(b.stats.io, 'buffered');
      assert.match(b.stats.ioReason ?? '', /direct I\/O/);
      assert.equal(sha256(b.bytes), f.sha256);
      b.close();
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  test('16 concurrent loads of different files, bytes verified', async () => {
    const files = Array.from({ length: 16 }, (_, i) => makeFile(dir, `c-${i}`, 2 * MiB + i * 4099, i + 1));
    const round = async () => {
      const bufs = await Promise.all(files.map((f, i) => load(f.path, { target: i % 2 ? 'memfd' : 'memory' })));
      bufs.forEach((b, i) => assert.equal(sha256(b.bytes), files[i]!.sha256));
      bufs.forEach((b) => b.close());
    };
    const leaks = leakCheck();
    await round();
    assert.equal(await leaks(), undefined);
  });

  test('200 load/close cycles leak no fd and no mapping', async () => {
    const f = makeFile(dir, 'cycles', 256 * 1024 + 5);
    await load(f.path).then((b) => b.close()); // warm up lazily created state
    const leaks = leakCheck();
    for (let i = 0; i < 200; i++) {
      const b = await load(f.path, { target: i % 2 ? 'memfd' : 'memory' });
      if (i % 50 === 0) assert.equal(sha256(b.bytes), f.sha256);
      b.close();
    }
    assert.equal(await leaks(), undefined);
  });
});

describe('load: the buffer', () => {
  test('close is idempotent; use after close throws ERR_BUFFER_CLOSED; views become empty', async () => {
    const f = makeFile(dir, 'close', 8192 + 1);
    const b = await load(f.path, { target: 'memfd' });
    const view = b.bytes;
    const fd = b.fd;
    b.close();
    b.close();
    assert.equal(b.closed, true);
    assert.equal(view.length, 0, 'the mapping is gone, so is the view');
    assert.throws(() => b.bytes, { code: 'ERR_BUFFER_CLOSED' });
    assert.throws(() => b.fd, { code: 'ERR_BUFFER_CLOSED' });
    assert.throws(() => fstatSync(fd), { code: 'EBADF' });
  });

  test('await using frees it (Symbol.asyncDispose)', async () => {
    const f = makeFile(dir, 'dispose', 4096);
    const b = await load(f.path);
    await b[Symbol.asyncDispose]();
    assert.equal(b.closed, true);
  });

  test('progress: monotonic, ends at the total', async () => {
    const size = 24 * MiB + 5;
    const f = makeFile(dir, 'progress', size);
    const seen: number[] = [];
    const b = await load(f.path, { chunkSize: 256 * 1024, queueDepth: 2, onProgress: (p) => (assert.equal(p.total, size), seen.push(p.bytes)) });
    b.close();
    assert.ok(seen.length >= 1);
    assert.equal(seen.at(-1), size);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! >= seen[i - 1]!);
  });

  test('a throwing onProgress ends the load with its error and frees everything', async () => {
    const f = makeFile(dir, 'throwing', 16 * MiB);
    const leaks = leakCheck();
    await assert.rejects(
      load(f.path, {
        chunkSize: 65536,
        queueDepth: 1,
        onProgress: () => {
          throw new Error('boom');
        },
      }),
      /boom/,
    );
    assert.equal(await leaks(), undefined);
  });
});

describe('load: abort', () => {
  test('abort at 0%: rejects with AbortError before allocating', async () => {
    const f = makeFile(dir, 'abort0', MiB);
    const leaks = leakCheck();
    await assert.rejects(load(f.path, { signal: AbortSignal.abort() }), { name: 'AbortError' });
    assert.equal(await leaks(), undefined);
  });

  test('abort mid-way: stops within a request, frees everything', async () => {
    const f = makeFile(dir, 'abortmid', 64 * MiB);
    for (const target of ['memory', 'memfd'] as const) {
      const leaks = leakCheck();
      const ac = new AbortController();
      let last = 0;
      const p = load(f.path, {
        target,
        io: 'direct',
        chunkSize: 65536,
        queueDepth: 1,
        signal: ac.signal,
        onProgress: (pr) => {
          last = pr.bytes;
          if (pr.bytes > 0) ac.abort();
        },
      });
      await assert.rejects(p, { name: 'AbortError', code: 'ABORT_ERR' });
      assert.ok(last < 64 * MiB, 'stopped before the end');
      assert.equal(await leaks(), undefined);
    }
  });

  test('abort after completion changes nothing', async () => {
    const f = makeFile(dir, 'abortafter', MiB + 3);
    const ac = new AbortController();
    const b = await load(f.path, { signal: ac.signal });
    ac.abort();
    assert.equal(sha256(b.bytes), f.sha256);
    b.close();
  });
});

describe('load: bad input', () => {
  test('missing file: ENOENT with the path', async () => {
    const p = join(dir, 'nope');
    await assert.rejects(load(p), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && e.path === p && e.message.includes(p));
  });

  test('a directory: EISDIR', async () => {
    const leaks = leakCheck();
    await assert.rejects(load(dir), { code: 'EISDIR', path: dir });
    assert.equal(await leaks(), undefined);
  });

  test('a FIFO: ERR_NOT_REGULAR_FILE without hanging', async () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const leaks = leakCheck();
    await assert.rejects(load(fifo), { code: 'ERR_NOT_REGULAR_FILE', path: fifo });
    assert.equal(await leaks(), undefined);
  });

  test('/dev/zero: ERR_NOT_REGULAR_FILE', async () => {
    await assert.rejects(load('/dev/zero'), { code: 'ERR_NOT_REGULAR_FILE', path: '/dev/zero' });
  });

  test('procfs and sysfs pseudo-files (regular by stat, their size not their content): ERR_NOT_REGULAR_FILE, no empty copy', async () => {
    // /proc/self/status stats as a 0-byte regular file and reads as a page of text: a load gave 0 bytes, a copy an
    // empty file. sysfs files stat as 4096 bytes and read shorter.
    const leaks = leakCheck();
    for (const p of ['/proc/self/status', '/sys/kernel/mm/transparent_hugepage/enabled']) {
      if (!existsSync(p)) continue;
      await assert.rejects(load(p), { code: 'ERR_NOT_REGULAR_FILE', path: p, message: /pseudo-file/ });
      const dst = join(dir, 'pseudo-copy');
      await assert.rejects(copy(p, dst), { code: 'ERR_NOT_REGULAR_FILE', path: p });
      assert.equal(existsSync(dst), false, 'no destination file');
    }
    assert.equal(await leaks(), undefined);
  });

  test('unknown target and io values, bad tuning: argument errors naming the option', async () => {
    const f = makeFile(dir, 'args', 10);
    await assert.rejects(load(f.path, { target: 'gpu' as never }), { code: 'ERR_INVALID_ARG_VALUE', message: /"target".*'memory', 'memfd'/ });
    await assert.rejects(load(f.path, { io: 'fast' as never }), { code: 'ERR_INVALID_ARG_VALUE', message: /"io"/ });
    await assert.rejects(load(f.path, { chunkSize: 1000 }), { code: 'ERR_OUT_OF_RANGE', message: /chunkSize/ });
    await assert.rejects(load(f.path, { queueDepth: 0 }), { code: 'ERR_OUT_OF_RANGE', message: /queueDepth/ });
    await assert.rejects(load(f.path, { hugePages: 'yes' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /hugePages/ });
    await assert.rejects(load(f.path, { memoryBudget: -1 }), { code: 'ERR_OUT_OF_RANGE', message: /memoryBudget/ });
    await assert.rejects(load(f.path, { memoryBudget: '8GiB' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /memoryBudget/ });
    await assert.rejects(load(''), { code: 'ERR_INVALID_ARG_TYPE' });
    process.env.DMALOAD_QUEUE_DEPTH = 'many';
    try {
      await assert.rejects(load(f.path), { code: 'ERR_OUT_OF_RANGE', message: /DMALOAD_QUEUE_DEPTH/ });
    } finally {
      delete process.env.DMALOAD_QUEUE_DEPTH;
    }
  });

  test('larger than the memory budget: ERR_MEMORY_BUDGET before allocating', async () => {
    const f = makeFile(dir, 'budget', 2 * MiB);
    const leaks = leakCheck();
    await assert.rejects(load(f.path, { memoryBudget: MiB }), { code: 'ERR_MEMORY_BUDGET', path: f.path });
    assert.equal(await leaks(), undefined);
  });

  test('file truncated during the load: ERR_FILE_CHANGED, never a short buffer', async () => {
    for (const io of ['direct', 'buffered'] as const) {
      const f = makeFile(dir, `trunc-${io}`, 32 * MiB);
      const leaks = leakCheck();
      let done = false;
      const p = load(f.path, {
        io,
        chunkSize: 65536,
        queueDepth: 1,
        onProgress: () => {
          if (!done) {
            done = true;
            truncateSync(f.path, 5 * MiB + 100);
          }
        },
      });
      await assert.rejects(p, { code: 'ERR_FILE_CHANGED', path: f.path });
      assert.equal(await leaks(), undefined);
    }
  });

  test('file grown during the load: ERR_FILE_CHANGED, never a silently stale buffer', async () => {
    const f = makeFile(dir, 'grow', 16 * MiB);
    let done = false;
    const p = load(f.path, {
      chunkSize: 65536,
      queueDepth: 1,
      onProgress: () => {
        if (!done) {
          done = true;
          appendFileSync(f.path, 'more');
        }
      },
    });
    await assert.rejects(p, { code: 'ERR_FILE_CHANGED' });
  });
});
