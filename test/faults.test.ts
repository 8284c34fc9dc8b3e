/**
 * Injected faults (the addon's test-only setFault): the Nth read, write, io_uring_enter, mmap or thread creation
 * fails with a chosen errno. Every API reports the errno by its code, settles only after its jobs ended, and leaves
 * no fd, mapping, job, thread or queue behind. Real device faults (dm-error, dm-delay) are in the kernel tier.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, describe, test } from 'node:test';
import { allocate, copy, createWriter, load, loadModel, readInto, save, writeFrom } from '../src/index.js';
import { native } from '../src/engine/binding.js';
import type { FaultOp } from '../src/engine/binding.js';
import { leakCheck, makeFile, needsDirect, seededBytes, tempDir } from './helpers.js';

const MiB = 2 ** 20;
const EIO = 5;
const ENOMEM = 12;
const EAGAIN = 11;
const { dir, cleanup } = tempDir('dmaload-faults-');
after(cleanup);
afterEach(() => native.setFault('read', 0, 0));

const clear = () => {
  for (const op of ['read', 'write', 'enter', 'mmap', 'ioctl', 'thread'] as const) native.setFault(op, 0, 0);
};

/** Runs `fn` with the `nth` `op` failing with `errno`; asserts the code and that nothing leaked. */
async function expectFault(op: FaultOp, nth: number, errno: number, code: string, fn: () => Promise<unknown>): Promise<void> {
  const leaks = leakCheck();
  native.setFault(op, nth, errno);
  try {
    await assert.rejects(fn(), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, code, `${op} #${nth}: ${e.stack}`);
      return true;
    });
  } finally {
    clear();
  }
  assert.equal(await leaks(), undefined);
}

for (const engine of ['uring', 'threads'] as const) {
  describe(`injected faults, ${engine} engine`, () => {
    const size = 24 * MiB + 77;
    let f: { path: string; sha256: string };
    const env = () => {
      if (engine === 'threads') process.env.DMALOAD_ENGINE = 'threads';
      else delete process.env.DMALOAD_ENGINE;
    };
    after(() => delete process.env.DMALOAD_ENGINE);

    test('EIO on the 3rd read: load (memory, memfd, parts; direct, buffered, auto) rejects with EIO', async (t) => {
      if (needsDirect(t)) return;
      env();
      f = makeFile(dir, `src-${engine}`, size, 9);
      for (const target of ['memory', 'memfd'] as const) {
        for (const io of ['direct', 'buffered', 'auto'] as const) {
          for (const partSize of [undefined, 4 * MiB]) {
            await expectFault('read', 3, EIO, 'EIO', () => load(f.path, { target, io, partSize, chunkSize: MiB }));
          }
        }
      }
      // The same loads without the fault are whole (the fault really was the only difference).
      const b = await load(f.path, { chunkSize: MiB });
      assert.equal((await import('./helpers.js')).sha256(b.bytes), f.sha256);
      b.close();
    });

    test('EIO in readInto, writeFrom, save, copy, createWriter and loadModel', async (t) => {
      if (needsDirect(t)) return;
      env();
      f ??= makeFile(dir, `src-${engine}`, size, 9);
      const buf = await allocate(size);
      await expectFault('read', 2, EIO, 'EIO', () => readInto(buf, f.path, { io: 'direct', length: 16 * MiB }));
      await expectFault('write', 2, EIO, 'EIO', () => writeFrom(buf, join(dir, 'wf'), { io: 'direct', length: 16 * MiB }));
      await expectFault('write', 2, EIO, 'EIO', () => save(buf, join(dir, 'saved')));
      await expectFault('read', 2, EIO, 'EIO', () => copy(f.path, join(dir, 'copied'), { partSize: 4 * MiB }));
      await expectFault('write', 3, EIO, 'EIO', () => copy(f.path, join(dir, 'copied'), { partSize: 4 * MiB }));
      await expectFault('write', 2, EIO, 'EIO', async () => {
        const w = await createWriter(join(dir, 'captured'), { chunkSize: MiB, queueDepth: 2 });
        try {
          for (let i = 0; i < 8; i++) await w.write(seededBytes(MiB, i));
          await w.close();
        } catch (e) {
          await w.abort(e);
          throw e;
        }
      });
      buf.close();
      // A failed save or copy leaves the destination as it was: here, absent.
      assert.throws(() => readFileSync(join(dir, 'saved')), { code: 'ENOENT' });
      assert.throws(() => readFileSync(join(dir, 'copied')), { code: 'ENOENT' });
      const model = join(dir, `model-${engine}.safetensors`);
      const n = 4 * MiB;
      const header = Buffer.from(JSON.stringify({ t: { dtype: 'F32', shape: [n / 4], data_offsets: [0, n] } }));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      writeFileSync(model, Buffer.concat([len, header, seededBytes(n, 1)]));
      await expectFault('read', 2, EIO, 'EIO', () => loadModel(model, { chunkSize: MiB }));
    });

    test('mmap and thread creation failures are coded errors, never a crash', async (t) => {
      if (needsDirect(t)) return;
      env();
      f ??= makeFile(dir, `src-${engine}`, size, 9);
      await expectFault('mmap', 1, ENOMEM, 'ENOMEM', () => load(f.path));
      await expectFault('thread', 1, EAGAIN, 'EAGAIN', () => load(f.path));
      await expectFault('thread', 1, EAGAIN, 'EAGAIN', () => copy(f.path, join(dir, 'copied-thread')));
    });
  });
}

test('io_uring_enter failing mid-load: the load rejects with its code once every request in flight has ended', async (t) => {
  if (needsDirect(t)) return;
  delete process.env.DMALOAD_ENGINE;
  const f = makeFile(dir, 'enter', 32 * MiB, 3);
  // Queue depth 1: one request per io_uring_enter, so the load makes at least 32 calls and the 5th always comes (at
  // depth 8 a fast device could finish in fewer, and the fault would never fire).
  for (const nth of [1, 2, 5]) await expectFault('enter', nth, EIO, 'EIO', () => load(f.path, { io: 'direct', chunkSize: MiB, queueDepth: 1 }));
});
