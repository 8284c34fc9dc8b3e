/**
 * Model folders: loadModel(folder), inspect(folder) and `dmaload load FOLDER` find the folder's one model
 * (model.safetensors, else one *.safetensors.index.json, else one .gguf); several are ERR_MODEL_AMBIGUOUS listing
 * them, none ERR_MODEL_NOT_FOUND. The oracle for bytes is the file itself.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { inspect, loadModel } from '../../src/index.js';
import { cli } from '../cli/run.js';
import { seededBytes, sha256, tempDir } from '../helpers.js';

const { dir, cleanup } = tempDir('dmaload-folder-');
after(cleanup);

/** A safetensors file of one F32 tensor `name` of `n` seeded values; returns its data's SHA-256. */
function safetensors(path: string, name: string, n: number): string {
  const data = seededBytes(4 * n, n);
  const header = Buffer.from(JSON.stringify({ [name]: { dtype: 'F32', shape: [n], data_offsets: [0, 4 * n] } }).padEnd(64, ' '));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(path, Buffer.concat([len, header, data]));
  return sha256(data);
}

describe('model folders', () => {
  test('a folder with model.safetensors (and a config): loadModel, inspect and the CLI load it', async () => {
    const f = join(dir, 'one');
    mkdirSync(f);
    writeFileSync(join(f, 'config.json'), '{}');
    const h = safetensors(join(f, 'model.safetensors'), 'w', 1000);
    const info = await inspect(f);
    assert.equal(info.tensors[0]!.file, join(f, 'model.safetensors'));
    const m = await loadModel(f);
    try {
      assert.equal(sha256(m.tensors.get('w')!.bytes), h);
    } finally {
      m.close();
    }
    const r = await cli('load', f, '--json', '--hash', 'sha256');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { path: string; sha256: string };
    assert.equal(j.path, join(f, 'model.safetensors'));
    assert.equal(j.sha256, sha256(readFileSync(join(f, 'model.safetensors'))));
  });

  test('a sharded folder: its index; two models: ERR_MODEL_AMBIGUOUS naming both; none: ERR_MODEL_NOT_FOUND', async () => {
    const s = join(dir, 'sharded');
    mkdirSync(s);
    const h1 = safetensors(join(s, 'model-00001-of-00002.safetensors'), 'a', 100);
    const h2 = safetensors(join(s, 'model-00002-of-00002.safetensors'), 'b', 200);
    const map = { weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } };
    writeFileSync(join(s, 'model.safetensors.index.json'), JSON.stringify(map));
    const m = await loadModel(s);
    try {
      assert.equal(sha256(m.tensors.get('a')!.bytes), h1);
      assert.equal(sha256(m.tensors.get('b')!.bytes), h2);
    } finally {
      m.close();
    }
    const two = join(dir, 'two');
    mkdirSync(two);
    writeFileSync(join(two, 'q4.gguf'), 'x');
    writeFileSync(join(two, 'q8.gguf'), 'x');
    await assert.rejects(
      loadModel(two),
      (e: Error & { code?: string }) => e.code === 'ERR_MODEL_AMBIGUOUS' && /q4\.gguf/.test(e.message) && /q8\.gguf/.test(e.message),
    );
    const none = join(dir, 'none');
    mkdirSync(none);
    writeFileSync(join(none, 'README.md'), 'x');
    await assert.rejects(inspect(none), { code: 'ERR_MODEL_NOT_FOUND', path: none });
  });
});
