/**
 * Huge pages for fresh memory, decided by a measurement cached per machine. Oracles: the cache file on disk, and
 * /proc/self/smaps (AnonHugePages of the buffer's own mapping) for what the kernel really gave.
 */
import { thpSetting } from '../src/api/options.js';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { load } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import {
  balloonReports,
  cachedFirstTouch,
  decideHugePages,
  firstTouchCachePath,
  freePageReporting,
  measureFirstTouch,
  thpMode,
} from '../src/engine/first-touch.js';
import { makeFile, sha256, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);
const savedXdg = process.env.XDG_CACHE_HOME;
// This file's measurements go to its own cache folder, never the machine's.
process.env.XDG_CACHE_HOME = join(dir, 'xdg');
after(() => {
  if (savedXdg === undefined) delete process.env.XDG_CACHE_HOME;
  else process.env.XDG_CACHE_HOME = savedXdg;
});

/** AnonHugePages (bytes) of the mapping that starts at `addr`, from /proc/self/smaps. */
function anonHuge(addr: bigint): number {
  const smaps = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  const start = addr.toString(16);
  const i = smaps.findIndex((l) => l.startsWith(`${start}-`));
  assert.ok(i >= 0, `mapping at 0x${start} in smaps`);
  for (let j = i + 1; j < smaps.length && !/^[0-9a-f]+-[0-9a-f]+ /.test(smaps[j]!); j++) {
    const m = /^AnonHugePages:\s+(\d+) kB/.exec(smaps[j]!);
    if (m) return Number(m[1]) * 1024;
  }
  return 0;
}

describe('huge pages for fresh memory', () => {
  test('the measurement is cached per machine and decides; the option and DMALOAD_HUGE_PAGES win over it', async (t) => {
    assert.equal(cachedFirstTouch(), undefined, 'nothing cached in a new cache folder');
    const mode = thpMode();
    if (mode === 'never' || mode === 'unavailable') {
      assert.deepEqual(await decideHugePages(64 * MiB, undefined), { huge: false, reason: `transparent huge pages are ${mode}` });
      return t.skip(`transparent huge pages are ${mode}: nothing to measure`);
    }
    // A VM whose balloon reports free pages to its host decides by that kernel fact, not by a measurement.
    const reporting = freePageReporting();
    assert.match((await decideHugePages(64 * MiB, undefined)).reason, reporting ? /free page reporting/ : /not measured/);
    const ft = await measureFirstTouch(16 * MiB, 3);
    assert.equal(ft.small.length, 3);
    assert.equal(ft.huge.length, 3);
    // Faulting in 16 MiB of fresh pages always costs CPU and time.
    assert.ok(ft.small.every((x) => x.cpuMs > 0 && x.wallMs > 0) && ft.huge.every((x) => x.cpuMs > 0 && x.wallMs > 0), JSON.stringify(ft));
    const onDisk = JSON.parse(readFileSync(firstTouchCachePath(), 'utf8'));
    assert.equal(firstTouchCachePath(), join(dir, 'xdg', 'dmaload', 'first-touch.json'));
    assert.deepEqual(onDisk, ft);
    // Huge pages only when every huge round beat the small rounds' median (one cheap round must not decide).
    const smallMedian = [...ft.small.map((x) => x.cpuMs)].sort((x, y) => x - y)[1]!;
    assert.equal(
      onDisk.hugeWins,
      ft.huge.every((x) => x.cpuMs <= smallMedian),
    );
    const d = await decideHugePages(64 * MiB, undefined);
    assert.equal(d.huge, ft.hugeWins && !reporting);
    assert.match(
      d.reason,
      reporting ? /virtio-balloon free page reporting/ : /first touch of 16 MiB costs up to \d+ ms of CPU with MADV_HUGEPAGE, \d+ ms without/,
    );
    assert.deepEqual(await decideHugePages(64 * MiB, thpSetting(true)), { huge: true, reason: 'hugePages: true' });
    assert.deepEqual(await decideHugePages(MiB, undefined), { huge: false, reason: 'smaller than one huge page' });
    process.env.DMALOAD_HUGE_PAGES = '0';
    try {
      assert.deepEqual(await decideHugePages(64 * MiB, thpSetting(undefined)), { huge: false, reason: 'DMALOAD_HUGE_PAGES=0' });
    } finally {
      delete process.env.DMALOAD_HUGE_PAGES;
    }
  });

  test('free page reporting: bit 5 of a virtio-balloon features string, read from sysfs', () => {
    // sysfs prints one character per feature bit, bit 0 first; VIRTIO_BALLOON_F_REPORTING is bit 5 (virtio spec 5.5.3).
    assert.equal(balloonReports('0110010100000000000000000000000010000000000000000000000000000000'), true);
    assert.equal(balloonReports('0110000100000000000000000000000010000000000000000000000000000000'), false);
    assert.equal(balloonReports(''), false);
    const sys = join(dir, 'sys-balloon');
    mkdirSync(join(sys, 'virtio3'), { recursive: true });
    writeFileSync(join(sys, 'virtio3', 'features'), '0000010000000000000000000000000000000000000000000000000000000000\n');
    writeFileSync(join(sys, 'bind'), '');
    assert.equal(freePageReporting(sys), true);
    writeFileSync(join(sys, 'virtio3', 'features'), '0000000000000000000000000000000000000000000000000000000000000000\n');
    assert.equal(freePageReporting(sys), false);
    assert.equal(freePageReporting(join(dir, 'no-such-driver')), false, 'no balloon driver: no reporting');
  });

  test('stats say which lever was used, and smaps agrees: huge pages when asked, none when not', async (t) => {
    const mode = thpMode();
    const f = makeFile(dir, 'f', 8 * MiB + 5);
    for (const hugePages of [true, false]) {
      const b = await load(f.path, { hugePages });
      try {
        assert.equal(sha256(b.bytes), f.sha256);
        assert.equal(b.stats.memory, 'fresh');
        assert.equal(b.stats.hugePages, hugePages);
        assert.equal(b.stats.memoryReason, `hugePages: ${hugePages}`);
        if (mode === 'never' || mode === 'unavailable') continue;
        const huge = anonHuge(native.address(b.bytes.buffer as ArrayBuffer));
        if (hugePages) assert.ok(huge > 0, 'AnonHugePages > 0 for MADV_HUGEPAGE memory');
        else if (mode === 'madvise') assert.equal(huge, 0, 'no huge pages without MADV_HUGEPAGE (THP madvise)');
      } finally {
        b.close();
      }
    }
    if (mode === 'never' || mode === 'unavailable') t.skip(`transparent huge pages are ${mode}: smaps check skipped`);
    const b = await load(f.path);
    assert.equal(typeof b.stats.hugePages, 'boolean');
    assert.ok(b.stats.memoryReason && b.stats.memoryReason.length > 0);
    b.close();
  });
});
