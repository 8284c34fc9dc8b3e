/**
 * udmabuf over a hugetlb memfd (`hugePages: 'hugetlb'`, MFD_HUGETLB) against a real kernel: the guest reserves a
 * pool (echo N > /proc/sys/vm/nr_hugepages), loads files byte-exact into udmabufs whose pages come from it, reads
 * each dma-buf back through its own mmap, imports every one into vgem, and refuses a pool too small with
 * ERR_HUGETLB_POOL and nothing left. On a kernel without udmabuf or hugetlb pages, or not as root, each test skips
 * with the reason.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { allocate, load } from '../../src/index.js';
import { native } from '../../src/engine/binding.js';
import { fdCount, makeFile, partsSha256, sha256, tempDir } from '../helpers.js';
import { closeDrm, drm } from './vgem.js';

const MiB = 1024 * 1024;
const NR = '/proc/sys/vm/nr_hugepages';

function pool(): { size: number; total: number; free: number; rsvd: number } {
  const m = readFileSync('/proc/meminfo', 'utf8');
  const n = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(m)?.[1] ?? NaN);
  return { size: n('Hugepagesize') * 1024, total: n('HugePages_Total'), free: n('HugePages_Free'), rsvd: n('HugePages_Rsvd') };
}

const SKIP = !existsSync('/dev/udmabuf')
  ? 'this kernel has no /dev/udmabuf (CONFIG_UDMABUF)'
  : !/^Hugepagesize:/m.test(readFileSync('/proc/meminfo', 'utf8'))
    ? 'this kernel has no hugetlb pages (CONFIG_HUGETLBFS)'
    : process.getuid?.() !== 0
      ? 'reserving a hugetlb pool needs root'
      : undefined;

const { dir, cleanup } = tempDir();
after(cleanup);
after(closeDrm);

const SIZES = [4097, 2 * MiB + 1, 64 * MiB + 4097];
const files = new Map<number, { path: string; sha256: string }>();
let saved: number | undefined;
let short: string | undefined;

before(() => {
  if (SKIP) return;
  for (const s of SIZES) files.set(s, makeFile(dir, `h-${s}`, s));
  saved = pool().total;
  // The largest file, once at a time, and a page to spare.
  const want = Math.ceil((64 * MiB + 4097) / pool().size) + 1;
  writeFileSync(NR, `${saved + want}\n`);
  if (pool().free - pool().rsvd < want) short = `the guest's kernel found only ${pool().free - pool().rsvd} of ${want} huge pages`;
});
after(() => {
  if (saved !== undefined) writeFileSync(NR, `${saved}\n`);
});

describe('udmabuf over a hugetlb memfd', { skip: SKIP }, () => {
  for (const io of ['direct', 'buffered'] as const) {
    test(`${io}: byte-exact at ${SIZES.join(', ')} through the CPU view and each dma-buf, imported by vgem, pool pages given back`, async (t) => {
      if (short) return t.skip(short);
      drm();
      for (const size of SIZES) {
        const f = files.get(size)!;
        const fds = fdCount();
        const free0 = pool().free;
        const b = await load(f.path, { target: 'udmabuf', io, hugePages: 'hugetlb' });
        try {
          const pages = Math.ceil((Math.ceil(size / 4096) * 4096) / pool().size);
          assert.equal(b.size, size);
          assert.deepEqual(b.stats.hugetlb, { pageSize: pool().size, pages });
          assert.equal(pool().free, free0 - pages, 'the udmabuf pins pool pages');
          assert.equal(sha256(b.bytes), f.sha256, `CPU view, ${size}`);
          assert.equal(partsSha256(b), f.sha256, `dma-buf mmaps, ${size}`);
          assert.equal(b.parts.length, Math.ceil(size / (64 * MiB)), 'parts of size_limit_mb');
          for (const p of b.parts) {
            const h = native.drmPrimeImport(drm(), p.fd);
            assert.ok(h > 0, `vgem refused hugetlb-backed dma-buf fd ${p.fd} (part at ${p.offset}): errno ${-h}`);
          }
        } finally {
          b.close();
        }
        assert.equal(fdCount(), fds, 'every fd closed');
        assert.equal(pool().free, free0, 'the pages went back to the pool');
      }
    });
  }

  test('allocate(): an empty hugetlb udmabuf of whole pages', async (t) => {
    if (short) return t.skip(short);
    const b = await allocate(3 * MiB, { target: 'udmabuf', hugePages: 'hugetlb' });
    try {
      assert.equal(b.stats.hugetlb?.pages, 2);
      assert.equal(b.parts.length, 1);
      b.bytes.fill(7);
      assert.equal(sha256(b.bytes), sha256(new Uint8Array(3 * MiB).fill(7)));
    } finally {
      b.close();
    }
  });

  test('a pool too small: ERR_HUGETLB_POOL saying pages needed, free and the sysctl; no fd, no mapping, the pool unchanged', async (t) => {
    if (short) return t.skip(short);
    const big = files.get(64 * MiB + 4097)!;
    const need = Math.ceil((64 * MiB + 4097) / pool().size);
    const p0 = pool();
    // Keep all but 4 of the pages needed busy in a hugetlb memory buffer of our own.
    const hold = await allocate((p0.free - p0.rsvd - (need - 4)) * p0.size, { hugePages: 'hugetlb' });
    try {
      const p1 = pool();
      const fds = fdCount();
      const maps = native.liveMappings();
      await assert.rejects(load(big.path, { target: 'udmabuf', hugePages: 'hugetlb' }), (e: Error & { code: string; pagesNeeded: number }) => {
        assert.equal(e.code, 'ERR_HUGETLB_POOL');
        assert.equal(e.pagesNeeded, need);
        assert.match(e.message, new RegExp(`needs ${need} huge pages .* has ${need - 4} available .* sysctl vm\\.nr_hugepages=${p1.total + 4}`));
        return true;
      });
      assert.equal(fdCount(), fds);
      assert.equal(native.liveMappings(), maps);
      assert.deepEqual(pool(), p1);
      const b = await load(big.path, { target: 'udmabuf', hugePages: 'hugetlb-or-small' });
      try {
        assert.equal(partsSha256(b), big.sha256);
        assert.equal(b.stats.hugetlb, undefined);
        assert.match(b.stats.memoryReason ?? '', /small pages: the hugetlb pool has/);
      } finally {
        b.close();
      }
    } finally {
      hold.close();
    }
  });
});
