/**
 * An abort storm: loads aborted at random moments (and onProgress callbacks that throw at a random call) over
 * targets memory and memfd × io auto on a half-cached file, direct and buffered × parts on and off. Every call
 * settles with its own error (or its buffer, when the abort came too late); right after each, the addon's jobs,
 * threads, queues, mappings and this process's fds are back to baseline, and RSS stays bounded.
 * DMALOAD_ABORT_STORM sets the number of abort points (default 1000).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { AbortError, load } from '../src/index.js';
import type { IoMode, TargetName } from '../src/index.js';
import { setCache } from '../src/bench/bench.js';
import { leakCheck, makeFile, needsDirect, sha256, tempDir } from './helpers.js';

const MiB = 2 ** 20;
const { dir, cleanup } = tempDir('dmaload-storm-');
after(cleanup);

class ProgressBoom extends Error {}

test('abort storm: every call settles with its error, nothing leaks, RSS bounded', { timeout: 900_000 }, async (t) => {
  if (needsDirect(t)) return;
  const count = Number(process.env.DMALOAD_ABORT_STORM ?? 1000);
  const size = 24 * MiB + 4099;
  const half = makeFile(dir, 'half', size, 3);
  const cold = makeFile(dir, 'cold', size, 4);
  const combos: Array<{ target: TargetName; io: IoMode; partSize: number | undefined; boom: boolean }> = [];
  for (const target of ['memory', 'memfd'] as const) {
    for (const io of ['auto', 'direct', 'buffered'] as const) {
      for (const partSize of [undefined, 4 * MiB]) for (const boom of [false, true]) combos.push({ target, io, partSize, boom });
    }
  }
  let seed = 0x5eed;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
  const rss0 = process.memoryUsage().rss;
  const outcome = { aborted: 0, boom: 0, completed: 0 };
  for (let i = 0; i < count; i++) {
    const c = combos[i % combos.length]!;
    // io auto needs a half-cached file for its two jobs at once; loads put pages back, so set it again now and then.
    if (c.io === 'auto' && i % (combos.length * 4) < combos.length) await setCache(half.path, size, 'half');
    const f = c.io === 'auto' ? half : cold;
    const leaks = leakCheck();
    const ac = new AbortController();
    const delay = rand(4) === 0 ? -1 : rand(25); // -1: abort before the first await returns
    const boomAt = rand(6);
    let calls = 0;
    const p = load(f.path, {
      target: c.target,
      io: c.io,
      partSize: c.partSize,
      signal: ac.signal,
      onProgress: c.boom
        ? () => {
            if (calls++ === boomAt) throw new ProgressBoom(`boom at call ${boomAt}`);
          }
        : undefined,
    });
    let timer: NodeJS.Timeout | undefined;
    if (delay < 0) ac.abort();
    else timer = setTimeout(() => ac.abort(), delay);
    try {
      const b = await p;
      // Too late to abort: the buffer is whole.
      if (i % 16 === 0) assert.equal(sha256(b.bytes), f.sha256, `call ${i}: bytes`);
      b.close();
      outcome.completed++;
    } catch (e) {
      if (e instanceof ProgressBoom) outcome.boom++;
      else if (e instanceof AbortError || (e as Error).name === 'AbortError') outcome.aborted++;
      else assert.fail(`call ${i} (${JSON.stringify(c)}): unexpected ${(e as Error).stack}`);
    } finally {
      clearTimeout(timer);
    }
    const leak = await leaks();
    assert.equal(leak, undefined, `call ${i} (${JSON.stringify(c)}, abort after ${delay} ms): ${leak}`);
  }
  const grown = process.memoryUsage().rss - rss0;
  t.diagnostic(
    `${count} calls: ${outcome.aborted} aborted, ${outcome.boom} onProgress throws, ${outcome.completed} completed; RSS grew ${(grown / MiB).toFixed(0)} MiB`,
  );
  assert.ok(outcome.aborted > count / 4, 'most calls were really aborted');
  assert.ok(grown < 512 * MiB, `RSS grew by ${(grown / MiB).toFixed(0)} MiB`);
});
