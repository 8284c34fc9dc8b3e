/**
 * dma-buf targets against a real kernel: udmabuf, dma-heap and a real driver (vgem) importing every buffer.
 * `npm run test:kernel` runs these in a qemu guest whose kernel has them; on a kernel without them each test is
 * reported as skipped with the reason, never as passed.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { allocate, load, probe, readInto, save, writeFrom } from '../../src/index.js';
import type { LoadedBuffer, TargetName } from '../../src/index.js';
import { native } from '../../src/engine/binding.js';
import { fdCount, makeFile, partsSha256, sha256, tempDir } from '../helpers.js';
import { closeDrm, drm } from './vgem.js';

const MiB = 1024 * 1024;
const HAVE: Record<string, string | undefined> = {
  udmabuf: existsSync('/dev/udmabuf') ? undefined : 'this kernel has no /dev/udmabuf (CONFIG_UDMABUF)',
  'dma-heap': existsSync('/dev/dma_heap/system') ? undefined : 'this kernel has no system DMA heap (/dev/dma_heap/system)',
};
const ANY = !HAVE.udmabuf || !HAVE['dma-heap'];
const TARGETS = ['udmabuf', 'dma-heap'] as const satisfies readonly TargetName[];

const { dir, cleanup } = tempDir();
after(cleanup);
const files = new Map<number, { path: string; sha256: string }>();
const SIZES = [1, 4097, 64 * MiB, 64 * MiB + 1, 200 * MiB + 123];
before(() => {
  if (ANY) for (const s of SIZES) files.set(s, makeFile(dir, `f-${s}`, s));
});

after(closeDrm);

/** Every part must import into a real driver: DRM_IOCTL_PRIME_FD_TO_HANDLE succeeds. */
function importAll(b: LoadedBuffer): void {
  for (const p of b.parts) {
    const h = native.drmPrimeImport(drm(), p.fd);
    assert.ok(h > 0, `vgem refused dma-buf fd ${p.fd} (part at ${p.offset}): errno ${-h}`);
  }
}

for (const target of TARGETS) {
  describe(`${target}: loads byte-exact, read back through the CPU view and each dma-buf, imported by vgem`, () => {
    for (const io of ['direct', 'buffered'] as const) {
      for (const overlap of [true, false]) {
        test(`${target} ${io} overlap ${overlap ? 'on' : 'off'}: sizes ${SIZES.join(', ')}`, async (t) => {
          if (HAVE[target]) return t.skip(HAVE[target]);
          drm(); // opened once for the whole file, before fds are counted
          for (const size of SIZES) {
            // The biggest file once per target and io (overlap on), to stay inside CI's time under emulation.
            if (size > 100 * MiB && !overlap) continue;
            const f = files.get(size)!;
            const fds = fdCount();
            const b = await load(f.path, { target, io, overlap });
            try {
              assert.equal(b.stats.io, io);
              assert.equal(sha256(b.bytes), f.sha256, `CPU view, ${size}`);
              assert.equal(partsSha256(b), f.sha256, `dma-buf mmaps, ${size}`);
              if (target === 'udmabuf') assert.equal(b.parts.length, Math.ceil(size / (64 * MiB)), 'parts of size_limit_mb');
              assert.equal(
                b.parts.reduce((n, p) => n + p.size, 0),
                size,
              );
              importAll(b);
            } finally {
              b.close();
            }
            assert.equal(fdCount(), fds, 'every fd closed');
          }
        });
      }
    }

    test(`${target} partSize 32 MiB: a set of 32 MiB dma-bufs, parts timed`, async (t) => {
      if (HAVE[target]) return t.skip(HAVE[target]);
      const f = files.get(64 * MiB + 1)!;
      const b = await load(f.path, { target, partSize: 32 * MiB });
      try {
        assert.deepEqual(
          b.parts.map((p) => p.size),
          [32 * MiB, 32 * MiB, 1],
        );
        assert.equal(b.stats.parts.length, 3);
        assert.equal(partsSha256(b), f.sha256);
        importAll(b);
      } finally {
        b.close();
      }
    });

    test(`${target}: an empty file is refused (a dma-buf cannot be empty)`, async (t) => {
      if (HAVE[target]) return t.skip(HAVE[target]);
      const f = makeFile(dir, 'empty', 0);
      const fds = fdCount();
      await assert.rejects(load(f.path, { target }), { code: 'ERR_EMPTY_DMABUF' });
      assert.equal(fdCount(), fds);
    });

    test(`${target}: 100 load/close cycles leak no fd and no mapping`, async (t) => {
      if (HAVE[target]) return t.skip(HAVE[target]);
      const f = files.get(4097)!;
      const fds = fdCount();
      const maps = native.liveMappings();
      for (let i = 0; i < 100; i++) (await load(f.path, { target })).close();
      assert.equal(fdCount(), fds);
      assert.equal(native.liveMappings(), maps);
    });

    test(`${target}: readInto, writeFrom and save work on it`, async (t) => {
      if (HAVE[target]) return t.skip(HAVE[target]);
      const f = files.get(4097)!;
      const file = readFileSync(f.path);
      const b = await allocate(3 * 4096, { target });
      try {
        assert.equal(await readInto(b, f.path, { fileOffset: 1, bufOffset: 4096, length: 4096 }), 4096);
        assert.equal(sha256(b.bytes.subarray(4096, 8192)), sha256(file.subarray(1, 4097)));
        const out = join(dir, `w-${target}`);
        assert.equal(await writeFrom(b, out, { bufOffset: 4096, length: 4096 }), 4096);
        assert.equal(sha256(readFileSync(out)), sha256(file.subarray(1, 4097)));
        await save(b, out);
        assert.equal(readFileSync(out).length, 3 * 4096);
      } finally {
        b.close();
      }
    });
  });
}

describe('dma-buf bad input', () => {
  test('udmabuf: partSize over size_limit_mb names the parameter and how to raise it', async (t) => {
    if (HAVE.udmabuf) return t.skip(HAVE.udmabuf);
    const f = files.get(64 * MiB + 1)!;
    const fds = fdCount();
    await assert.rejects(load(f.path, { target: 'udmabuf', partSize: 128 * MiB }), {
      code: 'ERR_UDMABUF_SIZE_LIMIT',
      message: /size_limit_mb.*\/sys\/module\/udmabuf\/parameters\/size_limit_mb/,
    });
    assert.equal(fdCount(), fds);
  });

  test('dma-heap: an unknown heap is ERR_NO_HEAP, listing the heaps present', async () => {
    const f = makeFile(dir, 'small', 100);
    const present = existsSync('/dev/dma_heap') ? readdirSync('/dev/dma_heap') : [];
    await assert.rejects(load(f.path, { target: 'dma-heap', heap: 'no-such-heap' }), (e: Error & { code: string }) => {
      assert.equal(e.code, 'ERR_NO_HEAP');
      for (const h of present) assert.ok(e.message.includes(h), `lists ${h}`);
      if (present.length === 0) assert.match(e.message, /none/);
      return true;
    });
  });

  test('udmabuf: a kernel without /dev/udmabuf gives ERR_NO_UDMABUF with the device path', async (t) => {
    if (!HAVE.udmabuf) return t.skip('this kernel has /dev/udmabuf');
    const f = makeFile(dir, 'small2', 100);
    await assert.rejects(load(f.path, { target: 'udmabuf' }), { code: 'ERR_NO_UDMABUF', path: '/dev/udmabuf' });
  });

  test('probe shows udmabuf and the heaps when present', async (t) => {
    if (!ANY) return t.skip('no dma-buf devices on this kernel');
    const p = await probe();
    assert.equal(p.udmabuf.present, !HAVE.udmabuf);
    if (!HAVE.udmabuf) assert.equal(typeof p.udmabuf.sizeLimitMb, 'number');
    if (!HAVE['dma-heap']) assert.ok(p.dmaHeaps.includes('system'));
  });
});

describe('verify on dma-buf targets', () => {
  for (const target of TARGETS) {
    test(`${target}: the SHA-256 computed while loading equals the file's, over parts; a wrong one is ERR_CHECKSUM_MISMATCH with no fd left`, async (t) => {
      const missing = HAVE[target];
      if (missing) return t.skip(missing);
      const f = files.get(200 * MiB + 123)!;
      const b = await load(f.path, { target, partSize: 64 * MiB, verify: { sha256: f.sha256 } });
      try {
        assert.equal(b.stats.verified?.sha256, f.sha256);
        assert.equal(partsSha256(b), f.sha256);
      } finally {
        b.close();
      }
      const fds = fdCount();
      await assert.rejects(load(f.path, { target, partSize: 64 * MiB, verify: { sha256: '0'.repeat(64) } }), { code: 'ERR_CHECKSUM_MISMATCH' });
      assert.equal(fdCount(), fds);
    });
  }
});
