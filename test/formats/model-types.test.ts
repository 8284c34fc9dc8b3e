import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { inspect, loadModel } from '../../src/index.js';
import { inspectCommand } from '../../src/cli/inspect.js';
import { assertSlices, raw, writeGguf, writeSafetensors, type Spec } from './model-files.js';
import { leakCheck, seededBytes, tempDir } from '../helpers.js';

const { dir, cleanup } = tempDir('dmaload-model-types-');
after(cleanup);

interface HfGguf {
  gguf(
    uri: string,
    params: { allowLocalFile: boolean },
  ): Promise<{ tensorInfos: { name: string; shape: bigint[]; dtype: number; offset: bigint }[]; tensorDataOffset: bigint }>;
}

/**
 * A GGUF as a newer llama.cpp writes it: known types old and new (NVFP4, Q1_0, Q2_0) around tensors of types this
 * library has no entry for (43 and 1000: not yet in ggml; 4: removed from it), one of them last in the file.
 */
const SPECS: Spec[] = [
  { name: 'tok_embd', dtype: 'F32', shape: [4, 2], data: raw(Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8])) },
  { name: 'blk.0.new', dtype: 'X', typeId: 43, shape: [64, 3], data: seededBytes(50, 1) },
  { name: 'blk.0.nvfp4', dtype: 'NVFP4', typeId: 40, shape: [64, 2], data: seededBytes(2 * 36, 2) },
  { name: 'blk.0.q1', dtype: 'Q1_0', typeId: 41, shape: [128], data: seededBytes(18, 3) },
  { name: 'blk.0.q2', dtype: 'Q2_0', typeId: 42, shape: [64, 4], data: seededBytes(4 * 18, 4) },
  { name: 'blk.0.removed', dtype: 'X', typeId: 4, shape: [32], data: seededBytes(20, 5) },
  { name: 'blk.0.empty_new', dtype: 'X', typeId: 1000, shape: [0, 7], data: new Uint8Array(0) },
  { name: 'output.last', dtype: 'X', typeId: 1000, shape: [256], data: seededBytes(40, 6) },
];

test('GGUF tensors of unknown types inspect: type number, offset, size inferred and flagged; others as usual', async () => {
  const path = join(dir, 'unknown.gguf');
  const file = writeGguf(path, SPECS);
  const info = await inspect(path);
  const byName = new Map(info.tensors.map((t) => [t.name, t]));

  // Offsets, names and shapes from an independent parser.
  // A name in a variable: typed by the interface above, not by the package's own declarations.
  const moduleName = '@huggingface/gguf';
  const hf = (await import(moduleName)) as HfGguf;
  const theirs = await hf.gguf(path, { allowLocalFile: true });
  const starts = theirs.tensorInfos.map((t) => Number(theirs.tensorDataOffset + t.offset));
  assert.deepEqual(
    info.tensors.map((t) => [t.name, t.shape, t.offset]),
    theirs.tensorInfos.map((t, i) => [t.name, t.shape.map(Number), starts[i]]),
  );
  assert.deepEqual(
    theirs.tensorInfos.map((t) => t.dtype),
    SPECS.map((s) => s.typeId ?? 0),
  );

  // Known types: sizes from shape × type, nothing flagged.
  for (const [name, bytes] of [
    ['tok_embd', 32],
    ['blk.0.nvfp4', 72],
    ['blk.0.q1', 18],
    ['blk.0.q2', 72],
  ] as const) {
    const t = byName.get(name)!;
    assert.equal(t.bytes, bytes, name);
    assert.equal(t.unknownType ?? t.typeId ?? t.bytesInferred, undefined, name);
  }
  // Unknown types: the extent reaches the next tensor's start (by hf's offsets) or the end of the file.
  const sorted = [...new Set(starts)].sort((a, b) => a - b);
  for (const name of ['blk.0.new', 'blk.0.removed', 'output.last']) {
    const t = byName.get(name)!;
    const next = sorted.find((s) => s > t.offset) ?? file.length;
    const spec = SPECS.find((s) => s.name === name)!;
    assert.deepEqual(
      { dtype: t.dtype, typeId: t.typeId, unknownType: t.unknownType, bytesInferred: t.bytesInferred, bytes: t.bytes },
      { dtype: `UNKNOWN_${spec.typeId}`, typeId: spec.typeId, unknownType: true, bytesInferred: true, bytes: next - t.offset },
      name,
    );
    assert.ok(t.bytes >= spec.data.length, `${name}: the inferred extent covers the real data`);
  }
  // No elements: zero bytes whatever the type, and not inferred.
  const empty = byName.get('blk.0.empty_new')!;
  assert.deepEqual([empty.bytes, empty.unknownType, empty.bytesInferred], [0, true, undefined]);

  // The CLI lists them, flags the inferred sizes and counts them in the summary.
  let out = '';
  assert.equal(await inspectCommand([path], { stdout: (s) => void (out += s), stderr: () => {} }), 0);
  assert.match(out, /^tensors {2}8 \(4 of a type this dmaload does not know: loaded as raw bytes\)$/m);
  assert.match(out, /^dtypes {3}UNKNOWN_1000 2, F32 1, NVFP4 1, Q1_0 1, Q2_0 1, UNKNOWN_4 1, UNKNOWN_43 1$/m);
  assert.match(out, /^blk\.0\.new\s+UNKNOWN_43\s+\[64, 3\]\s+64 B \(inferred\)/m);
});

test('GGUF with unknown types loads: every tensor, unknown ones as raw bytes; only asTypedArray refuses', async () => {
  const path = join(dir, 'unknown-load.gguf');
  const file = writeGguf(path, SPECS);
  for (const target of ['memory', 'memfd'] as const) {
    const leaks = leakCheck();
    const model = await loadModel(path, { target });
    try {
      assert.equal(model.tensors.size, SPECS.length);
      assertSlices(model, file); // every tensor, unknown ones over their inferred extent
      for (const spec of SPECS) {
        const t = model.tensors.get(spec.name)!;
        // The bytes the writer put there are at the start of the tensor's bytes.
        assert.deepEqual(t.bytes.subarray(0, spec.data.length), spec.data, spec.name);
        if (spec.typeId !== undefined && ![40, 41, 42].includes(spec.typeId)) {
          assert.throws(() => t.asTypedArray(), { code: 'ERR_MODEL_DTYPE_UNKNOWN', path });
          assert.equal(JSON.parse(JSON.stringify(t)).unknownType, true);
        }
      }
      assert.deepEqual(Array.from(model.tensors.get('tok_embd')!.asTypedArray() as Float32Array), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.equal(model.tensors.get('blk.0.q1')!.asTypedArray(), undefined); // known, but no typed array
    } finally {
      model.close();
    }
    assert.equal(await leaks(), undefined);
  }
});

test('safetensors with the new dtypes and an unknown one loads; bytes equal the file slices', async () => {
  const path = join(dir, 'dtypes.safetensors');
  const file = writeSafetensors(path, [
    { name: 'f8', dtype: 'F8_E4M3', shape: [3, 5], data: seededBytes(15, 7) },
    { name: 'e8', dtype: 'F8_E8M0', shape: [4], data: seededBytes(4, 8) },
    { name: 'f4', dtype: 'F4', shape: [2, 5], data: seededBytes(5, 9) },
    { name: 'f6', dtype: 'F6_E3M2', shape: [8], data: seededBytes(6, 10) },
    { name: 'fnuz', dtype: 'F8_E5M2FNUZ', shape: [2], data: seededBytes(2, 11) },
    { name: 'future', dtype: 'F2_E1M0', shape: [16], data: seededBytes(4, 12) },
  ]);
  const leaks = leakCheck();
  const model = await loadModel(path);
  try {
    assertSlices(model, file);
    assert.deepEqual(
      [...model.tensors.values()].map((t) => [t.name, t.byteLength]),
      [
        ['f8', 15],
        ['e8', 4],
        ['f4', 5],
        ['f6', 6],
        ['fnuz', 2],
        ['future', 4],
      ],
    );
    for (const n of ['f8', 'e8', 'f4', 'f6', 'fnuz']) assert.equal(model.tensors.get(n)!.asTypedArray(), undefined, n);
    assert.throws(() => model.tensors.get('future')!.asTypedArray(), { code: 'ERR_MODEL_DTYPE_UNKNOWN' });
  } finally {
    model.close();
  }
  assert.equal(await leaks(), undefined);
  // Node's own read of the file agrees with the hand-written bytes (the writer is not the oracle of itself).
  assert.deepEqual(readFileSync(path), file);
});
