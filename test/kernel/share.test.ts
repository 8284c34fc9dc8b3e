/**
 * `dmaload serve` with dma-buf targets against a real kernel (the qemu tier): a server whose buffers are udmabufs or
 * DMA-heap buffers hands their fds to clients (this process and another one), which map them read-only side by side
 * and must read the file's SHA-256; every received dma-buf imports into vgem. On a kernel without udmabuf or heaps each
 * test is skipped with the reason.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { native } from '../../src/engine/binding.js';
import { connect, serve } from '../../src/index.js';
import { bufferSha256 as hashOf, fdCount, makeFile, tempDir } from '../helpers.js';
import { closeDrm, drm } from './vgem.js';
import { child, socketDir } from '../share/util.js';

const MiB = 1024 * 1024;
const HAVE: Record<string, string | undefined> = {
  udmabuf: existsSync('/dev/udmabuf') ? undefined : 'this kernel has no /dev/udmabuf (CONFIG_UDMABUF)',
  'dma-heap': existsSync('/dev/dma_heap/system') ? undefined : 'this kernel has no system DMA heap (/dev/dma_heap/system)',
};
const { dir, cleanup } = tempDir('dmaload-kshare-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);
const files = new Map<number, { path: string; sha256: string }>();
const SIZES = [4097, 64 * MiB + 1];
before(() => {
  if (!HAVE.udmabuf || !HAVE['dma-heap']) for (const s of SIZES) files.set(s, makeFile(dir, `k-${s}`, s));
});

after(closeDrm);

for (const [target, partSize] of [
  ['udmabuf', undefined],
  ['dma-heap', undefined],
  ['dma-heap', 32 * MiB],
] as const) {
  describe(`serve --target ${target}${partSize ? ` --part-size ${partSize / MiB}MiB` : ''}`, () => {
    test('clients in this process and another read the file’s SHA-256 from the served dma-bufs; vgem imports them', async (t) => {
      if (HAVE[target]) return t.skip(HAVE[target]);
      drm();
      const fds = fdCount();
      const server = await serve({ socket: join(sockets.dir, `${target}-${partSize ?? 0}.sock`), target, ...(partSize ? { partSize } : {}) });
      const c = await connect(server.socket);
      try {
        for (const size of SIZES) {
          const f = files.get(size)!;
          const b = await c.load(f.path);
          try {
            assert.equal(b.target, target);
            assert.equal(b.readOnly, true);
            assert.equal(hashOf(b), f.sha256, `${target} ${size}`);
            const per = partSize ?? (target === 'udmabuf' ? 64 * MiB : Infinity);
            assert.equal(b.parts.length, Math.ceil(size / Math.min(per, Math.ceil(size / 4096) * 4096)));
            for (const p of b.parts) assert.ok(native.drmPrimeImport(drm(), p.fd) > 0, `vgem imports part at ${p.offset}`);
            const r = await child(['load', server.socket, f.path], { timeoutMs: 120_000 });
            assert.equal(r.code, 0, r.err);
            const got = JSON.parse(r.out) as { sha256: string; cached: boolean; target: string };
            assert.deepEqual([got.sha256, got.cached, got.target], [f.sha256, true, target]);
          } finally {
            b.close();
          }
        }
        assert.equal(server.status().loads, SIZES.length);
      } finally {
        c.close();
        await server.close();
      }
      assert.equal(fdCount(), fds, 'every fd closed');
    });
  });
}

describe('serve: a reply of more parts than one message may carry fds', () => {
  test('200 udmabuf parts arrive in messages of at most 64 fds, byte-exact, in this process and another', async (t) => {
    if (HAVE.udmabuf) return t.skip(HAVE.udmabuf);
    const f = makeFile(dir, 'k-200-parts', 200 * 4096 - 5);
    const fds = fdCount();
    const server = await serve({ socket: join(sockets.dir, 'parts.sock'), target: 'udmabuf', partSize: 4096 });
    const c = await connect(server.socket);
    try {
      const b = await c.load(f.path);
      try {
        assert.equal(b.parts.length, 200);
        assert.equal(hashOf(b), f.sha256);
      } finally {
        b.close();
      }
      const r = await child(['load', server.socket, f.path], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, r.err);
      assert.equal((JSON.parse(r.out) as { sha256: string }).sha256, f.sha256);
    } finally {
      c.close();
      await server.close();
    }
    assert.equal(fdCount(), fds, 'every fd closed');
  });
});
