/**
 * Fork safety: every mapping dmaload makes is MADV_DONTFORK. A child process (any spawn: Node's child_process forks
 * before it execs) copies no page table of a loaded buffer, so the buffer's pages do not turn copy-on-write: a reload
 * into the same memory after a spawn takes a handful of page faults, not one per page (measured before the fix: 65,662
 * faults for 65,536 pages). Bytes are checked by hash against the file; faults by the kernel's own count.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { after, describe, test } from 'node:test';
import { load } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import { leakCheck, makeFile, sha256, tempDir, vmFlags } from './helpers.js';

const MiB = 1024 * 1024;
const { dir, cleanup } = tempDir('dmaload-fork-');
after(cleanup);
// Under AddressSanitizer a spawn also turns the sanitizer's shadow and quarantine copy-on-write, and the library's
// own instrumented code touches them on the next load: a few thousand faults that are not the buffer's (3,590 for
// 131,072 pages in one CI run). The buffer's own mapping is checked exactly by its VmFlags either way; the fault
// count then only has to rule out the defect (one fault per page), so the bound there is 10 %.
const asan = /libasan/.test(process.env.LD_PRELOAD ?? '');

describe('fork safety', () => {
  for (const target of ['memory', 'memfd'] as const) {
    test(`${target}: a spawn while a buffer is loaded leaves its pages alone; the reload faults on under 1 % of them`, async () => {
      const leaks = leakCheck();
      // Large enough that the few hundred faults a spawn costs the rest of the process (its own heap turns
      // copy-on-write too) stay well under 1 % of the buffer's pages.
      const f = makeFile(dir, `fork-${target}`, 512 * MiB);
      const pages = (512 * MiB) / 4096;
      const reload = async (b: Awaited<ReturnType<typeof load>>) => {
        const f0 = process.resourceUsage().minorPageFault;
        const again = await load(f.path, { into: b });
        return { again, faults: process.resourceUsage().minorPageFault - f0 };
      };
      // What a reload costs with no child in between (the library's own few faults), then after a spawn.
      const first = await reload(await load(f.path, { target }));
      execFileSync('true');
      const second = await reload(first.again);
      try {
        assert.equal(sha256(second.again.bytes), f.sha256);
        // 'dc' is VM_DONTCOPY: the kernel itself says the child got no copy of this mapping.
        assert.ok(vmFlags(native.address(second.again.bytes.buffer as ArrayBuffer)).includes('dc'), 'the mapping is MADV_DONTFORK (VmFlags dc)');
        const bound = pages / (asan ? 10 : 100);
        assert.ok(second.faults < first.faults + bound, `${second.faults} page faults after a spawn (${first.faults} without) for ${pages} pages`);
      } finally {
        second.again.close();
      }
      assert.equal(await leaks(), undefined);
    });
  }

  test('children spawned in the middle of a load: bytes exact, nothing leaked', async () => {
    const leaks = leakCheck();
    const f = makeFile(dir, 'fork-during', 96 * MiB + 4097);
    const run = promisify(execFile);
    let spawned = 0;
    const loading = load(f.path, { target: 'memory', chunkSize: 1 * MiB, queueDepth: 2 });
    const spawning = (async () => {
      for (let i = 0; i < 8; i++) {
        await run('true');
        spawned++;
      }
    })();
    const [b] = await Promise.all([loading, spawning]);
    try {
      assert.equal(spawned, 8);
      assert.equal(sha256(b.bytes), f.sha256);
    } finally {
      b.close();
    }
    assert.equal(await leaks(), undefined);
  });
});
