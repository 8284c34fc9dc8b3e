/**
 * hugetlb pages (`hugePages: 'hugetlb'`): memory from the pool reserved with vm.nr_hugepages, for the memory target
 * (MAP_HUGETLB) and memfd (MFD_HUGETLB); udmabuf over a hugetlb memfd is tested in the kernel tier
 * (test/kernel/hugetlb.test.ts). Every load is byte-exact against the source file; a pool too small is
 * ERR_HUGETLB_POOL before anything is read, with nothing left allocated and the pool as it was.
 *
 * Reserving a pool needs root: as root the tests set vm.nr_hugepages to what they need and put the old value back
 * afterwards; as any other user (and on a kernel without hugetlb pages) they skip with the reason. The option checks
 * run everywhere. The 1 GiB + 4097 case runs only with DMALOAD_BIG=1 (it reserves 513 pages), never with
 * DMALOAD_SKIP_BIG=1.
 */
import assert from 'node:assert/strict';
import { existsSync, fstatSync, readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { HugetlbPoolError, allocate, createPool, load, probe, readInto } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import { hugetlbRows, label, planRows } from '../src/bench/rows.js';
import type { RowSpec } from '../src/bench/methods.js';
import { cli } from './cli/run.js';
import { bufferSha256, evictFile, leakCheck, makeFile, sha256, tempDir, testBase, vmFlags } from './helpers.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const NR = '/proc/sys/vm/nr_hugepages';

/** The default pool's counts, read straight from the kernel (an oracle independent of src/engine/hugetlb.ts). */
function pool(): { size: number; total: number; free: number; rsvd: number; surp: number } {
  const m = readFileSync('/proc/meminfo', 'utf8');
  const n = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(m)?.[1] ?? NaN);
  return { size: n('Hugepagesize') * 1024, total: n('HugePages_Total'), free: n('HugePages_Free'), rsvd: n('HugePages_Rsvd'), surp: n('HugePages_Surp') };
}
const available = () => pool().free - pool().rsvd;

const hasHugetlb = /^Hugepagesize:/m.test(readFileSync('/proc/meminfo', 'utf8')) && existsSync(NR);
const isRoot = process.getuid?.() === 0;
const noPool = !hasHugetlb
  ? 'this kernel has no hugetlb pages (CONFIG_HUGETLBFS)'
  : !isRoot
    ? 'reserving a hugetlb pool (vm.nr_hugepages) needs root: run as root to test hugePages: hugetlb'
    : undefined;
const bigGate =
  process.env.DMALOAD_SKIP_BIG === '1'
    ? 'DMALOAD_SKIP_BIG=1'
    : process.env.DMALOAD_BIG !== '1'
      ? 'DMALOAD_BIG=1 runs the 1 GiB + 4097 case (it reserves 513 huge pages)'
      : undefined;

const { dir, cleanup } = tempDir('dmaload-hugetlb-');
after(cleanup);

const io = testBase.direct ? 'direct' : 'buffered';

let saved: number | undefined;
/** Sets vm.nr_hugepages so that at least `pages` are available; false (the reason given to skip) when the kernel finds fewer. */
function reserve(pages: number): string | undefined {
  saved ??= pool().total - pool().surp;
  const want = Math.max(pool().total - pool().surp, pool().total - pool().surp + (pages - available()));
  writeFileSync(NR, `${want}\n`);
  return available() >= pages ? undefined : `the kernel found only ${available()} of ${pages} huge pages for the pool (fragmented memory)`;
}

/** Sets the pool's size so exactly `pages` are available (fewer if the kernel cannot find them). */
function reserveExactly(pages: number): void {
  saved ??= pool().total - pool().surp;
  const inUse = pool().total - pool().free + pool().rsvd;
  writeFileSync(NR, `${Math.max(0, inUse + pages)}\n`);
}

after(() => {
  if (saved !== undefined) writeFileSync(NR, `${saved}\n`);
});

describe('hugePages option checks (any user)', () => {
  test('a value other than true, false, hugetlb, hugetlb-or-small is ERR_INVALID_ARG_TYPE naming them', async () => {
    const f = makeFile(dir, 'opt', 10);
    await assert.rejects(load(f.path, { hugePages: 'huge' as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /hugePages.*'hugetlb' or 'hugetlb-or-small'/ });
    await assert.rejects(allocate(10, { hugePages: 1 as never }), { code: 'ERR_INVALID_ARG_TYPE', message: /hugePages/ });
  });

  test("'hugetlb' with target dma-heap is ERR_INVALID_ARG_VALUE (a heap allocates its own pages), before anything is opened", async () => {
    const f = makeFile(dir, 'heap', 10);
    const leaks = leakCheck();
    await assert.rejects(load(f.path, { target: 'dma-heap', hugePages: 'hugetlb' }), {
      code: 'ERR_INVALID_ARG_VALUE',
      message: /memory.*memfd.*udmabuf.*dma-heap/,
    });
    await assert.rejects(allocate(10, { target: 'dma-heap', hugePages: 'hugetlb-or-small' }), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.equal(await leaks(), undefined);
  });

  test('DMALOAD_HUGE_PAGES takes 1, 0, hugetlb, hugetlb-or-small; anything else is ERR_INVALID_ARG_VALUE naming it', async () => {
    const f = makeFile(dir, 'env', 10);
    process.env.DMALOAD_HUGE_PAGES = 'yes';
    try {
      await assert.rejects(load(f.path), { code: 'ERR_INVALID_ARG_VALUE', message: /DMALOAD_HUGE_PAGES.*hugetlb-or-small/ });
    } finally {
      delete process.env.DMALOAD_HUGE_PAGES;
    }
  });

  test('--huge-pages takes on, off, hugetlb, hugetlb-or-small', async () => {
    const f = makeFile(dir, 'cli-opt', 10);
    const r = await cli('load', f.path, '--huge-pages', 'maybe');
    assert.equal(r.code, 2);
    assert.match(r.err, /--huge-pages must be one of on, off, hugetlb, hugetlb-or-small/);
  });

  test('probe reports every pool as the kernel counts it', async () => {
    const p = await probe();
    if (!hasHugetlb) return assert.deepEqual(p.hugetlb, []);
    const k = pool();
    const d = p.hugetlb.find((h) => h.default);
    assert.ok(d, 'the default pool is listed');
    assert.equal(d.pageSize, k.size);
    assert.deepEqual([d.total, d.free, d.reserved, d.surplus], [k.total, k.free, k.rsvd, k.surp]);
    for (const h of p.hugetlb) {
      const sys = `/sys/kernel/mm/hugepages/hugepages-${h.pageSize / 1024}kB`;
      assert.equal(h.total, Number(readFileSync(`${sys}/nr_hugepages`, 'utf8')));
      assert.equal(h.available, Math.max(0, h.free - h.reserved) + Math.max(0, h.overcommit - h.surplus));
    }
    const r = await cli('probe');
    assert.match(
      r.out,
      new RegExp(
        `hugetlb pool ${k.size === 2 * MiB ? '2.00 MiB' : ''}.*\\(default\\)\\s+${k.total} pages, ${k.free} free, ${k.rsvd} reserved, ${k.surp} surplus`,
      ),
    );
  });
});

describe('hugePages: hugetlb', { skip: noPool, timeout: 600_000 }, () => {
  const SIZES = [4097, 2 * MiB - 1, 2 * MiB + 1, 64 * MiB + 4097];
  const files = new Map<number, { path: string; sha256: string }>();
  let short: string | undefined;
  before(() => {
    for (const s of SIZES) files.set(s, makeFile(dir, `f-${s}`, s));
    short = reserve(Math.ceil((64 * MiB + 4097) / pool().size) + 1);
  });

  for (const target of ['memory', 'memfd'] as const) {
    test(`${target}: byte-exact at ${SIZES.join(', ')} (${io}), pool pages taken while loaded and given back on close`, async (t) => {
      if (short) return t.skip(short);
      const leaks = leakCheck();
      const hp = pool().size;
      for (const size of SIZES) {
        const f = files.get(size)!;
        evictFile(f.path);
        const free0 = pool().free;
        const b = await load(f.path, { target, io, hugePages: 'hugetlb' });
        try {
          const pages = Math.ceil((Math.ceil(size / 4096) * 4096) / hp);
          assert.equal(b.size, size, 'the buffer is the file, not the rounded memory');
          assert.equal(b.bytes.length, size);
          assert.equal(sha256(b.bytes), f.sha256, `${target} ${size}`);
          assert.equal(b.stats.io, io);
          assert.deepEqual(b.stats.hugetlb, { pageSize: hp, pages });
          assert.match(b.stats.memoryReason ?? '', new RegExp(`hugePages: 'hugetlb': ${pages} huge pages`));
          assert.equal(pool().free, free0 - pages, 'the pool gave the pages');
          assert.equal(
            b.parts.reduce((n, p) => n + p.size, 0),
            size,
          );
          const addr = native.address(b.bytes.buffer as ArrayBuffer);
          assert.equal(addr % BigInt(hp), 0n, 'huge-page aligned');
          const flags = vmFlags(addr);
          assert.ok(flags.includes('ht'), `a hugetlb mapping (VmFlags ${flags.join(' ')})`);
          assert.ok(flags.includes('dc'), 'MADV_DONTFORK, as every mapping dmaload makes');
          if (target === 'memfd') {
            // hugetlbfs keeps whole huge pages: the memfd is the memory's size, its bytes past the file zeros.
            assert.equal(fstatSync(b.fd).size, pages * hp);
            const tail = readFileSync(`/proc/self/fd/${b.fd}`).subarray(size);
            assert.equal(tail.length, pages * hp - size);
            assert.ok(
              tail.every((x) => x === 0),
              'zeros past the file',
            );
          }
        } finally {
          b.close();
        }
        assert.equal(pool().free, free0, `${size}: the pages went back to the pool`);
      }
      assert.equal(await leaks(), undefined);
    });
  }

  test('a reload into a hugetlb buffer (load({ into })) is byte-exact and takes no new pool pages', async (t) => {
    if (short) return t.skip(short);
    const a = files.get(64 * MiB + 4097)!;
    const b2 = makeFile(dir, 'reload-b', 64 * MiB - 12345, 99);
    const first = await load(a.path, { io, hugePages: 'hugetlb' });
    const free1 = pool().free;
    evictFile(b2.path);
    const b = await load(b2.path, { io, into: first });
    try {
      assert.equal(b.stats.memory, 'reused');
      assert.equal(sha256(b.bytes), b2.sha256);
      assert.equal(pool().free, free1);
      const c = await allocate(8192, { hugePages: 'hugetlb' });
      try {
        assert.deepEqual(c.stats.hugetlb, { pageSize: pool().size, pages: 1 });
        assert.equal(await readInto(c, a.path, { length: 8192 }), 8192);
        assert.equal(sha256(c.bytes), sha256(readFileSync(a.path).subarray(0, 8192)));
      } finally {
        c.close();
      }
    } finally {
      b.close();
    }
  });

  test('createPool: a load asking for hugetlb pages reuses only a hugetlb buffer, and it stays one', async (t) => {
    if (short) return t.skip(short);
    const a = files.get(64 * MiB + 4097)!;
    const leaks = leakCheck();
    const p = createPool();
    try {
      // A small-page buffer of the right size waits in the pool: a hugetlb load must not take it.
      p.release(await load(a.path, { io }));
      const h = await p.load(a.path, { io, hugePages: 'hugetlb' });
      assert.equal(h.stats.memory, 'fresh');
      assert.ok(h.stats.hugetlb, 'fresh hugetlb memory');
      assert.ok(vmFlags(native.address(h.bytes.buffer as ArrayBuffer)).includes('ht'), 'the mapping is hugetlb (VmFlags ht)');
      p.release(h);
      const free = pool().free;
      const again = await p.load(a.path, { io, hugePages: 'hugetlb' });
      try {
        assert.equal(again.stats.memory, 'reused');
        assert.deepEqual(again.stats.hugetlb, h.stats.hugetlb, "the reused buffer still says its pages are the pool's");
        assert.ok(vmFlags(native.address(again.bytes.buffer as ArrayBuffer)).includes('ht'));
        assert.equal(sha256(again.bytes), a.sha256);
        assert.equal(pool().free, free, 'no new pool pages');
      } finally {
        again.close();
      }
    } finally {
      p.close();
    }
    assert.equal(await leaks(), undefined);
  });

  test('DMALOAD_HUGE_PAGES=hugetlb and the CLI --huge-pages hugetlb ask for the same', async (t) => {
    if (short) return t.skip(short);
    const f = files.get(2 * MiB + 1)!;
    process.env.DMALOAD_HUGE_PAGES = 'hugetlb';
    try {
      const b = await load(f.path, { target: 'memfd' });
      try {
        assert.equal(sha256(b.bytes), f.sha256);
        assert.equal(b.stats.hugetlb?.pages, 2);
        assert.match(b.stats.memoryReason ?? '', /DMALOAD_HUGE_PAGES=hugetlb/);
      } finally {
        b.close();
      }
      // The option wins over the variable: hugePages false is small pages.
      const s = await load(f.path, { hugePages: false });
      assert.equal(s.stats.hugetlb, undefined);
      s.close();
    } finally {
      delete process.env.DMALOAD_HUGE_PAGES;
    }
    const r = await cli('load', f.path, '--huge-pages', 'hugetlb', '--json', '--hash', 'sha256');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assert.equal(j.sha256, f.sha256);
    assert.deepEqual(j.hugetlb, { pageSize: pool().size, pages: 2 });
  });

  test('bench: hugetlb rows where the pool holds enough pages, byte-exact; none where it does not', async (t) => {
    if (short) return t.skip(short);
    const f = makeFile(dir, 'bench', 8 * MiB + 3);
    const run = async () => {
      const r = await cli('bench', f.path, '--rounds', '1', '--targets', 'memory', '--methods', 'dmaload,dmaload-reload', '--io', 'direct,auto', '--json');
      assert.equal(r.code, 0, r.err);
      return (JSON.parse(r.out) as { rows: Array<RowSpec & { verified: boolean | null; supported: boolean }> }).rows;
    };
    const rows = (await run()).filter((r) => r.hugePages === 'hugetlb');
    assert.deepEqual(rows.map(label), ['memory direct dmaload hugetlb', 'memory auto dmaload reload hugetlb']);
    for (const r of rows) assert.equal(r.verified, true, label(r));
    assert.deepEqual(
      planRows(['dmaload', 'dmaload-reload'], ['memory'], false, true)
        .filter((r) => r.hugePages)
        .map(label),
      ['memory direct dmaload hugetlb', 'memory auto dmaload reload hugetlb'],
    );
    reserveExactly(2);
    assert.match(hugetlbRows(8 * MiB + 3).reason ?? '', /no hugetlb rows: the hugetlb pool has 2 of the 6 pages .* sysctl vm\.nr_hugepages=/);
    assert.equal((await run()).filter((r) => r.hugePages).length, 0);
    short = reserve(Math.ceil((64 * MiB + 4097) / pool().size) + 1);
  });

  test("never behind the caller's back: without the option or the variable, no hugetlb pages", async (t) => {
    if (short) return t.skip(short);
    const f = files.get(64 * MiB + 4097)!;
    const free0 = pool().free;
    for (const target of ['memory', 'memfd'] as const) {
      const b = await load(f.path, { target });
      try {
        assert.equal(b.stats.hugetlb, undefined);
        assert.equal(pool().free, free0);
        assert.ok(!vmFlags(native.address(b.bytes.buffer as ArrayBuffer)).includes('ht'));
      } finally {
        b.close();
      }
    }
  });

  describe('a pool too small', () => {
    test('ERR_HUGETLB_POOL before reading, saying needed, free and how to reserve; nothing allocated, the pool unchanged', async () => {
      const f = files.get(64 * MiB + 4097)!;
      const need = Math.ceil((64 * MiB + 4097) / pool().size);
      reserveExactly(need - 4);
      const have = available();
      assert.ok(have < need);
      for (const target of ['memory', 'memfd'] as const) {
        const p0 = pool();
        const leaks = leakCheck();
        let progress = 0;
        await assert.rejects(
          load(f.path, { target, io, hugePages: 'hugetlb', onProgress: (p) => (progress = p.bytes) }),
          (e: Error & { code: string; pagesNeeded: number; pagesAvailable: number; path: string }) => {
            assert.ok(e instanceof HugetlbPoolError);
            assert.equal(e.code, 'ERR_HUGETLB_POOL');
            assert.equal(e.pagesNeeded, need);
            assert.equal(e.pagesAvailable, have);
            assert.equal(e.path, f.path);
            assert.match(e.message, new RegExp(`needs ${need} huge pages .* has ${have} available \\(${p0.free} free, ${p0.rsvd} reserved`));
            assert.match(e.message, new RegExp(`sysctl vm\\.nr_hugepages=${p0.total + need - have}`));
            assert.match(e.message, /hugetlb-or-small/);
            return true;
          },
        );
        assert.equal(progress, 0, 'nothing was read');
        assert.equal(await leaks(), undefined);
        assert.deepEqual(pool(), p0, 'the pool is as it was (HugePages_Free and _Rsvd unchanged)');
      }
      // allocate() too, and the CLI's exit status 1 with the message.
      await assert.rejects(allocate(64 * MiB + 4097, { target: 'memfd', hugePages: 'hugetlb' }), { code: 'ERR_HUGETLB_POOL', message: /allocate\(\) needs/ });
      const r = await cli('load', f.path, '--huge-pages', 'hugetlb');
      assert.equal(r.code, 1);
      assert.match(r.err, /ERR_HUGETLB_POOL.*sysctl vm\.nr_hugepages=/);
    });

    test("'hugetlb-or-small' falls back to small pages, byte-exact, and says why", async () => {
      const f = files.get(64 * MiB + 4097)!;
      const need = Math.ceil((64 * MiB + 4097) / pool().size);
      reserveExactly(need - 4);
      const p0 = pool();
      for (const target of ['memory', 'memfd'] as const) {
        evictFile(f.path);
        const b = await load(f.path, { target, io, hugePages: 'hugetlb-or-small' });
        try {
          assert.equal(bufferSha256(b), f.sha256);
          assert.equal(b.stats.hugetlb, undefined);
          assert.match(
            b.stats.memoryReason ?? '',
            new RegExp(`hugePages: 'hugetlb-or-small': small pages: the hugetlb pool has ${need - 4} of the ${need} huge pages`),
          );
          if (target === 'memory') assert.equal(b.stats.hugePages, false);
          assert.deepEqual(pool(), p0);
        } finally {
          b.close();
        }
      }
    });

    test('an mmap that fails with ENOMEM (the pool emptied after the check) is ERR_HUGETLB_POOL too, nothing left', async (t) => {
      if (short) return t.skip(short);
      reserve(2);
      const f = files.get(2 * MiB - 1)!;
      for (const target of ['memory', 'memfd'] as const) {
        const leaks = leakCheck();
        native.setFault('mmap', 1, 12); // the next mmap: ENOMEM, as a pool another process just took would give
        try {
          await assert.rejects(load(f.path, { target, hugePages: 'hugetlb' }), (e: Error & { code: string; cause?: { code: string } }) => {
            assert.equal(e.code, 'ERR_HUGETLB_POOL');
            assert.equal(e.cause?.code, 'ENOMEM');
            return true;
          });
        } finally {
          native.setFault('mmap', 0, 0);
        }
        assert.equal(await leaks(), undefined);
      }
    });
  });

  test('1 GiB + 4097: memory and memfd, byte-exact', { skip: bigGate }, async (t) => {
    const size = GiB + 4097;
    const skip = reserve(Math.ceil(size / pool().size));
    if (skip) return t.skip(skip);
    const f = makeFile(dir, 'big', size);
    try {
      for (const target of ['memory', 'memfd'] as const) {
        evictFile(f.path);
        const b = await load(f.path, { target, io, hugePages: 'hugetlb' });
        try {
          assert.equal(b.size, size);
          assert.equal(bufferSha256(b), f.sha256);
          assert.equal(b.stats.hugetlb?.pages, Math.ceil(size / pool().size));
        } finally {
          b.close();
        }
      }
    } finally {
      writeFileSync(NR, `${saved ?? 0}\n`);
    }
  });
});
