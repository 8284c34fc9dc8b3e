/**
 * Four worker threads loading, reading at offsets and saving at once, each with its own Node-API environment over
 * one addon (whose region table and counters are process-wide): bytes exact in every thread, and nothing left
 * behind once they are done.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { allocate, load, readInto, save } from '../src/index.js';

interface Job {
  dir: string;
  path: string;
  sha256: string;
  size: number;
  rounds: number;
  id: number;
}

const hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function work(j: Job): Promise<string[]> {
  const errors: string[] = [];
  for (let r = 0; r < j.rounds; r++) {
    const target = r % 2 === 0 ? 'memory' : 'memfd';
    const b = await load(j.path, { target, io: r % 3 === 0 ? 'auto' : 'direct' });
    if (hex(b.bytes) !== j.sha256) errors.push(`worker ${j.id} round ${r}: load bytes differ`);
    const small = await allocate(1 << 20);
    const at = 4096 * (r + 1) + j.id;
    await readInto(small, j.path, { fileOffset: at, length: 1 << 20 });
    if (hex(small.bytes) !== hex(b.bytes.subarray(at, at + (1 << 20)))) errors.push(`worker ${j.id} round ${r}: readInto bytes differ`);
    small.close();
    const out = join(j.dir, `w${j.id}-${r}`);
    await save(b, out);
    if (hex(readFileSync(out)) !== j.sha256) errors.push(`worker ${j.id} round ${r}: saved bytes differ`);
    b.close();
  }
  return errors;
}

if (!isMainThread) {
  const j = workerData as Job;
  // Node warns in a worker when fs closes an fd it did not open there (the addon's memfds): the library must not.
  process.on('warning', (w) => parentPort!.postMessage({ errors: [`worker ${j.id}: warning: ${w.message}`] }));
  work(j).then(
    (errors) => parentPort!.postMessage({ errors }),
    (e: unknown) => parentPort!.postMessage({ errors: [`worker ${j.id}: ${(e as Error).stack}`] }),
  );
} else {
  const { test, after } = await import('node:test');
  const { leakCheck, makeFile, needsDirect, tempDir } = await import('./helpers.js');
  const { dir, cleanup } = tempDir('dmaload-workers-');
  after(cleanup);

  test('4 worker threads load, readInto and save at once: bytes exact, nothing leaked', { timeout: 300_000 }, async (t) => {
    if (needsDirect(t)) return;
    const size = 16 * (1 << 20) + 12345;
    const files = Array.from({ length: 4 }, (_, i) => makeFile(dir, `src-${i}`, size, i + 7));
    const leaks = leakCheck();
    const rounds = 12;
    const results = await Promise.all(
      files.map(
        (f, id) =>
          new Promise<string[]>((resolve, reject) => {
            const w = new Worker(fileURLToPath(import.meta.url), { workerData: { dir, path: f.path, sha256: f.sha256, size, rounds, id } satisfies Job });
            let errors: string[] | undefined; // every message's errors (warnings come as messages of their own)
            w.on('message', (m: { errors: string[] }) => (errors = [...(errors ?? []), ...m.errors]));
            w.on('error', reject);
            w.on('exit', (code) => (code === 0 ? resolve(errors ?? [`worker ${id} sent nothing`]) : reject(new Error(`worker ${id} exited with ${code}`))));
          }),
      ),
    );
    assert.deepEqual(results.flat(), []);
    assert.equal(await leaks(), undefined);
  });
}
