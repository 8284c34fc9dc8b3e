/**
 * The addon checks its own invariants, whatever the caller sends: argument types (TypeError), every segment and
 * pad inside the target, mmapInto and madvise only inside regions it made, views within bounds and the runtime's
 * limit, detached buffers and closed regions refused. And it owns what its jobs use: a region unmapped and an fd
 * closed by JS while a job runs stay valid until the job ends.
 */
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { C, closeFd, native } from '../src/engine/binding.js';
import type { Region } from '../src/engine/binding.js';
import { leakCheck, makeFile, needsDirect, readJob, sha256, tempDir } from './helpers.js';

const MiB = 2 ** 20;
const { dir, cleanup } = tempDir('dmaload-native-');
after(cleanup);

const anon = (len: number): Region => {
  const r = native.mmap(len, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0, 0);
  assert.notEqual(typeof r, 'number');
  return r as Region;
};

const typeError = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeError = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };

describe('native: the addon checks its own arguments', () => {
  test('transfer: types, bounds, padding, detached buffers, closed regions', async () => {
    const f = makeFile(dir, 'small', 64 * 1024);
    const leaks = leakCheck();
    const fd = openSync(f.path, 'r');
    const region = anon(64 * 1024);
    const base = readJob(fd, region, 4096);
    try {
      assert.throws(() => native.transfer(null as never), typeError);
      assert.throws(() => native.transfer({ ...base, fd: '3' as never }), typeError);
      assert.throws(() => native.transfer({ ...base, fd: -1 }), rangeError);
      assert.throws(() => native.transfer({ ...base, chunk: 1.5 }), rangeError);
      assert.throws(() => native.transfer({ ...base, depth: 0 }), rangeError);
      assert.throws(() => native.transfer({ ...base, segments: 'x' as never }), typeError);
      assert.throws(() => native.transfer({ ...base, segments: [0, 64 * 1024 - 100, 101] }), rangeError);
      assert.throws(() => native.transfer({ ...base, segments: [0, 64 * 1024, 1] }), rangeError);
      // Padding counts: 100 bytes padded to 4096 do not fit at the last 100 bytes.
      assert.throws(() => native.transfer({ ...base, segments: [0, 64 * 1024 - 100, 100], padTo: 4096 }), rangeError);
      assert.throws(() => native.transfer({ ...base, segments: [0, 8192, 4096, 0, 0, 4096] }), rangeError); // not in buffer order
      assert.throws(() => native.transfer({ ...base, target: {} as never }), typeError);
      assert.throws(() => native.transfer({ ...base, target: new Uint8Array(8) as never }), typeError);
      const ab = new ArrayBuffer(8192);
      structuredClone(ab, { transfer: [ab] }); // detaches it
      assert.throws(() => native.transfer({ ...base, target: ab }), { code: 'ERR_BUFFER_DETACHED' });
      const closed = anon(8192);
      assert.equal(native.munmap(closed), 0);
      assert.throws(() => native.transfer({ ...base, target: closed }), { code: 'ERR_REGION_CLOSED' });
      assert.equal(native.munmap(closed), -22); // twice: EINVAL
    } finally {
      native.munmap(region);
      closeSync(fd);
    }
    assert.equal(await leaks(), undefined);
  });

  test('views, madvise and mmapInto stay inside the region; other calls check their types', async () => {
    const leaks = leakCheck();
    const region = anon(8 * 4096);
    try {
      assert.equal(native.regionSize(region), 8 * 4096);
      assert.throws(() => native.view(region, 8 * 4096 - 1, 2), rangeError);
      assert.throws(() => native.view(region, -1, 1), rangeError);
      assert.throws(() => native.view({} as never, 0, 1), typeError);
      const v = new Uint8Array(native.view(region, 4096, 4096));
      v.fill(7);
      assert.equal(new Uint8Array(native.view(region, 4096, 1))[0], 7);
      assert.throws(() => native.madvise(region, 4096, 8 * 4096, C.MADV_DONTNEED), rangeError);
      assert.equal(native.madvise(region, 0, 4096, C.MADV_DONTNEED), 0);
      const memfd = native.memfdCreate('dmaload-test', C.MFD_CLOEXEC);
      try {
        assert.throws(() => native.mmapInto(region, 7 * 4096, 2 * 4096, C.PROT_READ, C.MAP_SHARED, memfd, 0), rangeError);
        assert.throws(() => native.mmapInto(region, 100, 4096, C.PROT_READ, C.MAP_SHARED, memfd, 0), rangeError);
      } finally {
        closeSync(memfd);
      }
      // unview gives one view's pin back at once and detaches it; a foreign or already released buffer is refused.
      const short = native.view(region, 0, 4096);
      assert.equal(native.unview(short), true);
      assert.equal(short.byteLength, 0);
      assert.equal(native.unview(short), false);
      assert.equal(native.unview(new ArrayBuffer(8)), false);
      assert.throws(() => native.unview('x' as never), typeError);
      assert.throws(() => native.fadvise('x' as never, 0, 0, 0), typeError);
      assert.throws(() => native.seals(3, undefined as never), typeError);
      assert.throws(() => native.udmabufCreate(3, 4, [['a', 1]] as never, 0), typeError);
      // munmap detaches every view at once: stale views read as empty instead of faulting.
      assert.equal(native.munmap(region), 0);
      assert.equal(v.length, 0);
      assert.throws(() => native.view(region, 0, 1), { code: 'ERR_REGION_CLOSED' });
    } finally {
      native.munmap(region);
    }
    assert.equal(await leaks(), undefined);
  });

  test('a view longer than the runtime allows is refused, not a crash (Node 20: 4 GiB)', (t) => {
    if (native.maxView() > 2 ** 32) return t.skip(`Node ${process.versions.node} allows views of ${native.maxView()} bytes`);
    const region = native.mmap(5 * 2 ** 30, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE, -1, 0, 0) as Region;
    try {
      assert.throws(() => native.view(region, 0, 5 * 2 ** 30), rangeError);
      assert.equal(new Uint8Array(native.view(region, 4 * 2 ** 30, 4096)).length, 4096);
    } finally {
      native.munmap(region);
    }
  });
});

describe('native: jobs own what they use', () => {
  for (const how of ['munmap', 'munmapSoon'] as const) {
    test(`${how} and close(fd) while a job runs: the job finishes into memory it still holds, then all is freed`, async (t) => {
      if (needsDirect(t)) return;
      const f = makeFile(dir, `owned-${how}`, 32 * MiB, 5);
      const leaks = leakCheck();
      const fd = openSync(f.path, 'r');
      const region = anon(32 * MiB);
      const view = new Uint8Array(native.view(region, 0, 32 * MiB));
      const job = native.transfer(readJob(fd, region, 32 * MiB, { chunk: 256 * 1024, engine: 'uring' }));
      // Take the memory and the fd away from under it (munmapSoon settles once its own pin is dropped).
      const rc = native[how](region);
      assert.equal(view.length, 0, 'views detached at once');
      assert.equal(await rc, 0);
      closeSync(fd);
      const r = await job.promise;
      assert.equal(r.errno, 0);
      assert.equal(r.bytes, 32 * MiB, 'the job read through its own dup of the fd');
      assert.equal(await leaks(), undefined);
    });
  }

  test('munmapSoon: views detached at once, the mapping gone once it settles (a memfd can then be sealed), twice is EINVAL', async () => {
    const leaks = leakCheck();
    const before = native.liveMappings();
    const fd = native.memfdCreate('dmaload-munmapsoon', C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING);
    assert.ok(fd >= 0);
    try {
      ftruncateSync(fd, 8 * MiB);
      const region = native.mmap(8 * MiB, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0, 0) as Region;
      assert.notEqual(typeof region, 'number');
      const view = new Uint8Array(native.view(region, 0, 8 * MiB));
      view.fill(7);
      // The kernel is the oracle: F_SEAL_WRITE is refused while a writable shared mapping exists.
      assert.equal(native.seals(fd, C.F_SEAL_WRITE), -16);
      const soon = native.munmapSoon(region);
      assert.equal(view.length, 0, 'views detached at once');
      assert.throws(() => native.view(region, 0, 1), { code: 'ERR_REGION_CLOSED' });
      assert.equal(await soon, 0);
      assert.equal(native.liveMappings(), before);
      assert.ok(native.seals(fd, C.F_SEAL_WRITE) >= 0, 'sealed once the mapping is gone');
      assert.equal(await native.munmapSoon(region), -22);
      assert.equal(native.munmap(region), -22);
    } finally {
      closeFd(fd);
    }
    assert.equal(await leaks(), undefined);
  });

  test('a job into a plain ArrayBuffer keeps it alive and fills it', async () => {
    const f = makeFile(dir, 'plain', MiB + 3, 6);
    const fd = openSync(f.path, 'r');
    const ab = new ArrayBuffer(MiB + 3);
    const r = await native.transfer(readJob(fd, ab, MiB + 3, { chunk: 65536, depth: 4 })).promise;
    closeSync(fd);
    assert.equal(r.bytes, MiB + 3);
    assert.equal(sha256(new Uint8Array(ab)), f.sha256);
  });
});
