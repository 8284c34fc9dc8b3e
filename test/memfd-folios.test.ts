/**
 * Huge shmem folios for fresh memfds (targets/memfd.ts; the engine's populate collapses each whole 2 MiB extent):
 * the kernel's word on it (/proc/self/smaps: ShmemPmdMapped of the buffer's mapping, and of a served client's
 * mapping of the same memfd) beside the bytes' SHA-256 against the file. Where the kernel cannot make them (before
 * Linux 6.1, shmem_enabled 'deny', no THP), the tests say so and skip.
 */
import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { connect, load, serve } from '../src/index.js';
import type { LoadedBuffer } from '../src/index.js';
import { decideShmemFolios } from '../src/engine/first-touch.js';
import { bufferAddress, leakCheck, makeFile, readJob, sha256, smapsBytes, tempDir } from './helpers.js';
import { native } from '../src/engine/binding.js';
import { anonymous } from '../src/engine/memory.js';
import { nginxMissing, startNginx } from './net/nginx.js';
import { socketDir } from './share/util.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir();
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

/** Why this kernel makes no huge shmem folios by MADV_COLLAPSE, read here apart from src/engine/first-touch.ts. */
function noFolios(): string | undefined {
  const [major = 0, minor = 0] = release().split('.').map(Number);
  if (major < 6 || (major === 6 && minor < 1)) return `Linux ${release()} has no MADV_COLLAPSE (6.1)`;
  const knob = '/sys/kernel/mm/transparent_hugepage/shmem_enabled';
  if (!existsSync(knob)) return 'this kernel has no transparent huge pages';
  if (readFileSync(knob, 'utf8').includes('[deny]')) return 'shmem_enabled is deny';
  return undefined;
}
const skip = noFolios();

/** Reads every page of `b` (so that its mapping's page tables are filled) and returns the bytes' SHA-256. */
const touched = (b: LoadedBuffer) => sha256(b.bytes);

test("the decision: the caller's word, then the size, then NUMA interleaving, then what the kernel can do", () => {
  const said = { huge: false, reason: 'hugePages: false' };
  assert.deepEqual(decideShmemFolios(64 * MiB, said), said);
  assert.deepEqual(decideShmemFolios(MiB, undefined), { huge: false, reason: 'smaller than one huge page' });
  // Interleaving spreads pages one by one; a collapse puts each 2 MiB on one node (the kernel tier checks the spread).
  const d = decideShmemFolios(64 * MiB, undefined, true);
  assert.equal(d.huge, false);
  assert.match(d.reason, /interleave/);
  assert.equal(decideShmemFolios(64 * MiB, undefined).huge, skip === undefined, skip ?? 'huge folios where the kernel makes them');
});

test('the addon refuses a collapse flag that is not a boolean, before anything starts', async () => {
  const leaks = leakCheck();
  const region = anonymous(4096, false);
  const fd = openSync(process.execPath, 'r');
  try {
    assert.throws(() => native.populate(region, 0, 4096, 1 as never), { name: 'TypeError', message: /huge/ });
    assert.throws(() => native.transfer({ ...readJob(fd, region, 4096), collapse: 'yes' as never }), { name: 'TypeError', message: /opts\.collapse/ });
  } finally {
    closeSync(fd);
    native.munmap(region);
  }
  assert.equal(await leaks(), undefined);
});

describe('memfd targets in huge folios', { skip }, () => {
  // Whole extents, and a ragged tail past the last one (small pages there).
  const f = makeFile(dir, 'model.bin', 12 * MiB + 12345, 41);

  test('a fresh memfd is made of huge folios, byte-exact; hugePages: false keeps small pages', async () => {
    const leaks = leakCheck();
    for (const hugePages of [undefined, false] as const) {
      const b = await load(f.path, { target: 'memfd', ...(hugePages === undefined ? {} : { hugePages }) });
      try {
        assert.equal(touched(b), f.sha256);
        const pmd = smapsBytes(bufferAddress(b), 'ShmemPmdMapped');
        if (hugePages === false) {
          assert.equal(pmd, 0, 'small pages when asked for');
          assert.equal(b.stats.hugePages, false);
        } else {
          // The engine maps the memfd 2 MiB-aligned: its 6 whole extents are collapsed, each mapped by a PMD.
          assert.equal(bufferAddress(b) % BigInt(2 * MiB), 0n, 'mapped at a multiple of 2 MiB');
          assert.equal(pmd, 12 * MiB, `ShmemPmdMapped ${pmd}`);
          assert.equal(b.stats.hugePages, true);
          assert.match(b.stats.memoryReason ?? '', /MADV_COLLAPSE/);
        }
      } finally {
        b.close();
      }
    }
    assert.equal(await leaks(), undefined);
  });

  test('a load from a URL into a memfd gets huge folios too', { skip: nginxMissing }, async () => {
    // Paced, so that the pages are faulted in ahead of the bytes, as on a real network. An extent the responses write
    // into while it is being collapsed stays small pages (seen in CI over plain loopback: 3 extents of 6 collapsed).
    const ng = await startNginx({ root: dir, limitRate: '16m' });
    try {
      const b = await load(`${ng.urls.http}/model.bin`, { target: 'memfd' });
      try {
        assert.equal(touched(b), f.sha256);
        const pmd = smapsBytes(bufferAddress(b), 'ShmemPmdMapped');
        assert.ok(pmd > 0 && pmd <= 12 * MiB && pmd % (2 * MiB) === 0, `ShmemPmdMapped ${pmd}`);
      } finally {
        b.close();
      }
    } finally {
      await ng.stop();
    }
  });

  test("a served memfd's huge folios are mapped whole by a client, which reads the file's bytes", async () => {
    const server = await serve({ socket: join(sockets.dir, 'folios.sock') });
    const c = await connect(server.socket);
    try {
      const b = await c.load(f.path);
      try {
        assert.equal(touched(b), f.sha256);
        assert.equal(bufferAddress(b) % BigInt(2 * MiB), 0n, 'the client maps it at a multiple of 2 MiB');
        assert.equal(smapsBytes(bufferAddress(b), 'ShmemPmdMapped'), 12 * MiB);
      } finally {
        b.close();
      }
    } finally {
      c.close();
      await server.close();
    }
  });
});
