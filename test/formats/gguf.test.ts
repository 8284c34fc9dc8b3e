import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DmaloadError } from '../../src/core/errors.js';
import { rejectsCode, throwsCode } from './codes.js';
import { GGML_TYPES, inspect, parseGguf, parseModel, type ParsedModel } from '../../src/index.js';
import { encodeGgufHeader, type GgufSpec, type GgufTensorSpec, type GgufTypedValue } from '../gguf-writer.js';

const dir = mkdtempSync(join(tmpdir(), 'dmaload-gguf-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/*
 * ggml's block sizes and byte sizes, written from ggml's headers and not from src/formats/gguf.ts: the ids from
 * include/ggml.h `enum ggml_type`, each block size from src/ggml.c `type_traits[].blck_size`, each byte size the
 * `static_assert(sizeof(block_…) == …)` expression of src/ggml-common.h, copied as written (ggml d99724f, 2026-08).
 */
const QK_K = 256;
const half = 2; // sizeof(ggml_half)
const [QK1_0, QK2_0, QK4_0, QK4_1, QK5_0, QK5_1, QK8_0, QK8_1, QK4_NL, QK_MXFP4, QK_NVFP4, QK_NVFP4_SUB] = [128, 64, 32, 32, 32, 32, 32, 32, 32, 32, 64, 16];
const K_SCALE_SIZE = 12;
const IQ3S_N_SCALE = QK_K / 64;
const GGML: Record<string, [id: number, blockSize: number, typeSize: number]> = {
  F32: [0, 1, 4], // sizeof(float)
  F16: [1, 1, 2], // sizeof(ggml_fp16_t)
  Q4_0: [2, QK4_0, half + QK4_0 / 2],
  Q4_1: [3, QK4_1, 2 * half + QK4_1 / 2],
  Q5_0: [6, QK5_0, half + 4 + QK5_0 / 2],
  Q5_1: [7, QK5_1, 2 * half + 4 + QK5_1 / 2],
  Q8_0: [8, QK8_0, half + QK8_0],
  Q8_1: [9, QK8_1, 2 * half + QK8_1],
  Q2_K: [10, QK_K, 2 * half + QK_K / 16 + QK_K / 4],
  Q3_K: [11, QK_K, half + QK_K / 4 + QK_K / 8 + 12],
  Q4_K: [12, QK_K, 2 * half + K_SCALE_SIZE + QK_K / 2],
  Q5_K: [13, QK_K, 2 * half + K_SCALE_SIZE + QK_K / 2 + QK_K / 8],
  Q6_K: [14, QK_K, half + QK_K / 16 + (3 * QK_K) / 4],
  Q8_K: [15, QK_K, 4 + QK_K + (QK_K / 16) * 2], // sizeof(float) + QK_K + QK_K/16*sizeof(int16_t)
  IQ2_XXS: [16, QK_K, half + (QK_K / 8) * 2],
  IQ2_XS: [17, QK_K, half + (QK_K / 8) * 2 + QK_K / 32],
  IQ3_XXS: [18, QK_K, half + 3 * (QK_K / 8)],
  IQ1_S: [19, QK_K, half + QK_K / 8 + QK_K / 16],
  IQ4_NL: [20, QK4_NL, half + QK4_NL / 2],
  IQ3_S: [21, QK_K, half + 13 * (QK_K / 32) + IQ3S_N_SCALE],
  IQ2_S: [22, QK_K, half + QK_K / 4 + QK_K / 16],
  IQ4_XS: [23, QK_K, half + 2 + QK_K / 64 + QK_K / 2],
  I8: [24, 1, 1],
  I16: [25, 1, 2],
  I32: [26, 1, 4],
  I64: [27, 1, 8],
  F64: [28, 1, 8],
  IQ1_M: [29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32],
  BF16: [30, 1, 2],
  TQ1_0: [34, QK_K, half + QK_K / 64 + (QK_K - (4 * QK_K) / 64) / 5],
  TQ2_0: [35, QK_K, half + QK_K / 4],
  MXFP4: [39, QK_MXFP4, 1 + QK_MXFP4 / 2],
  NVFP4: [40, QK_NVFP4, QK_NVFP4 / QK_NVFP4_SUB + QK_NVFP4 / 2],
  Q1_0: [41, QK1_0, half + QK1_0 / 8],
  Q2_0: [42, QK2_0, half + QK2_0 / 4],
};

test('the ggml type table: ids, names, block sizes and type sizes', () => {
  assert.equal(GGML_TYPES.size, Object.keys(GGML).length);
  for (const [name, [id, blockSize, typeSize]] of Object.entries(GGML)) {
    assert.deepEqual(GGML_TYPES.get(id), { id, name, blockSize, typeSize }, name);
  }
  // Spot values quoted in ggml's comments and elsewhere, as plain numbers.
  assert.equal(GGML.Q8_1?.[2], 36);
  assert.equal(GGML.Q4_K?.[2], 144);
  assert.equal(GGML.IQ1_S?.[2], 50);
});

const s = (value: string | Uint8Array): GgufTypedValue => ({ type: 'STRING', value });
const u32 = (value: number): GgufTypedValue => ({ type: 'UINT32', value });

/** Metadata with every value type, nested arrays, 64-bit values on both sides of 2^53, and (optionally) alignment. */
function everyValueType(alignment?: number): [string, GgufTypedValue][] {
  return [
    ['general.architecture', s('llama')],
    ...(alignment === undefined ? [] : ([['general.alignment', u32(alignment)]] as [string, GgufTypedValue][])),
    ['t.u8', { type: 'UINT8', value: 200 }],
    ['t.i8', { type: 'INT8', value: -100 }],
    ['t.u16', { type: 'UINT16', value: 60000 }],
    ['t.i16', { type: 'INT16', value: -30000 }],
    ['t.u32', u32(4_000_000_000)],
    ['t.i32', { type: 'INT32', value: -2_000_000_000 }],
    ['t.f32', { type: 'FLOAT32', value: 1.5 }],
    ['t.bool.true', { type: 'BOOL', value: true }],
    ['t.bool.false', { type: 'BOOL', value: false }],
    ['t.string', s('héllo, 😀 wörld')],
    ['t.string.empty', s('')],
    ['t.u64.small', { type: 'UINT64', value: 42n }],
    ['t.u64.big', { type: 'UINT64', value: 2n ** 63n + 5n }],
    ['t.i64.small', { type: 'INT64', value: -7n }],
    ['t.i64.big', { type: 'INT64', value: -(2n ** 62n) }],
    ['t.f64', { type: 'FLOAT64', value: Math.PI }],
    ['t.arr.u8', { type: 'ARRAY', elementType: 'UINT8', value: [1, 2, 255].map((value) => ({ type: 'UINT8', value })) }],
    ['t.arr.i32', { type: 'ARRAY', elementType: 'INT32', value: [-1, 0, 7].map((value) => ({ type: 'INT32', value })) }],
    ['t.arr.f32', { type: 'ARRAY', elementType: 'FLOAT32', value: [0.25, -2].map((value) => ({ type: 'FLOAT32', value })) }],
    ['t.arr.bool', { type: 'ARRAY', elementType: 'BOOL', value: [true, false].map((value) => ({ type: 'BOOL', value })) }],
    ['t.arr.str', { type: 'ARRAY', elementType: 'STRING', value: ['<s>', '</s>', '▁the'].map(s) }],
    ['t.arr.u64', { type: 'ARRAY', elementType: 'UINT64', value: [1n, 2n ** 64n - 1n].map((value) => ({ type: 'UINT64', value })) }],
    ['t.arr.empty', { type: 'ARRAY', elementType: 'FLOAT64', value: [] }],
    [
      't.arr.nested',
      {
        type: 'ARRAY',
        elementType: 'ARRAY',
        value: [
          { type: 'ARRAY', elementType: 'INT16', value: [{ type: 'INT16', value: -5 }] },
          { type: 'ARRAY', elementType: 'STRING', value: [s('a'), s('b')] },
        ],
      },
    ],
  ];
}

const everyValueExpected = (alignment?: number) => ({
  'general.architecture': 'llama',
  ...(alignment === undefined ? {} : { 'general.alignment': alignment }),
  't.u8': 200,
  't.i8': -100,
  't.u16': 60000,
  't.i16': -30000,
  't.u32': 4_000_000_000,
  't.i32': -2_000_000_000,
  't.f32': 1.5,
  't.bool.true': true,
  't.bool.false': false,
  't.string': 'héllo, 😀 wörld',
  't.string.empty': '',
  't.u64.small': 42,
  't.u64.big': 2n ** 63n + 5n,
  't.i64.small': -7,
  't.i64.big': -(2n ** 62n),
  't.f64': Math.PI,
  't.arr.u8': [1, 2, 255],
  't.arr.i32': [-1, 0, 7],
  't.arr.f32': [0.25, -2],
  't.arr.bool': [true, false],
  't.arr.str': ['<s>', '</s>', '▁the'],
  't.arr.u64': [1, 2n ** 64n - 1n],
  't.arr.empty': [],
  't.arr.nested': [[-5], ['a', 'b']],
});

/** [name, ggml type, dims (ne0 first), expected bytes] */
const TENSORS: [string, string, number[], number][] = [
  ['token_embd.weight', 'Q4_K', [256, 2], 288],
  ['blk.0.attn_q.weight', 'Q8_0', [64, 3], 204],
  ['blk.0.attn_k.weight', 'Q4_0', [64, 2], 72],
  ['blk.0.ffn_up.weight', 'Q6_K', [512], 420],
  ['blk.0.ffn_down.weight', 'IQ2_XS', [256], 74],
  ['blk.0.ffn_gate.weight', 'Q2_K', [256, 1], 84],
  ['blk.0.attn_v.weight', 'Q5_K', [256], 176],
  ['blk.0.attn_output.weight', 'IQ4_XS', [256], 136],
  ['blk.0.x.weight', 'TQ2_0', [256], 66],
  ['blk.0.y.weight', 'MXFP4', [32, 2], 34],
  ['blk.0.z.weight', 'IQ1_M', [256], 56],
  ['output_norm.weight', 'F32', [4, 3], 48],
  ['rope_freqs', 'F16', [8], 16],
  ['four_d', 'BF16', [2, 2, 2, 2], 32],
  ['ids', 'I8', [5], 5],
  ['empty', 'F32', [0, 4], 0],
  ['scalar', 'F64', [], 8],
];

/** A GGUF file: header, then each tensor at the next aligned offset, filled with a pattern. */
function gguf(spec: Omit<GgufSpec, 'tensors'> & { tensors?: [string, string, number[]][] }, alignment = 32): { bytes: Buffer; offsets: number[] } {
  const offsets: number[] = [];
  const tensors: GgufTensorSpec[] = [];
  let at = 0;
  for (const [name, type, dims] of spec.tensors ?? []) {
    const [id, blockSize, typeSize] = GGML[type] ?? [-1, 1, 1];
    offsets.push(at);
    tensors.push({ name, type: id, dims, offset: at });
    at += Math.ceil(((dims.reduce((a, d) => a * d, 1) / blockSize) * typeSize) / alignment) * alignment;
  }
  const header = encodeGgufHeader({ ...spec, tensors, alignment });
  const data = Buffer.alloc(at);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
  return { bytes: Buffer.concat([header, data]), offsets: offsets.map((o) => o + header.length) };
}

function write(name: string, bytes: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

function checkTensors(m: ParsedModel | Awaited<ReturnType<typeof inspect>>, offsets: number[]): void {
  assert.deepEqual(
    m.tensors.map((t) => [t.name, t.dtype, t.shape, t.bytes]),
    TENSORS.map(([n, ty, d, b]) => [n, ty, d, b]),
  );
  assert.deepEqual(
    m.tensors.map((t) => t.offset),
    offsets,
  );
}

test('every value type and many ggml types, default alignment', async () => {
  const { bytes, offsets } = gguf({ version: 3, metadata: everyValueType(), tensors: TENSORS.map(([n, t, d]) => [n, t, d]) });
  const m = parseGguf(bytes);
  assert.equal(m.format, 'gguf');
  assert.deepEqual(m.metadata, everyValueExpected());
  assert.equal(m.dataOffset % 32, 0);
  checkTensors(m, offsets);
  const p = write('every.gguf', bytes);
  const info = await inspect(p);
  assert.deepEqual(info.metadata, everyValueExpected());
  checkTensors(info, offsets);
  assert.ok(info.tensors.every((t) => t.file === p));
});

test('general.alignment is honoured, and v2 parses like v3', () => {
  for (const version of [2, 3]) {
    const { bytes, offsets } = gguf({ version, metadata: everyValueType(256), tensors: TENSORS.map(([n, t, d]) => [n, t, d]) }, 256);
    const m = parseGguf(bytes);
    assert.equal(m.dataOffset % 256, 0);
    assert.deepEqual(m.metadata, everyValueExpected(256));
    checkTensors(m, offsets);
    assert.ok(m.tensors.every((t) => (t.offset - m.dataOffset) % 256 === 0));
  }
});

interface HfGguf {
  gguf(
    uri: string,
    params: { allowLocalFile: boolean },
  ): Promise<{
    metadata: Record<string, unknown>;
    tensorInfos: { name: string; shape: bigint[]; dtype: number; offset: bigint }[];
    tensorDataOffset: bigint;
  }>;
  GGMLQuantizationType: Record<number, string>;
}

const normalize = (v: unknown): unknown =>
  typeof v === 'bigint' ? (v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v) : Array.isArray(v) ? v.map(normalize) : v;

test('cross-check against @huggingface/gguf', async () => {
  // A dev dependency: missing, this test fails rather than skips.
  const moduleName = '@huggingface/gguf';
  const hf = (await import(moduleName)) as HfGguf;
  for (const alignment of [undefined, 64]) {
    const { bytes } = gguf({ metadata: everyValueType(alignment), tensors: TENSORS.map(([n, t, d]) => [n, t, d]) }, alignment ?? 32);
    const p = write(`hf-${alignment ?? 'default'}.gguf`, bytes);
    const ours = await inspect(p);
    const theirs = await hf.gguf(p, { allowLocalFile: true });
    const { version, tensor_count, kv_count, ...kv } = theirs.metadata;
    assert.equal(version, 3);
    assert.equal(tensor_count, BigInt(TENSORS.length));
    assert.equal(kv_count, BigInt(Object.keys(ours.metadata).length));
    assert.deepEqual(ours.metadata, Object.fromEntries(Object.entries(kv).map(([k, v]) => [k, normalize(v)])));
    assert.deepEqual(
      ours.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset]),
      theirs.tensorInfos.map((t) => [t.name, hf.GGMLQuantizationType[t.dtype], t.shape.map(Number), Number(theirs.tensorDataOffset + t.offset)]),
    );
  }
  // Every ggml type id we know has the same name there.
  for (const [id, t] of GGML_TYPES) assert.equal(hf.GGMLQuantizationType[id], t.name);
});

test('GGUF split files: the first split brings in the others', async () => {
  const sub = mkdtempSync(join(dir, 'split-'));
  const part = (no: number, names: string[], extra: [string, GgufTypedValue][] = []) =>
    gguf({
      metadata: [
        ['split.no', { type: 'UINT16', value: no }],
        ['split.count', { type: 'UINT16', value: 3 }],
        ['split.tensors.count', { type: 'INT32', value: 4 }],
        ...extra,
      ],
      tensors: names.map((n) => [n, 'F32', [4]]),
    });
  const files = [0, 1, 2].map((i) => join(sub, `model-0000${i + 1}-of-00003.gguf`));
  const parts = [part(0, ['a', 'b'], [['general.name', s('split model')]]), part(1, ['c']), part(2, ['d'])];
  parts.forEach((p, i) => writeFileSync(files[i] as string, p.bytes));
  const info = await inspect(files[0] as string);
  assert.equal(info.format, 'gguf');
  assert.equal(info.metadata['general.name'], 'split model');
  assert.deepEqual(
    info.tensors.map((t) => [t.name, t.file, t.offset]),
    [
      ['a', files[0], parts[0]?.offsets[0]],
      ['b', files[0], parts[0]?.offsets[1]],
      ['c', files[1], parts[1]?.offsets[0]],
      ['d', files[2], parts[2]?.offsets[0]],
    ],
  );
  // A later split alone is just a file.
  assert.deepEqual(
    (await inspect(files[1] as string)).tensors.map((t) => t.name),
    ['c'],
  );

  writeFileSync(files[2] as string, part(1, ['d']).bytes);
  await rejectsCode(inspect(files[0] as string), 'ERR_MODEL_HEADER', files[2]);
  writeFileSync(files[2] as string, part(2, ['c']).bytes);
  await rejectsCode(inspect(files[0] as string), 'ERR_MODEL_DUPLICATE', files[2]);
  writeFileSync(files[2] as string, part(2, ['d', 'e']).bytes);
  await rejectsCode(inspect(files[0] as string), 'ERR_MODEL_HEADER', files[0]); // split.tensors.count
  writeFileSync(files[2] as string, Buffer.from('not a gguf split'));
  await rejectsCode(inspect(files[0] as string), 'ERR_MODEL_FORMAT', files[2]);
  rmSync(files[2] as string);
  await assert.rejects(inspect(files[0] as string), { code: 'ENOENT' });
});

test('inspect reads a long header in chunks and never the data', async () => {
  const vocab: GgufTypedValue[] = Array.from({ length: 60_000 }, (_, i) => s(`token-${i}-${'x'.repeat(i % 17)}`));
  const spec: GgufSpec = {
    metadata: [['tokenizer.ggml.tokens', { type: 'ARRAY', elementType: 'STRING', value: vocab }]],
    tensors: [{ name: 'w', dims: [1024], type: 0, offset: 4n * 2n ** 30n }],
  };
  const header = encodeGgufHeader(spec);
  assert.ok(header.length > 1_000_000);
  const p = write('long.gguf', header);
  truncateSync(p, header.length + 4 * 2 ** 30 + 4096); // sparse, 4 GiB
  const t0 = performance.now();
  const info = await inspect(p);
  assert.ok(performance.now() - t0 < 3000);
  assert.equal((info.metadata['tokenizer.ggml.tokens'] as string[])[59_999], `token-59999-${'x'.repeat(59_999 % 17)}`);
  assert.deepEqual(
    info.tensors.map((t) => [t.offset, t.bytes]),
    [[header.length + 4 * 2 ** 30, 4096]],
  );
});

/** A small valid file to break. */
function base(
  metadata: [string | Uint8Array, GgufTypedValue][] = [['k', u32(1)]],
  tensors: GgufTensorSpec[] = [{ name: 'w', dims: [4], type: 0, offset: 0 }],
  extra = 256,
): Buffer {
  return Buffer.concat([encodeGgufHeader({ metadata, tensors }), Buffer.alloc(extra)]);
}

test('hardening: versions', () => {
  for (const [version, code] of [
    [1, 'ERR_MODEL_VERSION'],
    [4, 'ERR_MODEL_VERSION'],
    [0, 'ERR_MODEL_VERSION'],
    [0x03000000, 'ERR_MODEL_VERSION'],
  ] as const) {
    const b = base();
    b.writeUInt32LE(version, 4);
    throwsCode(() => parseGguf(b), code);
  }
  const b = base();
  b.writeUInt32LE(0x03000000, 4); // big-endian v3
  assert.throws(() => parseGguf(b), /big-endian/);
  b.write('GGUG', 0);
  throwsCode(() => parseGguf(b), 'ERR_MODEL_FORMAT');
  throwsCode(() => parseModel(b), 'ERR_MODEL_FORMAT');
});

test('hardening: counts and lengths past the end of the file', () => {
  const b = base();
  b.writeBigUInt64LE(2n ** 40n, 8); // tensor count
  throwsCode(() => parseGguf(b), 'ERR_MODEL_TRUNCATED');
  const c = base();
  c.writeBigUInt64LE(2n ** 40n, 16); // metadata count
  throwsCode(() => parseGguf(c), 'ERR_MODEL_TRUNCATED');
  const d = base();
  d.writeBigUInt64LE(2n ** 63n, 24); // key length
  throwsCode(() => parseGguf(d), 'ERR_MODEL_TRUNCATED');
  throwsCode(() => parseGguf(d, { fileSize: 2 ** 50 }), 'ERR_MODEL_TRUNCATED'); // still past the end
  const e = base([['k', s('value')]]);
  e.writeBigUInt64LE(BigInt(e.length), 24 + 8 + 1 + 4); // string value length
  throwsCode(() => parseGguf(e), 'ERR_MODEL_TRUNCATED');
  const arr = base([['k', { type: 'ARRAY', elementType: 'UINT32', value: [u32(1)] }]]);
  arr.writeBigUInt64LE(2n ** 40n, 24 + 8 + 1 + 4 + 4); // array length
  throwsCode(() => parseGguf(arr), 'ERR_MODEL_TRUNCATED');
  // Too many array elements for memory, though the file claims to be large enough.
  arr.writeBigUInt64LE(2n ** 24n + 1n, 24 + 8 + 1 + 4 + 4);
  throwsCode(() => parseGguf(arr.subarray(0, 64), { fileSize: 2 ** 30 }), 'ERR_MODEL_HEADER');
  // A buffer that stops inside the header, from a larger file.
  throwsCode(() => parseGguf(base().subarray(0, 40), { fileSize: 1000 }), 'ERR_MODEL_TRUNCATED');
});

test('hardening: every truncation of a file is refused', async () => {
  const { bytes } = gguf({
    metadata: everyValueType(),
    tensors: [
      ['a', 'Q4_K', [256]],
      ['b', 'F32', [3]],
    ],
  });
  const last = parseGguf(bytes).tensors[1];
  assert.ok(last);
  const full = bytes.subarray(0, last.offset + last.bytes);
  const dataOffset = parseGguf(full).dataOffset;
  for (let k = 0; k < full.length; k++) {
    const cut = full.subarray(0, k);
    assert.throws(
      () => parseGguf(cut),
      (e: unknown) => {
        assert.ok(e instanceof DmaloadError);
        assert.ok(k < dataOffset - 32 ? e.code === 'ERR_MODEL_TRUNCATED' : ['ERR_MODEL_TRUNCATED', 'ERR_MODEL_RANGE'].includes(e.code), `${k}: ${e.code}`);
        return true;
      },
    );
  }
  const p = write('cut.gguf', full.subarray(0, 100));
  await rejectsCode(inspect(p), 'ERR_MODEL_TRUNCATED', p);
});

test('hardening: tensor ranges', () => {
  const t = (name: string, offset: number | bigint, dims: (number | bigint)[] = [4], type = 0): GgufTensorSpec => ({ name, dims, type, offset });
  throwsCode(() => parseGguf(base(undefined, [t('w', 256)])), 'ERR_MODEL_RANGE'); // past the end
  throwsCode(() => parseGguf(base(undefined, [t('w', 2n ** 64n - 32n)])), 'ERR_MODEL_RANGE');
  throwsCode(() => parseGguf(base(undefined, [t('w', 0, [128])])), 'ERR_MODEL_RANGE'); // too long for the file
  throwsCode(() => parseGguf(base(undefined, [t('w', 4)])), 'ERR_MODEL_RANGE'); // unaligned
  throwsCode(() => parseGguf(base(undefined, [t('a', 0, [16]), t('b', 32, [16])])), 'ERR_MODEL_RANGE'); // overlap
  throwsCode(() => parseGguf(base(undefined, [t('a', 32), t('b', 0, [16])])), 'ERR_MODEL_RANGE'); // overlap, out of order
  throwsCode(() => parseGguf(base(undefined, [t('w', 0, [2n ** 53n])])), 'ERR_MODEL_RANGE'); // dimension
  throwsCode(() => parseGguf(base(undefined, [t('w', 0, [2 ** 30, 2 ** 30])])), 'ERR_MODEL_RANGE');
  throwsCode(() => parseGguf(base(undefined, [t('w', 0, [16], 2)])), 'ERR_MODEL_HEADER'); // Q4_0 ne0 % 32
  throwsCode(() => parseGguf(base(undefined, [t('w', 0, [1, 1, 1, 1, 1])])), 'ERR_MODEL_HEADER'); // 5 dims
  // Unknown (and removed) type ids are tolerated, but their offsets are still checked.
  throwsCode(() => parseGguf(base(undefined, [t('w', 4, [4], 1000)])), 'ERR_MODEL_RANGE'); // unaligned
  throwsCode(() => parseGguf(base(undefined, [t('w', 512, [4], 1000)])), 'ERR_MODEL_RANGE'); // past the end
  // Zero-length tensors overlap nothing; adjacent tensors are fine.
  assert.equal(parseGguf(base(undefined, [t('a', 0), t('e', 0, [0]), t('b', 32)])).tensors.length, 3);
});

test('hardening: duplicates, UTF-8, value types, alignment, nesting', () => {
  const t = (name: string | Uint8Array): GgufTensorSpec => ({ name, dims: [1], type: 0, offset: 0 });
  throwsCode(() => parseGguf(base(undefined, [t('w'), { ...t('w'), offset: 32 }])), 'ERR_MODEL_DUPLICATE');
  throwsCode(
    () =>
      parseGguf(
        base([
          ['k', u32(1)],
          ['k', u32(2)],
        ]),
      ),
    'ERR_MODEL_DUPLICATE',
  );
  throwsCode(() => parseGguf(base(undefined, [t(Uint8Array.from([0x77, 0xc3, 0x28]))])), 'ERR_MODEL_UTF8');
  throwsCode(() => parseGguf(base([[Uint8Array.from([0xed, 0xa0, 0x80]), u32(1)]])), 'ERR_MODEL_UTF8'); // encoded surrogate
  // String values are decoded leniently: real vocabularies hold partial UTF-8 sequences.
  assert.equal(parseGguf(base([['k', s(Uint8Array.from([0x61, 0xff]))]])).metadata.k, 'a\ufffd');

  const typed = (type: number, arrayType?: number) => {
    const b = base([['k', arrayType === undefined ? u32(1) : { type: 'ARRAY', elementType: 'UINT8', value: [] }]]);
    b.writeUInt32LE(type, 24 + 8 + 1);
    if (arrayType !== undefined) b.writeUInt32LE(arrayType, 24 + 8 + 1 + 4);
    return b;
  };
  throwsCode(() => parseGguf(typed(13)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseGguf(typed(9, 13)), 'ERR_MODEL_HEADER');
  throwsCode(
    () =>
      parseGguf(
        base([['k', { type: 'UINT8', value: 0 }]])
          .fill(2, 37, 38)
          .fill(7, 33, 34),
      ),
    'ERR_MODEL_HEADER',
  ); // bool 2

  for (const bad of [0, 3, 48]) throwsCode(() => parseGguf(base([['general.alignment', u32(bad)]])), 'ERR_MODEL_HEADER');
  throwsCode(() => parseGguf(base([['general.alignment', { type: 'UINT64', value: 32n }]])), 'ERR_MODEL_HEADER');

  let nested: GgufTypedValue = u32(1);
  for (let i = 0; i < 40; i++) nested = { type: 'ARRAY', elementType: nested.type, value: [nested] };
  throwsCode(() => parseGguf(base([['k', nested]])), 'ERR_MODEL_HEADER');
});

test('no file descriptor leaks', async () => {
  const good = write('fd-good.gguf', base());
  const bad = base();
  bad.writeUInt32LE(1, 4);
  const badPath = write('fd-bad.gguf', bad);
  const fds = () => readdirSync('/proc/self/fd').length;
  await inspect(good);
  const before = fds();
  for (let i = 0; i < 50; i++) {
    await inspect(good);
    await rejectsCode(inspect(badPath), 'ERR_MODEL_VERSION', badPath);
  }
  assert.equal(fds(), before);
});
