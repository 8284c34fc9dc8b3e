/**
 * Per-rank loads in the Python client (clients/python/tests/test_ranks.py) against a real server: for world sizes 1
 * to 8, splits 'rows' and 'tensors', a whole file, an index of two shards and a selection of each, every rank's
 * tensors from load_safetensors(path, rank=, world_size=, split=) are exactly Node's: this test loads each rank with
 * loadModel(path, { rank, worldSize, split, tensors }) itself and hands Python the names, order, shapes, row slices
 * and SHA-256 of the bytes (DMALOAD_RANKS_EXPECT); Python checks them and the same slices of
 * safetensors.torch.load_file. The models are written by test_ranks.py --generate (torch and safetensors); without
 * them the test skips saying so, and fails where DMALOAD_PYTHON_REQUIRED is set (CI). Malformed plan replies are
 * tested against fake servers (test_ranks.FakePlans, standard library only).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { loadModel, serve } from '../../src/index.js';
import { sha256, tempDir } from '../helpers.js';
import { CLIENT_DIR, pythonMissing as missing, pythonTests, runPython } from './python.js';
import { socketDir } from './util.js';

const { dir, cleanup } = tempDir('dmaload-share-pyr-');
after(cleanup);
const sockets = socketDir();
after(sockets.cleanup);

interface Configs {
  configs: { key: string; path: string; tensors: string[] | null }[];
  splits: ('rows' | 'tensors')[];
  worlds: number[];
}

interface Expected {
  name: string;
  dtype: string;
  shape: number[];
  sha256: string;
  rows?: { dim: number; start: number; end: number; shape: number[] };
  replicated?: true;
}

/** Node's own per-rank loads of every configuration: `${key}|${split}|${worldSize}` → per rank, its tensors in order. */
async function nodeRanks(models: string, c: Configs): Promise<Record<string, Expected[][]>> {
  const out: Record<string, Expected[][]> = {};
  for (const { key, path, tensors } of c.configs) {
    for (const split of c.splits) {
      for (const worldSize of c.worlds) {
        const ranks: Expected[][] = [];
        for (let rank = 0; rank < worldSize; rank++) {
          const m = await loadModel(join(models, path), { rank, worldSize, split, ...(tensors ? { tensors } : {}) });
          try {
            ranks.push(
              [...m.tensors.values()].map((t) => ({
                name: t.name,
                dtype: t.dtype,
                shape: [...t.shape],
                sha256: sha256(t.bytes),
                ...(t.rows ? { rows: { dim: t.rows.dim, start: t.rows.start, end: t.rows.end, shape: [...t.rows.shape] } } : {}),
                ...(t.replicated ? { replicated: true as const } : {}),
              })),
            );
          } finally {
            m.close();
          }
        }
        out[`${key}|${split}|${worldSize}`] = ranks;
      }
    }
  }
  return out;
}

describe('Python client: per-rank load_safetensors', () => {
  test('every rank’s tensors are Node loadModel()’s and the slices of safetensors’ own load (clients/python/tests/test_ranks.py)', async (t) => {
    if (missing) return t.skip(missing);
    const gen = await runPython([join(CLIENT_DIR, 'tests', 'test_ranks.py'), '--generate', dir]);
    if (gen.code === 3) {
      const why = gen.out.trim().replace(/^skip: /, '');
      if (process.env.DMALOAD_PYTHON_REQUIRED) assert.fail(`DMALOAD_PYTHON_REQUIRED is set but: ${why}`);
      return t.skip(why);
    }
    assert.equal(gen.code, 0, `generating the models failed:\n${gen.out}\n${gen.err}`);
    const configs = JSON.parse(readFileSync(join(dir, 'configs.json'), 'utf8')) as Configs;
    const expect = join(dir, 'node-ranks.json');
    writeFileSync(expect, JSON.stringify(await nodeRanks(dir, configs)));
    // Small pages: test_populate counts the pages a rank's load maps, which huge folios would map 2 MiB at a time.
    const server = await serve({ socket: join(sockets.dir, 'pyr.sock'), hugePages: false });
    try {
      await pythonTests(t, ['test_ranks.Ranks'], { DMALOAD_SOCKET: server.socket, DMALOAD_RANKS: dir, DMALOAD_RANKS_EXPECT: expect });
    } finally {
      await server.close();
    }
  });

  test('malformed plan replies are refused with every fd closed (test_ranks.py, fake servers)', async (t) => {
    if (missing) return t.skip(missing);
    await pythonTests(t, ['test_ranks.FakePlans']);
  });
});
