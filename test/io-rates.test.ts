/**
 * io 'auto' chooses by measured rates (issue #31): the native work share two reads split (a copy from the front, a
 * direct read from the back once switched, what no direct read can take given back), and load() deciding from this
 * machine's rates file, or switching half way when the copy proves slower. Oracles: the file's SHA-256 as the test
 * wrote it, mincore, and the rates file read back as JSON.
 */
import assert from 'node:assert/strict';
import { closeSync, constants as FS, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { load } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import type { Region } from '../src/engine/binding.js';
import * as engine from '../src/engine/engine.js';
import { machineKey } from '../src/engine/first-touch.js';
import { anonymous } from '../src/engine/memory.js';
import { ioRatesPath } from '../src/pipeline/io-rates.js';
import { dioAlign } from '../src/pipeline/source.js';
import { cachedBytes, evictFile, leakCheck, makeFile, needsDirect, readJob, sha256, tempDir, warmFile } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-io-rates-');
const savedXdg = process.env.XDG_CACHE_HOME;
const savedRates = process.env.DMALOAD_IO_RATES;
before(() => {
  delete process.env.DMALOAD_IO_RATES;
});
after(() => {
  if (savedXdg === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = savedXdg;
  if (savedRates === undefined) delete process.env.DMALOAD_IO_RATES;
  else process.env.DMALOAD_IO_RATES = savedRates;
  cleanup();
});

/** A rates file of our own (a fresh XDG_CACHE_HOME), holding `rates` in MB/s for the device of `path`. */
function useRates(name: string, path: string, rates: { copy?: number; direct?: number }): string {
  process.env.XDG_CACHE_HOME = join(dir, `xdg-${name}`);
  mkdirSync(join(process.env.XDG_CACHE_HOME, 'dmaload'), { recursive: true });
  const at = Date.now();
  const dev = String(statSync(path).dev);
  const file = {
    version: 1,
    key: machineKey(),
    ...(rates.copy ? { copy: { rate: rates.copy * 1000, at } } : {}),
    direct: rates.direct ? { [dev]: { rate: rates.direct * 1000, at } } : {},
  };
  writeFileSync(ioRatesPath(), JSON.stringify(file));
  return ioRatesPath();
}

function readRates(): { copy?: { rate: number }; direct: Record<string, { rate: number }> } {
  return JSON.parse(readFileSync(ioRatesPath(), 'utf8'));
}

/** Copies (buffered) what a work share left (workShareRest) into `region`: the bytes it moved. */
async function copyRest(fd: number, region: Region, segments: number[], path: string): Promise<number> {
  if (segments.length === 0) return 0;
  const tuning = { chunk: 4 * MiB, depth: 4 };
  const r = await engine.run({ fd, write: false, direct: false, target: region, segments, padTo: 1, bounce: false, populate: false, tuning, path });
  return r.bytes;
}

describe('work share (native)', () => {
  test('the back takes nothing until switched, then every aligned piece; the rest is the unaligned tail', async (t) => {
    if (needsDirect(t)) return;
    const size = 40 * MiB + 5;
    const f = makeFile(dir, 'share-back', size);
    evictFile(f.path);
    const fd = openSync(f.path, FS.O_RDONLY);
    const dfd = openSync(f.path, FS.O_RDONLY | FS.O_DIRECT);
    const align = dioAlign(dfd).offsetAlign;
    const region = anonymous(size + align, false);
    const leaks = leakCheck();
    try {
      const run = (fdx: number, direct: boolean, share: ReturnType<typeof native.workShare>, segments: number[] = []) =>
        engine.run({
          fd: fdx,
          write: false,
          direct,
          target: region,
          segments,
          padTo: direct ? align : 1,
          bounce: false,
          populate: true,
          share,
          shareBack: direct,
          tuning: { chunk: 4 * MiB, depth: 4 },
          path: f.path,
        });
      const share = native.workShare([0, 0, size]);
      // Not switched: the back job ends at once with nothing.
      assert.equal((await run(dfd, true, share)).bytes, 0);
      native.workShareSwitch(share);
      const d = await run(dfd, true, share);
      assert.equal(d.bytes, 40 * MiB, 'every aligned byte, from the back');
      // The front takes nothing once switched.
      assert.equal((await run(fd, false, share)).bytes, 0);
      const rest = native.workShareRest(share);
      assert.deepEqual(rest, [40 * MiB, 40 * MiB, 5]);
      assert.equal(await copyRest(fd, region, rest, f.path), 5);
      assert.equal(sha256(new Uint8Array(native.view(region, 0, size))), f.sha256);
    } finally {
      native.munmap(region);
      closeSync(fd);
      closeSync(dfd);
    }
    assert.equal(await leaks(), undefined);
  });

  test('front and back at once, switched half way: each byte read once, all of them', async (t) => {
    if (needsDirect(t)) return;
    const size = 192 * MiB + 4096 * 3 + 17;
    const f = makeFile(dir, 'share-both', size);
    warmFile(f.path);
    const fd = openSync(f.path, FS.O_RDONLY);
    const dfd = openSync(f.path, FS.O_RDONLY | FS.O_DIRECT);
    const align = dioAlign(dfd).offsetAlign;
    const want = readFileSync(f.path);
    // Three segments with gaps between them in the buffer, as loadRanges makes.
    const segs = [0, 0, 60 * MiB, 64 * MiB, 64 * MiB, 60 * MiB, 128 * MiB, 128 * MiB, size - 128 * MiB];
    const total = 120 * MiB + size - 128 * MiB;
    // Each byte read once, all of them, every time; that both jobs took some is a race with the copy from the page
    // cache (the switch comes at its first progress, on the JS thread, which a loaded machine may run after the copy
    // is done: seen once in CI), so it must happen in one of a few tries.
    let split = 0;
    try {
      for (let attempt = 0; attempt < 5 && split === 0; attempt++) {
        const region = anonymous(size + align, false);
        try {
          const share = native.workShare(segs);
          const common = { write: false, target: region, bounce: false, populate: true, share, tuning: { chunk: 1 * MiB, depth: 4 }, path: f.path };
          let back: ReturnType<typeof engine.run> | undefined;
          // Switched at the copy's first progress, as load() does after timing it; the back job runs beside the front.
          const front = engine.run({
            ...common,
            fd,
            direct: false,
            segments: [],
            padTo: 1,
            shareBack: false,
            onProgress: () => {
              if (back) return;
              native.workShareSwitch(share);
              back = engine.run({ ...common, fd: dfd, direct: true, segments: [], padTo: align, shareBack: true });
            },
          });
          const c = await front;
          const d = back ? await back : { bytes: 0 };
          const r = await copyRest(fd, region, native.workShareRest(share), f.path);
          assert.equal(c.bytes + d.bytes + r, total);
          if (c.bytes < total && d.bytes > 0) split++;
          const all = new Uint8Array(native.view(region, 0, size));
          for (let i = 0; i < segs.length; i += 3) {
            const [fo, bo, len] = [segs[i]!, segs[i + 1]!, segs[i + 2]!];
            assert.equal(sha256(all.subarray(bo, bo + len)), sha256(want.subarray(fo, fo + len)), `segment ${i / 3}`);
          }
        } finally {
          native.munmap(region);
        }
      }
      assert.equal(split, 1, 'in 5 tries, the direct job never took a piece before the copy had them all');
    } finally {
      closeSync(fd);
      closeSync(dfd);
    }
  });

  test('bad arguments are refused before anything starts', () => {
    assert.throws(() => native.workShare([0, 0] as never), { name: 'RangeError' });
    assert.throws(() => native.workShare([0, 4096, 1, 0, 0, 1]), { name: 'RangeError' });
    assert.throws(() => native.workShareSwitch({} as never), { name: 'TypeError' });
    assert.throws(() => native.workShareRest(1 as never), { name: 'TypeError' });
    const region = anonymous(4096, false);
    try {
      const share = native.workShare([0, 0, 8192]);
      const fd = openSync(process.execPath, 'r');
      try {
        const base = readJob(fd, region, 0, { segments: [] });
        // The share's segments must fit the target like the job's own.
        assert.throws(() => native.transfer({ ...base, share }), { name: 'RangeError' });
        assert.throws(() => native.transfer({ ...base, write: true, share: native.workShare([0, 0, 10]) }), { code: 'ERR_INVALID_ARG_VALUE' });
        // Padded (direct) reads take only aligned pieces, from the back.
        assert.throws(() => native.transfer({ ...base, direct: true, padTo: 512, bounce: true, share: native.workShare([0, 0, 10]) }), {
          code: 'ERR_INVALID_ARG_VALUE',
          message: /shareBack/,
        });
      } finally {
        closeSync(fd);
      }
    } finally {
      native.munmap(region);
    }
  });
});

describe("load() with io 'auto' and measured rates", () => {
  test('rates saying direct I/O is faster: a warm file is read directly, the cache left as found', async (t) => {
    if (needsDirect(t)) return;
    const size = 24 * MiB + 4097;
    const f = makeFile(dir, 'rates-direct', size);
    useRates('direct', f.path, { copy: 700, direct: 2500 });
    warmFile(f.path);
    const before = cachedBytes(f.path, size);
    const leaks = leakCheck();
    const b = await load(f.path);
    assert.equal(sha256(b.bytes), f.sha256);
    assert.equal(b.stats.io, 'direct');
    assert.equal(b.stats.directBytes, size);
    assert.equal(b.stats.copiedBytes, 0);
    assert.match(b.stats.ioReason ?? '', /measured rates say is faster/);
    assert.match(b.stats.ioReason ?? '', /io-rates\.json/);
    b.close();
    assert.equal(cachedBytes(f.path, size), before);
    assert.equal(await leaks(), undefined);
  });

  test('rates saying copying is faster: the cached ranges are copied', async (t) => {
    if (needsDirect(t)) return;
    const size = 24 * MiB + 4097;
    const f = makeFile(dir, 'rates-copy', size);
    useRates('copy', f.path, { copy: 2400, direct: 2000 });
    warmFile(f.path);
    const b = await load(f.path);
    assert.equal(sha256(b.bytes), f.sha256);
    assert.equal(b.stats.io, 'buffered');
    assert.equal(b.stats.copiedBytes, size);
    assert.match(b.stats.ioReason ?? '', /copied 24\.0 MiB from it at [\d.]+ GB\/s, faster here/);
    b.close();
  });

  test('no copy rate known and the device known to be faster: the copy is timed, then direct I/O takes the rest', async (t) => {
    if (needsDirect(t)) return;
    // Large enough that the copy is still running when the JS thread hears of its progress (every 16 ms) and
    // decides: at 256 MiB an ASan build's slower JS thread once heard too late, with nothing left to switch.
    const size = 768 * MiB + 4097;
    const f = makeFile(dir, 'rates-switch', size);
    // A device a thousand times faster than any copy: the first timed stretch of copying loses.
    for (const verify of [true, false]) {
      const path = useRates('switch', f.path, { direct: 1e9 });
      warmFile(f.path);
      const before = cachedBytes(f.path, size);
      const leaks = leakCheck();
      const b = await load(f.path, { verify });
      assert.equal(sha256(b.bytes), f.sha256);
      if (verify) assert.equal(b.stats.verified?.sha256, f.sha256);
      assert.equal(b.stats.io, 'mixed');
      assert.equal(b.stats.directBytes + b.stats.copiedBytes, size);
      assert.ok(b.stats.copiedBytes >= 4 * MiB, `copied ${b.stats.copiedBytes}`);
      assert.ok(b.stats.directBytes >= 64 * MiB, `direct ${b.stats.directBytes}`);
      assert.match(b.stats.ioReason ?? '', /began copying from it at [\d.]+ GB\/s and, that being slower here than direct I\/O, read the rest directly/);
      b.close();
      assert.equal(cachedBytes(f.path, size), before);
      assert.equal(await leaks(), undefined);
      // The copy's rate, measured alone (nothing else read, no hash setting the pace), is kept for the next load.
      assert.equal(readRates().copy === undefined, verify, `copy rate kept in ${path} only without verify`);
    }
    // Which is now known to be slower: the next load reads directly from the start.
    const b = await load(f.path);
    assert.equal(sha256(b.bytes), f.sha256);
    assert.equal(b.stats.io, 'direct');
    b.close();
  });

  test("a cold load keeps the device's direct rate; DMALOAD_IO_RATES=off measures and keeps nothing", async (t) => {
    if (needsDirect(t)) return;
    const size = 72 * MiB;
    const f = makeFile(dir, 'rates-cold', size);
    process.env.XDG_CACHE_HOME = join(dir, 'xdg-cold');
    evictFile(f.path);
    const b = await load(f.path);
    assert.equal(sha256(b.bytes), f.sha256);
    b.close();
    const dev = String(statSync(f.path).dev);
    const rate = readRates().direct[dev]?.rate ?? 0;
    // bytes per ms: between 1 MB/s and 1 TB/s
    assert.ok(rate > 1e3 && rate < 1e9, `direct rate ${rate}`);
    assert.equal(readRates().copy, undefined);

    process.env.XDG_CACHE_HOME = join(dir, 'xdg-off');
    process.env.DMALOAD_IO_RATES = 'off';
    try {
      evictFile(f.path);
      (await load(f.path)).close();
      warmFile(f.path);
      const w = await load(f.path);
      assert.equal(w.stats.io, 'buffered');
      w.close();
      assert.equal(existsSync(ioRatesPath()), false);
      process.env.DMALOAD_IO_RATES = 'sometimes';
      await assert.rejects(load(f.path), { code: 'ERR_INVALID_ARG_VALUE', message: /DMALOAD_IO_RATES/ });
    } finally {
      delete process.env.DMALOAD_IO_RATES;
    }
  });
});
