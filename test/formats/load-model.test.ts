import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { DmaloadError } from '../../src/core/errors.js';
import { assertSlices, raw, writeGguf, writeSafetensors, type Spec } from './model-files.js';
import type { GgufTypedValue } from '../gguf-writer.js';
import { inspect, loadModel, MODEL_COALESCE_GAP, type LoadedModel } from '../../src/index.js';
import { coalesce } from '../../src/api/model.js';
import { leakCheck, seededBytes, tempDir } from '../helpers.js';

// Tests run from dist/test/formats/.
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const samples = resolve(repoRoot, 'test', 'fixtures', 'safetensors-samples');
const { dir, cleanup } = tempDir('dmaload-model-');
after(cleanup);

const KiB = 1024;
const MiB = 1024 * KiB;

function f32(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.fround(Math.sin(seed * 1000 + i) * 1e3));
}

/** A safetensors model with every dtype that has a typed array (and a few that have none). */
function mixedSafetensors(): { specs: Spec[]; values: Record<string, ArrayLike<number | bigint>> } {
  const values: Record<string, ArrayLike<number | bigint>> = {
    'w.f32': f32(1000, 1),
    'w.f64': Float64Array.from({ length: 300 }, (_, i) => i * Math.PI),
    'w.i8': Int8Array.from({ length: 77 }, (_, i) => (i % 256) - 128),
    'w.u8': Uint8Array.from({ length: 77 }, (_, i) => (i * 7) % 256),
    'w.i16': Int16Array.from({ length: 99 }, (_, i) => -i * 300),
    'w.u16': Uint16Array.from({ length: 99 }, (_, i) => i * 600),
    'w.i32': Int32Array.from({ length: 50 }, (_, i) => -i * 1e7),
    'w.u32': Uint32Array.from({ length: 50 }, (_, i) => i * 8e7),
    'w.i64': BigInt64Array.from({ length: 20 }, (_, i) => -(2n ** 60n) + BigInt(i)),
    'w.u64': BigUint64Array.from({ length: 20 }, (_, i) => 2n ** 63n + BigInt(i)),
    'w.bool': Uint8Array.from({ length: 33 }, (_, i) => i % 2),
  };
  const dtype: Record<string, string> = {
    'w.f32': 'F32',
    'w.f64': 'F64',
    'w.i8': 'I8',
    'w.u8': 'U8',
    'w.i16': 'I16',
    'w.u16': 'U16',
    'w.i32': 'I32',
    'w.u32': 'U32',
    'w.i64': 'I64',
    'w.u64': 'U64',
    'w.bool': 'BOOL',
  };
  const specs: Spec[] = Object.entries(values).map(([name, v]) => ({
    name,
    dtype: dtype[name]!,
    shape: [v.length],
    data: raw(v as unknown as ArrayBufferView),
  }));
  specs.push({ name: 'w.f16', dtype: 'F16', shape: [4], data: raw(Uint16Array.from([0x3c00, 0x4000, 0xc200, 0])) });
  specs.push({ name: 'w.bf16', dtype: 'BF16', shape: [2, 3], data: seededBytes(12, 5) });
  specs.push({ name: 'w.f8', dtype: 'F8_E4M3', shape: [5], data: seededBytes(5, 6) });
  specs.push({ name: 'w.empty', dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) });
  specs.push({ name: 'w.big', dtype: 'F32', shape: [256 * 1024 + 3], data: raw(f32(256 * 1024 + 3, 9)) });
  // As writers do: widest elements first, so every tensor sits at a multiple of its element size.
  const width = (d: string) => ({ F64: 8, I64: 8, U64: 8, F32: 4, I32: 4, U32: 4, F16: 2, BF16: 2, I16: 2, U16: 2 })[d as 'F64'] ?? 1;
  specs.sort((a, b) => width(b.dtype) - width(a.dtype));
  return { specs, values };
}

function assertTypedArrays(model: LoadedModel, values: Record<string, ArrayLike<number | bigint>>): void {
  for (const [name, want] of Object.entries(values)) {
    const t = model.tensors.get(name)!;
    const arr = t.asTypedArray();
    assert.ok(arr, `${name}: a typed array (offset ${t.offset})`);
    assert.equal(arr.constructor, want.constructor === Uint8Array && t.dtype === 'BOOL' ? Uint8Array : want.constructor, name);
    assert.deepEqual(Array.from(arr as ArrayLike<number | bigint>), Array.from(want), name);
    // Zero-copy: the same memory as `bytes`.
    assert.equal(arr.buffer, t.bytes.buffer, `${name}: a view, not a copy`);
    assert.equal(arr.byteOffset, t.bytes.byteOffset);
  }
  const f16 = model.tensors.get('w.f16')?.asTypedArray();
  if ((globalThis as { Float16Array?: unknown }).Float16Array) assert.deepEqual(Array.from(f16 as ArrayLike<number>), [1, 2, -3, 0]);
  else assert.equal(f16, undefined, 'F16 without Float16Array');
  for (const name of ['w.bf16', 'w.f8']) assert.equal(model.tensors.get(name)?.asTypedArray(), undefined, name);
  const empty = model.tensors.get('w.empty')!;
  assert.equal(empty.bytes.length, 0);
  assert.equal(empty.asTypedArray()?.length, 0);
}

describe('loadModel: whole models', () => {
  test('safetensors: every tensor, every target and io, bytes equal the file slices, typed arrays equal the values', async () => {
    const { specs, values } = mixedSafetensors();
    const path = join(dir, 'mixed.safetensors');
    const file = writeSafetensors(path, specs, { metadata: { format: 'pt' } });
    const info = await inspect(path);
    for (const target of ['memory', 'memfd'] as const) {
      for (const io of ['direct', 'buffered'] as const) {
        const leaks = leakCheck();
        const model = await loadModel(path, { target, io });
        assert.equal(model.format, 'safetensors');
        assert.deepEqual(model.metadata, { format: 'pt' });
        assert.deepEqual(
          [...model.tensors.keys()],
          info.tensors.map((t) => t.name),
          'model order',
        );
        assert.deepEqual(
          [...model.tensors.values()].map((t) => [t.name, t.dtype, t.shape, t.offset, t.byteLength, t.file]),
          info.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.bytes, t.file]),
        );
        assertSlices(model, file);
        assertTypedArrays(model, values);
        const tensorBytes = info.tensors.reduce((n, t) => n + t.bytes, 0);
        assert.equal(model.stats.tensorBytes, tensorBytes);
        assert.equal(model.stats.tensors, specs.length);
        assert.equal(model.stats.files, 1);
        assert.equal(model.stats.ranges, 1, 'safetensors data has no holes: one range');
        // The data region only (rounded out to blocks): the header is not read.
        assert.ok(model.stats.bytesRead >= tensorBytes && model.stats.bytesRead <= tensorBytes + 2 * 4096, `${model.stats.bytesRead} read for ${tensorBytes}`);
        assert.equal(model.stats.perFile[0]?.stats.io, io);
        assert.equal(model.buffers.length, 1);
        assert.equal(model.buffers[0]?.target, target);
        if (target === 'memfd') assert.ok(model.buffers[0].fd >= 0);
        assert.equal(model.tensors.get('w.f32')?.buffer, model.buffers[0]);
        model.close();
        assert.equal(model.closed, true);
        model.close(); // idempotent
        assert.throws(() => model.tensors.get('w.f32')!.bytes, { code: 'ERR_BUFFER_CLOSED' });
        assert.throws(() => model.tensors.get('w.empty')!.bytes, { code: 'ERR_BUFFER_CLOSED' });
        assert.equal(model.tensors.get('w.f32')!.byteLength, 4000, 'facts stay readable');
        assert.equal(await leaks(), undefined);
      }
    }
  });

  test('GGUF: every tensor (F32, F16, I*, F64, quantized), alignment honoured, typed arrays where aligned', async () => {
    const values = {
      a: f32(4096, 2),
      b: Int32Array.from({ length: 33 }, (_, i) => i - 16),
      c: Float64Array.from([1.5, -2.25]),
      d: Int16Array.from([1, -2, 3]),
    };
    const specs: Spec[] = [
      { name: 'a', dtype: 'F32', shape: [64, 64], data: raw(values.a) },
      { name: 'q', dtype: 'Q4_0', shape: [64, 2], data: seededBytes(4 * 18, 3) },
      { name: 'b', dtype: 'I32', shape: [33], data: raw(values.b) },
      { name: 'h', dtype: 'F16', shape: [3], data: raw(Uint16Array.from([0x3c00, 0x4000, 0xc200])) },
      { name: 'c', dtype: 'F64', shape: [2], data: raw(values.c) },
      { name: 'd', dtype: 'I16', shape: [3], data: raw(values.d) },
      { name: 'q8', dtype: 'Q8_0', shape: [32 * 1000], data: seededBytes(1000 * 34, 4) },
    ];
    for (const alignment of [32, 64, 4096]) {
      const path = join(dir, `model-${alignment}.gguf`);
      const file = writeGguf(path, specs, { alignment, metadata: [['general.name', { type: 'STRING', value: 'tiny' }]] });
      const leaks = leakCheck();
      const model = await loadModel(path);
      assert.equal(model.format, 'gguf');
      assert.equal(model.metadata['general.name'], 'tiny');
      assert.deepEqual(
        [...model.tensors.keys()],
        specs.map((s) => s.name),
      );
      assertSlices(model, file);
      for (const t of model.tensors.values()) assert.equal(t.bytes.byteOffset % alignment, 0, `${t.name} aligned to ${alignment} in memory`);
      for (const [name, want] of Object.entries(values))
        assert.deepEqual(Array.from(model.tensors.get(name)!.asTypedArray() as ArrayLike<number>), Array.from(want), name);
      assert.equal(model.tensors.get('q')!.asTypedArray(), undefined, 'quantized: no typed array');
      assert.equal(model.tensors.get('q8')!.asTypedArray(), undefined);
      const tensorBytes = specs.reduce((n, s) => n + s.data.length, 0);
      assert.equal(model.stats.tensorBytes, tensorBytes);
      // Padding between GGUF tensors (< alignment) is read through: one range.
      assert.equal(model.stats.ranges, 1);
      assert.ok(model.stats.bytesRead <= tensorBytes + specs.length * alignment + 2 * 4096, `${model.stats.bytesRead} read for ${tensorBytes}`);
      await model[Symbol.asyncDispose]();
      assert.equal(model.closed, true);
      assert.equal(await leaks(), undefined);
    }
  });

  test('safetensors project samples: each loads, bytes equal the file slices, values -3..2 where aligned', async () => {
    const files = readdirSync(samples).filter((f) => f.endsWith('.safetensors'));
    assert.equal(files.length, 10);
    let typed = 0;
    for (const f of files) {
      const path = join(samples, f);
      const file = readFileSync(path);
      const leaks = leakCheck();
      const model = await loadModel(path);
      assert.deepEqual(model.metadata, { test: 'a' });
      assert.equal(model.tensors.size, f === 'overall.safetensors' ? 9 : 1);
      assertSlices(model, file);
      for (const t of model.tensors.values()) {
        const arr = t.asTypedArray();
        const size = { U8: 1, I8: 1, U16: 2, I16: 2, F16: 2, U32: 4, I32: 4, F32: 4, F64: 8 }[t.dtype as 'U8'];
        const aligned = t.offset % size === 0;
        if (t.dtype === 'F16' && !(globalThis as { Float16Array?: unknown }).Float16Array) {
          assert.equal(arr, undefined);
        } else if (!aligned) {
          assert.equal(arr, undefined, `${f}:${t.name} at unaligned offset ${t.offset}: no typed array`);
        } else {
          assert.ok(arr, `${f}:${t.name}`);
          // Unsigned samples hold -3..2 wrapped around.
          const signed = Array.from(arr as ArrayLike<number>, (v) => (t.dtype.startsWith('U') ? (v << (32 - 8 * size)) >> (32 - 8 * size) : v));
          assert.deepEqual(signed, [-3, -2, -1, 0, 1, 2], `${f}:${t.name}`);
          typed++;
        }
      }
      model.close();
      assert.equal(await leaks(), undefined);
    }
    assert.ok(typed > 0, 'some sample tensors were aligned');
  });

  test('an unaligned safetensors header: bytes still right, asTypedArray undefined rather than a misaligned view', async () => {
    const values = f32(10, 7);
    const path = join(dir, 'unaligned.safetensors');
    const file = writeSafetensors(path, [{ name: 'x', dtype: 'F32', shape: [10], data: raw(values) }], { pad: 1, metadata: { k: 'vv' } });
    const model = await loadModel(path);
    const t = model.tensors.get('x')!;
    assert.notEqual(t.offset % 4, 0, 'the test needs an unaligned tensor');
    assertSlices(model, file);
    assert.equal(t.asTypedArray(), undefined);
    assert.deepEqual(Array.from(new Float32Array(t.bytes.slice().buffer)), Array.from(values), 'a copy works');
    model.close();
  });
});

describe('loadModel: selective loads', () => {
  // 64 tensors of 64 KiB (+ a few odd bytes so ranges straddle blocks) with 1 KiB tensors between some of them.
  const specs: Spec[] = [];
  for (let i = 0; i < 64; i++) {
    specs.push({ name: `layer.${i}.weight`, dtype: 'U8', shape: [64 * KiB + i], data: seededBytes(64 * KiB + i, 100 + i) });
    specs.push({ name: `layer.${i}.bias`, dtype: 'U8', shape: [KiB], data: seededBytes(KiB, 200 + i) });
  }
  const path = join(dir, 'many.safetensors');
  let file: Buffer;

  test('2 of 128 tensors: bytes equal the slices and bytesRead proves only their ranges were read', async () => {
    file = writeSafetensors(path, specs);
    const want = ['layer.10.weight', 'layer.40.weight'];
    for (const io of ['direct', 'buffered'] as const) {
      for (const target of ['memory', 'memfd'] as const) {
        const leaks = leakCheck();
        const model = await loadModel(path, { tensors: want, io, target });
        assert.deepEqual([...model.tensors.keys()], want);
        assertSlices(model, file);
        const total = want.reduce((n, name) => n + model.tensors.get(name)!.byteLength, 0);
        assert.equal(model.stats.tensorBytes, total);
        assert.equal(model.stats.ranges, 2);
        // Each range rounded out to whole blocks: at most 2 blocks extra per range.
        assert.ok(model.stats.bytesRead >= total && model.stats.bytesRead <= total + 2 * 2 * 4096, `${io}: read ${model.stats.bytesRead} for ${total}`);
        assert.ok(model.buffers[0]!.size < 2 * total, 'the buffer holds the ranges, not the file');
        model.close();
        assert.equal(await leaks(), undefined);
      }
    }
  });

  test('neighbours coalesce: a small tensor between two wanted ones is read through; a predicate selects', async () => {
    // weight 5, (bias 5: 1 KiB gap), weight 6 → one range.
    let model = await loadModel(path, { tensors: ['layer.5.weight', 'layer.6.weight'] });
    assert.equal(model.stats.ranges, 1);
    assertSlices(model, file);
    const total = model.stats.tensorBytes;
    assert.ok(model.stats.bytesRead <= total + KiB + 2 * 4096, `${model.stats.bytesRead} for ${total}`);
    model.close();
    // With coalescing off, two ranges (they still share a block at most).
    model = await loadModel(path, { tensors: ['layer.5.weight', 'layer.6.weight'], coalesceGap: 0 });
    assert.equal(model.stats.ranges, 2);
    assertSlices(model, file);
    model.close();
    // Every bias: 64 small tensors 64 KiB apart (more than the gap) → 64 ranges, ~64 KiB read, not 4 MiB.
    model = await loadModel(path, { tensors: (name) => name.endsWith('.bias') });
    assert.equal(model.tensors.size, 64);
    assert.equal(model.stats.ranges, 64);
    assertSlices(model, file);
    assert.ok(model.stats.bytesRead <= 64 * (KiB + 2 * 4096), `${model.stats.bytesRead}`);
    model.close();
    // Requested order and duplicates do not matter; the map is in the model's order.
    model = await loadModel(path, { tensors: ['layer.3.bias', 'layer.1.weight', 'layer.3.bias'] });
    assert.deepEqual([...model.tensors.keys()], ['layer.1.weight', 'layer.3.bias']);
    assertSlices(model, file);
    model.close();
    // Nothing wanted: nothing read.
    const leaks = leakCheck();
    model = await loadModel(path, { tensors: [] });
    assert.equal(model.tensors.size, 0);
    assert.equal(model.stats.bytesRead, 0);
    assert.equal(model.stats.files, 0);
    model.close();
    assert.equal(await leaks(), undefined);
  });

  test('unknown tensor names: ERR_MODEL_TENSOR_NOT_FOUND naming them and a few that exist, nothing loaded', async () => {
    const leaks = leakCheck();
    await assert.rejects(loadModel(path, { tensors: ['layer.1.weight', 'nope', 'nada'] }), (e: unknown) => {
      assert.ok(e instanceof DmaloadError);
      assert.equal(e.code, 'ERR_MODEL_TENSOR_NOT_FOUND');
      assert.equal(e.path, path);
      assert.match(e.message, /"nope", "nada"/);
      assert.match(e.message, /it has 128, e\.g\. "layer\.0\.weight"/);
      return true;
    });
    await assert.rejects(loadModel(path, { tensors: Array.from({ length: 10 }, (_, i) => `x${i}`) }), /"x0", "x1", "x2", … \(7 more\)/);
    await assert.rejects(loadModel(path, { tensors: 'layer.1.weight' as never }), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(loadModel(path, { tensors: [1] as never }), { code: 'ERR_INVALID_ARG_TYPE' });
    await assert.rejects(loadModel(path, { coalesceGap: -1 }), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(loadModel(path, { target: 'gpu' as never }), { code: 'ERR_INVALID_ARG_VALUE' });
    await assert.rejects(
      loadModel(path, {
        tensors: () => {
          throw new Error('predicate');
        },
      }),
      /predicate/,
    );
    await assert.rejects(loadModel(path, { memoryBudget: 100 * KiB }), { code: 'ERR_MEMORY_BUDGET', path });
    assert.equal(await leaks(), undefined);
  });
});

describe('loadModel: shards', () => {
  test('a safetensors index with 2 shards: one result, tensors resolve to their shard, selective loads skip shards', async () => {
    const sub = join(dir, 'sharded');
    const s1: Spec[] = [
      { name: 'embed', dtype: 'F32', shape: [1000], data: raw(f32(1000, 11)) },
      { name: 'l0', dtype: 'U8', shape: [300 * KiB], data: seededBytes(300 * KiB, 12) },
    ];
    const s2: Spec[] = [
      { name: 'l1', dtype: 'U8', shape: [200 * KiB + 8], data: seededBytes(200 * KiB + 8, 13) },
      { name: 'head', dtype: 'F32', shape: [77], data: raw(f32(77, 14)) },
    ];
    const p1 = join(sub, 'model-00001-of-00002.safetensors');
    const p2 = join(sub, 'model-00002-of-00002.safetensors');
    const files = new Map([
      [p1, writeSafetensors(p1, s1)],
      [p2, writeSafetensors(p2, s2)],
    ]);
    const index = join(sub, 'model.safetensors.index.json');
    writeFileSync(
      index,
      JSON.stringify({
        metadata: { total_size: 0 },
        weight_map: {
          embed: 'model-00001-of-00002.safetensors',
          l0: 'model-00001-of-00002.safetensors',
          l1: 'model-00002-of-00002.safetensors',
          head: 'model-00002-of-00002.safetensors',
        },
      }),
    );
    for (const target of ['memory', 'memfd'] as const) {
      const leaks = leakCheck();
      const model = await loadModel(index, { target });
      assert.deepEqual(model.metadata, { total_size: 0 });
      assert.deepEqual(
        [...model.tensors.values()].map((t) => [t.name, t.file]),
        [
          ['embed', p1],
          ['l0', p1],
          ['l1', p2],
          ['head', p2],
        ],
      );
      assertSlices(model, files);
      assert.equal(model.stats.files, 2);
      assert.equal(model.buffers.length, 2);
      assert.equal(model.tensors.get('head')!.buffer, model.buffers[1]);
      assert.deepEqual(Array.from(model.tensors.get('head')!.asTypedArray() as Float32Array), Array.from(f32(77, 14)));
      assert.deepEqual(
        model.stats.perFile.map((f) => [f.file, f.tensors]),
        [
          [p1, 2],
          [p2, 2],
        ],
      );
      model.close();
      assert.ok(model.buffers.every((b) => b.closed));
      assert.equal(await leaks(), undefined);
    }
    const leaks = leakCheck();
    const one = await loadModel(index, { tensors: ['l1'] });
    assert.equal(one.stats.files, 1, 'the other shard is not read');
    assert.equal(one.buffers[0]?.path, p2);
    assertSlices(one, files);
    assert.ok(one.stats.bytesRead <= one.stats.tensorBytes + 2 * 4096);
    one.close();
    assert.equal(await leaks(), undefined);
  });

  test('GGUF split files: the first split loads them all into one result', async () => {
    const sub = join(dir, 'split');
    const part = (no: number, specs: Spec[]) => ({
      path: join(sub, `m-0000${no + 1}-of-00003.gguf`),
      specs,
      meta: [
        ['split.no', { type: 'UINT16', value: no }],
        ['split.count', { type: 'UINT16', value: 3 }],
        ['split.tensors.count', { type: 'INT32', value: 4 }],
      ] as [string, GgufTypedValue][],
    });
    const parts = [
      part(0, [
        { name: 'a', dtype: 'F32', shape: [100], data: raw(f32(100, 21)) },
        { name: 'b', dtype: 'Q4_0', shape: [32 * 100], data: seededBytes(1800, 22) },
      ]),
      part(1, [{ name: 'c', dtype: 'I64', shape: [9], data: raw(BigInt64Array.from({ length: 9 }, (_, i) => BigInt(i) - 4n)) }]),
      part(2, [{ name: 'd', dtype: 'F32', shape: [3000], data: raw(f32(3000, 23)) }]),
    ];
    const files = new Map(parts.map((p) => [p.path, writeGguf(p.path, p.specs, { metadata: p.meta })]));
    const leaks = leakCheck();
    const model = await loadModel(parts[0]!.path, { target: 'memfd' });
    assert.equal(model.format, 'gguf');
    assert.deepEqual(
      [...model.tensors.values()].map((t) => [t.name, t.file]),
      [
        ['a', parts[0]!.path],
        ['b', parts[0]!.path],
        ['c', parts[1]!.path],
        ['d', parts[2]!.path],
      ],
    );
    assertSlices(model, files);
    assert.equal(model.stats.files, 3);
    assert.deepEqual(Array.from(model.tensors.get('c')!.asTypedArray() as BigInt64Array), [-4n, -3n, -2n, -1n, 0n, 1n, 2n, 3n, 4n]);
    assert.deepEqual(Array.from(model.tensors.get('d')!.asTypedArray() as Float32Array), Array.from(f32(3000, 23)));
    model.close();
    assert.equal(await leaks(), undefined);
  });
});

describe('loadModel: abort, failures, progress', () => {
  const sub = join(dir, 'big');
  const index = join(sub, 'big.safetensors.index.json');
  const shardSpecs = (k: number): Spec[] => [{ name: `t${k}`, dtype: 'U8', shape: [32 * MiB], data: seededBytes(32 * MiB, 300 + k) }];

  test('progress sums the shards; an aborted signal rejects with AbortError before reading', async () => {
    writeSafetensors(join(sub, 's1.safetensors'), shardSpecs(1));
    writeSafetensors(join(sub, 's2.safetensors'), shardSpecs(2));
    writeFileSync(index, JSON.stringify({ weight_map: { t1: 's1.safetensors', t2: 's2.safetensors' } }));
    const seen: { bytes: number; total: number }[] = [];
    const model = await loadModel(index, { onProgress: (p) => seen.push(p) });
    const last = seen.at(-1)!;
    assert.equal(last.bytes, model.stats.bytesRead);
    assert.equal(last.total, model.stats.bytesRead);
    assert.ok(seen.every((p) => p.bytes <= p.total));
    model.close();

    const leaks = leakCheck();
    await assert.rejects(loadModel(index, { signal: AbortSignal.abort() }), { name: 'AbortError' });
    assert.equal(await leaks(), undefined);
  });

  test('abort mid-way: rejects with AbortError, every shard freed', async () => {
    for (const target of ['memory', 'memfd'] as const) {
      const leaks = leakCheck();
      const ac = new AbortController();
      let last = 0;
      const p = loadModel(index, {
        target,
        io: 'direct',
        chunkSize: 65536,
        queueDepth: 1,
        signal: ac.signal,
        onProgress: (pr) => {
          last = pr.bytes;
          if (pr.bytes > 0) ac.abort();
        },
      });
      await assert.rejects(p, { name: 'AbortError', code: 'ABORT_ERR' });
      assert.ok(last < 64 * MiB, 'stopped before the end');
      assert.equal(await leaks(), undefined);
    }
  });

  test('one file failing mid-way rejects with its error and frees the others', async () => {
    const leaks = leakCheck();
    const boom = new Error('boom');
    const p = loadModel(index, {
      io: 'direct',
      chunkSize: 65536,
      queueDepth: 1,
      onProgress: (pr) => {
        if (pr.bytes > 0) throw boom;
      },
    });
    await assert.rejects(p, (e) => e === boom);
    assert.equal(await leaks(), undefined);
    // A missing file: Node's fs error.
    await assert.rejects(loadModel(join(sub, 'missing.safetensors.index.json')), { code: 'ENOENT' });
    assert.equal(await leaks(), undefined);
  });
});

test('coalesce(): merges neighbours within the gap, keeps order', () => {
  const t = (offset: number, bytes: number) => ({ offset, bytes });
  assert.deepEqual(coalesce([t(0, 10), t(10, 5), t(100, 1)], 0), [
    { offset: 0, length: 15 },
    { offset: 100, length: 1 },
  ]);
  assert.deepEqual(coalesce([t(0, 10), t(10, 5), t(100, 1)], 85), [{ offset: 0, length: 101 }]);
  assert.deepEqual(coalesce([t(0, 10), t(10 + MODEL_COALESCE_GAP + 1, 1)]), [
    { offset: 0, length: 10 },
    { offset: 10 + MODEL_COALESCE_GAP + 1, length: 1 },
  ]);
  assert.deepEqual(coalesce([]), []);
});

describe('inspect and loadModel: what is not a regular file', { concurrency: true }, () => {
  // open() of a FIFO blocks a libuv thread until a writer comes, and nothing (not even process.exit) ends it then:
  // each call runs in a child process that is killed if it takes long, so a regression fails instead of hanging.
  // (The call goes in the environment: \`node -e … inspect\` would start Node's debugger.)
  const api = new URL('../../src/index.js', import.meta.url).href;
  const child = `const [fn, p] = JSON.parse(process.env.DMALOAD_TEST_CALL);
    const m = await import(${JSON.stringify(api)});
    try { await m[fn](p); console.log(JSON.stringify({ ok: true })); }
    catch (e) { console.log(JSON.stringify({ code: e.code, path: e.path })); }
    process.exit(0);`;
  async function outcome(fn: 'inspect' | 'loadModel', path: string): Promise<{ ok?: true; code?: string; path?: string }> {
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', child], {
      env: { ...process.env, DMALOAD_TEST_CALL: JSON.stringify([fn, path]) },
      timeout: 10_000,
      killSignal: 'SIGKILL',
    }).catch((e: { killed?: boolean; message: string }) => assert.fail(e.killed ? `${fn}('${path}') still hung after 10 s` : e.message));
    return JSON.parse(stdout) as { code?: string; path?: string };
  }

  const sub = join(dir, 'special');
  mkdirSync(join(sub, 'folder.safetensors'), { recursive: true });
  mkdirSync(join(sub, 'folder.json'));
  for (const f of ['fifo.safetensors', 'fifo.json', 'shard-fifo.safetensors', 'm-00002-of-00002.gguf']) execFileSync('mkfifo', [join(sub, f)]);
  writeGguf(join(sub, 'm-00001-of-00002.gguf'), [{ name: 'a', dtype: 'F32', shape: [4], data: new Uint8Array(16) }], {
    metadata: [
      ['split.no', { type: 'UINT16', value: 0 }],
      ['split.count', { type: 'UINT16', value: 2 }],
    ],
  });
  const index = (name: string, shard: string) => {
    writeFileSync(join(sub, name), JSON.stringify({ weight_map: { x: shard } }));
    return join(sub, name);
  };

  const cases: [string, 'inspect' | 'loadModel', string, string, string?][] = [
    ['a FIFO', 'inspect', join(sub, 'fifo.safetensors'), 'ERR_NOT_REGULAR_FILE'],
    ['a FIFO named .json (an index)', 'inspect', join(sub, 'fifo.json'), 'ERR_NOT_REGULAR_FILE'],
    ['a FIFO, loadModel', 'loadModel', join(sub, 'fifo.safetensors'), 'ERR_NOT_REGULAR_FILE'],
    [
      'an index naming a FIFO shard',
      'inspect',
      index('fifo-shard.index.json', 'shard-fifo.safetensors'),
      'ERR_NOT_REGULAR_FILE',
      join(sub, 'shard-fifo.safetensors'),
    ],
    [
      'an index naming a FIFO shard, loadModel',
      'loadModel',
      index('fifo-shard.index.json', 'shard-fifo.safetensors'),
      'ERR_NOT_REGULAR_FILE',
      join(sub, 'shard-fifo.safetensors'),
    ],
    ['a GGUF split whose second file is a FIFO', 'inspect', join(sub, 'm-00001-of-00002.gguf'), 'ERR_NOT_REGULAR_FILE', join(sub, 'm-00002-of-00002.gguf')],
    ['/dev/zero', 'inspect', '/dev/zero', 'ERR_NOT_REGULAR_FILE'],
    ['/dev/zero, loadModel', 'loadModel', '/dev/zero', 'ERR_NOT_REGULAR_FILE'],
    // A folder is a model folder now: one without a model is ERR_MODEL_NOT_FOUND, named (docs/sources.md).
    ['a folder', 'inspect', join(sub, 'folder.safetensors'), 'ERR_MODEL_NOT_FOUND'],
    ['a folder named .json', 'inspect', join(sub, 'folder.json'), 'ERR_MODEL_NOT_FOUND'],
    ['an index naming a folder', 'inspect', index('folder-shard.index.json', 'folder.safetensors'), 'EISDIR', join(sub, 'folder.safetensors')],
  ];
  for (const [what, fn, path, code, at] of cases) {
    test(`${what}: ${code}, at once`, async () => {
      assert.deepEqual(await outcome(fn, path), { code, path: at ?? path });
    });
  }
});
