/**
 * Issue #28 item 5: sizes in the usual spellings (every unit a power of 1024, any case), an unknown unit named,
 * and --part-size bounded (a coded usage error outside 1 MiB .. 64 GiB).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { parseSize, sizeError } from '../../src/core/util.js';
import { makeFile, tempDir } from '../helpers.js';
import { cli } from './run.js';

const { dir, cleanup } = tempDir();
after(cleanup);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe('sizes', () => {
  test('k, K, KB, kB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB in any case: all powers of 1024', () => {
    const cases: Array<[string[], number]> = [
      [['4096', '4096b', '4096B', '4096 B'], 4096],
      [['4k', '4K', '4KB', '4kB', '4kb', '4KiB', '4kib', '4KIB'], 4 * KiB],
      [['32M', '32m', '32MB', '32mb', '32Mb', '32MiB', '32mib', ' 32 MiB '], 32 * MiB],
      [['2G', '2g', '2GB', '2gb', '2GiB', '2gib'], 2 * GiB],
      [['1T', '1t', '1TB', '1tb', '1TiB', '1tib'], 1024 * GiB],
      [['1.5GiB', '1.5G', '1.5gb'], 1.5 * GiB],
    ];
    for (const [spellings, bytes] of cases) {
      for (const s of spellings) {
        assert.equal(parseSize(s), bytes, s);
        assert.equal(sizeError(s), undefined, s);
      }
    }
  });

  test('what is not a size: parseSize says undefined, sizeError says which part was not understood', () => {
    for (const [s, why] of [
      ['32XB', /unit 'XB'/],
      ['4kbit', /unit 'kbit'/],
      ['1PiB', /unit 'PiB'/],
      ['huge', /'huge' is not a size/],
      ['-4M', /'-4M' is not a size/],
      ['', /'' is not a size/],
    ] as const) {
      assert.equal(parseSize(s), undefined, s);
      assert.match(sizeError(s) ?? '', why, s);
    }
  });
});

describe('cli: --part-size and the other size flags', () => {
  test('--part-size 1MB and 1mb load in parts of 1 MiB', async () => {
    const f = makeFile(dir, 'parts', 3 * MiB);
    for (const spelling of ['1MB', '1mb', '1M', '1024k']) {
      const r = await cli('load', f.path, '--target', 'memfd', '--part-size', spelling, '--json');
      assert.equal(r.code, 0, `${spelling}: ${r.err}`);
      const j = JSON.parse(r.out) as { parts: Array<{ size: number }> };
      assert.deepEqual(
        j.parts.map((p) => p.size),
        [MiB, MiB, MiB],
        spelling,
      );
    }
  });

  test('--part-size outside 1 MiB .. 64 GiB, or not a whole number of pages: ERR_OUT_OF_RANGE, exit 2, nothing read', async () => {
    for (const [v, says] of [
      ['4k', /\(4096 bytes\) is below the minimum: parts must be at least 1 MiB and at most 64 GiB/],
      ['1000KiB', /below the minimum/],
      ['1TiB', /\(1099511627776 bytes\) is above the maximum: parts must be at least 1 MiB and at most 64 GiB/],
      ['65GiB', /above the maximum/],
      ['1048577', /not a multiple of 4096/],
    ] as const) {
      for (const cmd of [
        ['load', `${dir}/never-read`],
        ['serve', '--socket', `${dir}/never.sock`],
      ]) {
        const r = await cli(...cmd, '--part-size', v);
        assert.equal(r.code, 2, `${cmd[0]} --part-size ${v}: ${r.err}`);
        assert.match(r.err, new RegExp(`^dmaload ${cmd[0]}: ERR_OUT_OF_RANGE: --part-size`), v);
        assert.match(r.err, says, v);
        assert.doesNotMatch(r.err, /ENOENT/, 'refused before anything is opened');
      }
    }
    const j = await cli('load', `${dir}/never-read`, '--part-size', '4k', '--json');
    assert.equal(j.code, 2);
    assert.equal((JSON.parse(j.out) as { error: { code: string } }).error.code, 'ERR_OUT_OF_RANGE');
  });

  test('an unknown unit is named, on every size flag', async () => {
    for (const [argv, flag] of [
      [['load', 'x', '--part-size', '32XB'], '--part-size'],
      [['serve', '--socket', `${dir}/s.sock`, '--budget', '8XB'], '--budget'],
      [['serve', '--socket', `${dir}/s.sock`, '--per-user-budget', '8XB'], '--per-user-budget'],
      [['bench', '--size', '1XB'], '--size'],
      [['bench', '--sweep', '1MiB,1XB'], '--sweep'],
    ] as const) {
      const r = await cli(...argv);
      assert.equal(r.code, 2, argv.join(' '));
      assert.match(r.err, new RegExp(`${flag}.*unit 'XB'`), argv.join(' '));
      assert.doesNotMatch(r.err, /multiple of 4096/);
    }
  });
});
