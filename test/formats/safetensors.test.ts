import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rejectsCode, throwsCode } from './codes.js';
import { inspect, parseModel, parseSafetensors, SAFETENSORS_DTYPE_BITS } from '../../src/index.js';

// Tests run from dist/test/formats/.
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const samples = resolve(repoRoot, 'test', 'fixtures', 'safetensors-samples');
const dir = mkdtempSync(join(tmpdir(), 'dmaload-st-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** A safetensors file: u64 LE header length, header, data (bytes or a length of zeros). */
function st(header: object | string | Uint8Array, data: Uint8Array | number = 0): Buffer {
  const h = header instanceof Uint8Array ? Buffer.from(header) : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, typeof data === 'number' ? Buffer.alloc(data) : data]);
}

function write(name: string, bytes: Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

const expected: Record<string, { dtype: string; bytes: number }> = {
  B: { dtype: 'U8', bytes: 6 },
  H: { dtype: 'U16', bytes: 12 },
  I: { dtype: 'U32', bytes: 24 },
  b: { dtype: 'I8', bytes: 6 },
  d: { dtype: 'F64', bytes: 48 },
  e: { dtype: 'F16', bytes: 12 },
  f: { dtype: 'F32', bytes: 24 },
  h: { dtype: 'I16', bytes: 12 },
  i: { dtype: 'I32', bytes: 24 },
};

test('every sample of the safetensors project inspects correctly', async () => {
  const files = readdirSync(samples).filter((f) => f.endsWith('.safetensors'));
  assert.equal(files.length, 10);
  for (const f of files) {
    const path = join(samples, f);
    const bytes = readFileSync(path);
    const info = await inspect(path);
    assert.equal(info.format, 'safetensors');
    assert.deepEqual(info.metadata, { test: 'a' });
    const names = f === 'overall.safetensors' ? Object.keys(expected).sort() : [f.slice(0, -'.safetensors'.length)];
    assert.deepEqual(
      info.tensors.map((t) => t.name),
      names,
      f,
    );
    const headerEnd = 8 + Number(bytes.readBigUInt64LE(0));
    let at = headerEnd;
    for (const t of info.tensors) {
      const want = expected[t.name];
      assert.ok(want);
      assert.equal(t.dtype, want.dtype);
      assert.deepEqual(t.shape, [6]);
      assert.equal(t.bytes, want.bytes);
      assert.equal(t.offset, at, `${f}:${t.name} offset`);
      assert.equal(t.file, path);
      at += t.bytes;
    }
    assert.equal(at, bytes.length);
  }
});

test('sample tensor bytes at the reported offsets hold the values -3..2', async () => {
  const path = join(samples, 'overall.safetensors');
  const bytes = readFileSync(path);
  for (const t of (await inspect(path)).tensors) {
    const slice = bytes.subarray(t.offset, t.offset + t.bytes);
    const view = new DataView(slice.buffer, slice.byteOffset, slice.byteLength);
    const n = t.bytes / 6;
    const read = (k: number): number => {
      switch (t.dtype) {
        case 'U8':
          return (view.getUint8(k) << 24) >> 24;
        case 'I8':
          return view.getInt8(k);
        case 'U16':
          return (view.getUint16(k * 2, true) << 16) >> 16;
        case 'I16':
          return view.getInt16(k * 2, true);
        case 'U32':
          return view.getUint32(k * 4, true) | 0;
        case 'I32':
          return view.getInt32(k * 4, true);
        case 'F32':
          return view.getFloat32(k * 4, true);
        case 'F64':
          return view.getFloat64(k * 8, true);
        case 'F16':
          return [0xc200, 0xc000, 0xbc00, 0, 0x3c00, 0x4000].indexOf(view.getUint16(k * 2, true)) - 3;
        default:
          throw new Error(t.dtype);
      }
    };
    assert.ok(Number.isInteger(n));
    assert.deepEqual([0, 1, 2, 3, 4, 5].map(read), [-3, -2, -1, 0, 1, 2], t.name);
  }
});

test('every dtype, multi-dimensional and empty tensors, no metadata', () => {
  const header = {
    a: { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 12] },
    z: { dtype: 'F8_E4M3', shape: [0, 7], data_offsets: [12, 12] },
    s: { dtype: 'F64', shape: [], data_offsets: [12, 20] },
    c: { dtype: 'F4', shape: [3, 2], data_offsets: [20, 23] },
    e: { dtype: 'F8_E5M2', shape: [1], data_offsets: [23, 24] },
    q: { dtype: 'U64', shape: [1], data_offsets: [24, 32] },
    t: { dtype: 'BOOL', shape: [4], data_offsets: [32, 36] },
    __proto__x: { dtype: 'I64', shape: [1], data_offsets: [36, 44] },
  };
  const m = parseSafetensors(st(header, 44));
  assert.deepEqual(m.metadata, {});
  const headerEnd = st(header).length;
  assert.equal(m.dataOffset, headerEnd);
  assert.deepEqual(
    m.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset - headerEnd, t.bytes]),
    [
      ['a', 'BF16', [2, 3], 0, 12],
      ['z', 'F8_E4M3', [0, 7], 12, 0],
      ['s', 'F64', [], 12, 8],
      ['c', 'F4', [3, 2], 20, 3],
      ['e', 'F8_E5M2', [1], 23, 1],
      ['q', 'U64', [1], 24, 8],
      ['t', 'BOOL', [4], 32, 4],
      ['__proto__x', 'I64', [1], 36, 8],
    ],
  );
});

/*
 * Every dtype of the format with its size in bits, written from the reference implementation's `Dtype::bitsize`
 * (safetensors/src/tensor.rs), not from SAFETENSORS_DTYPE_BITS. Sub-byte types are packed: bytes = elements × bits / 8.
 */
const REFERENCE_BITS: Record<string, number> = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

test('every dtype of the current format, with its byte-size rule', () => {
  assert.deepEqual(Object.keys(SAFETENSORS_DTYPE_BITS).sort(), Object.keys(REFERENCE_BITS).sort());
  // One tensor per dtype, shaped so that the sub-byte types come out whole: 8 elements (F6: 8 × 6 = 48 bits = 6 bytes).
  const header: Record<string, object> = {};
  const expected: [string, string, number][] = [];
  let at = 0;
  for (const [dtype, bits] of Object.entries(REFERENCE_BITS)) {
    const bytes = (2 * 4 * bits) / 8;
    header[`t_${dtype}`] = { dtype, shape: [2, 4], data_offsets: [at, at + bytes] };
    expected.push([`t_${dtype}`, dtype, bytes]);
    at += bytes;
  }
  const m = parseSafetensors(st(header, at));
  assert.deepEqual(
    m.tensors.map((t) => [t.name, t.dtype, t.bytes]),
    expected,
  );
  assert.ok(m.tensors.every((t) => t.unknownType === undefined));

  // Hostile headers for the new dtypes: lengths that are not whole bytes, and lengths that disagree with the shape.
  for (const [dtype, shape, len] of [
    ['F4', [3], 2], // 12 bits
    ['F4', [1], 1], // 4 bits
    ['F6_E2M3', [3], 3], // 18 bits
    ['F6_E3M2', [5, 1], 4], // 30 bits
    ['F6_E2M3', [4], 4], // 24 bits = 3 bytes, not 4
    ['F4', [4], 1], // 2 bytes, not 1
    ['F8_E4M3', [3], 2],
    ['F8_E5M2', [2], 3],
    ['F8_E8M0', [1, 1], 0],
    ['F8_E4M3FNUZ', [2], 1],
    ['F8_E5M2FNUZ', [0], 1],
  ] as const) {
    throwsCode(() => parseSafetensors(st({ a: { dtype, shape, data_offsets: [0, len] } }, len)), 'ERR_MODEL_RANGE');
  }
});

test('a dtype this library does not know: listed with its byte range, flagged, still covering the data', async () => {
  const header = {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    n: { dtype: 'F3_E1M1', shape: [3, 5], data_offsets: [8, 14] }, // whatever its rule, the range says 6 bytes
    z: { dtype: 'U8', shape: [2], data_offsets: [14, 16] },
  };
  const bytes = st(header, Buffer.from(Array.from({ length: 16 }, (_, i) => i * 7)));
  const m = parseSafetensors(bytes);
  const n = m.tensors.find((t) => t.name === 'n');
  assert.deepEqual(n, { name: 'n', dtype: 'F3_E1M1', shape: [3, 5], offset: m.dataOffset + 8, bytes: 6, unknownType: true });
  assert.equal(m.tensors.find((t) => t.name === 'a')?.unknownType, undefined);
  // Its range still takes part in the cover checks.
  throwsCode(() => parseSafetensors(st({ ...header, n: { ...header.n, data_offsets: [8, 13] } }, 16)), 'ERR_MODEL_RANGE');
  throwsCode(() => parseSafetensors(st({ ...header, n: { ...header.n, data_offsets: [8, 17] } }, 16)), 'ERR_MODEL_RANGE');
  // inspect() agrees with the pure parser.
  const p = write('unknown-dtype.safetensors', bytes);
  assert.deepEqual(
    (await inspect(p)).tensors.find((t) => t.name === 'n'),
    { ...n, file: p },
  );
});

test('an empty header and a tensor named __proto__ parse', () => {
  assert.deepEqual(parseSafetensors(st('{}')).tensors, []);
  const m = parseSafetensors(st('{"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1));
  assert.equal(m.tensors[0]?.name, '__proto__');
});

test('the header may be padded with spaces', () => {
  const header = '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}      ';
  const m = parseSafetensors(st(header, 2));
  assert.equal(m.tensors[0]?.offset, 8 + header.length);
});

test('hardening: each malformed safetensors header is refused with its code', () => {
  const big = Buffer.alloc(16);
  big.writeBigUInt64LE(2n ** 63n);
  big.write('{}', 8);
  throwsCode(() => parseSafetensors(big), 'ERR_MODEL_HEADER'); // header length 2^63
  const long = st('{}');
  long.writeBigUInt64LE(1000n);
  throwsCode(() => parseSafetensors(long), 'ERR_MODEL_TRUNCATED'); // length past the end, under the cap
  throwsCode(() => parseSafetensors(st('{}').subarray(0, 5)), 'ERR_MODEL_TRUNCATED');
  throwsCode(() => parseSafetensors(st('{}'), { fileSize: 100 }), 'ERR_MODEL_RANGE'); // data nobody covers
  throwsCode(() => parseSafetensors(st('{"a":1,}')), 'ERR_MODEL_HEADER'); // bad JSON
  throwsCode(() => parseSafetensors(st('[1]')), 'ERR_MODEL_HEADER'); // not an object
  throwsCode(() => parseSafetensors(st('{"a":')), 'ERR_MODEL_HEADER');
  const ok = { dtype: 'U8', shape: [2], data_offsets: [0, 2] };
  throwsCode(() => parseSafetensors(st({ a: { ...ok, data_offsets: [0, 4] } }, 2)), 'ERR_MODEL_RANGE'); // past the end
  throwsCode(() => parseSafetensors(st({ a: { ...ok, data_offsets: [2, 0] } }, 2)), 'ERR_MODEL_RANGE'); // end < begin
  throwsCode(() => parseSafetensors(st('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,18446744073709551616]}}', 2)), 'ERR_MODEL_RANGE');
  throwsCode(() => parseSafetensors(st({ a: ok, b: { ...ok, data_offsets: [1, 3] } }, 3)), 'ERR_MODEL_RANGE'); // overlap
  throwsCode(() => parseSafetensors(st({ a: ok, b: { ...ok, data_offsets: [3, 5] } }, 5)), 'ERR_MODEL_RANGE'); // hole
  throwsCode(() => parseSafetensors(st({ a: ok }, 3)), 'ERR_MODEL_RANGE'); // trailing bytes
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: [3] } }, 2)), 'ERR_MODEL_RANGE'); // shape vs range
  throwsCode(() => parseSafetensors(st({ a: { ...ok, dtype: 'F32' } }, 2)), 'ERR_MODEL_RANGE');
  throwsCode(() => parseSafetensors(st({ a: { dtype: 'F4', shape: [3], data_offsets: [0, 2] } }, 2)), 'ERR_MODEL_RANGE'); // 12 bits
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: [2 ** 53, 2 ** 53] } }, 2)), 'ERR_MODEL_HEADER'); // unsafe dim
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: [-2] } }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: [1.5] } }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: ['2'] } }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ a: { ...ok, shape: 2 } }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ a: { ...ok, data_offsets: [0] } }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ a: { ...ok, data_offsets: [-1, 1] } }, 2)), 'ERR_MODEL_HEADER');
  // A dtype this library does not know is tolerated (see the unknown-dtype test), but it must look like a name.
  for (const dtype of ['', '1F', 'F 8', 'F8-E4M3', 'x'.repeat(33), '\u00e9', 'F8\n']) {
    throwsCode(() => parseSafetensors(st({ a: { ...ok, dtype } }, 2)), 'ERR_MODEL_HEADER');
  }
  throwsCode(() => parseSafetensors(st({ a: 7 }, 2)), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ __metadata__: { n: 1 } })), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st({ __metadata__: ['x'] })), 'ERR_MODEL_HEADER');
  throwsCode(() => parseSafetensors(st(' {}')), 'ERR_MODEL_HEADER'); // must start with "{"
  throwsCode(() => parseSafetensors(st('{')), 'ERR_MODEL_HEADER');
});

test('hardening: duplicate names, at any depth and through escapes', () => {
  const t = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}';
  const u = '{"dtype":"U8","shape":[1],"data_offsets":[1,2]}';
  throwsCode(() => parseSafetensors(st(`{"a":${t},"a":${u}}`, 2)), 'ERR_MODEL_DUPLICATE');
  throwsCode(() => parseSafetensors(st(`{"a":${t},"\\u0061":${u}}`, 2)), 'ERR_MODEL_DUPLICATE');
  throwsCode(() => parseSafetensors(st(`{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}`, 1)), 'ERR_MODEL_DUPLICATE');
  throwsCode(() => parseSafetensors(st(`{"__metadata__":{"k":"1","k":"2"}}`)), 'ERR_MODEL_DUPLICATE');
  // Same names in different objects, and quotes or braces inside strings, are not duplicates.
  const m = parseSafetensors(st(`{"__metadata__":{"a":"}\\"{,","b":"a"},"a":${t},"b\\"":${u}}`, 2));
  assert.deepEqual(
    m.tensors.map((x) => x.name),
    ['a', 'b"'],
  );
});

test('hardening: names that are not UTF-8', () => {
  const bad = Buffer.concat([Buffer.from('{"'), Buffer.from([0xff, 0xfe]), Buffer.from('":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')]);
  throwsCode(() => parseSafetensors(st(bad, 1)), 'ERR_MODEL_UTF8');
  throwsCode(() => parseSafetensors(st('{"\\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1)), 'ERR_MODEL_UTF8');
  throwsCode(() => parseSafetensors(st('{"__metadata__":{"k":"\\udc00"}}')), 'ERR_MODEL_UTF8');
  // A surrogate pair spelled with escapes is fine.
  assert.equal(parseSafetensors(st('{"\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1)).tensors[0]?.name, '😀');
});

test('parseModel tells the formats apart and refuses others', () => {
  assert.equal(parseModel(st('{}')).format, 'safetensors');
  throwsCode(() => parseModel(Buffer.from('hello, world')), 'ERR_MODEL_FORMAT');
  throwsCode(() => parseModel(Buffer.alloc(0)), 'ERR_MODEL_FORMAT');
  assert.throws(() => parseModel(st('{}'), { fileSize: 3 }), { code: 'ERR_OUT_OF_RANGE', name: 'RangeError' });
  assert.throws(() => parseModel('GGUF' as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('inspect refuses bad arguments and reports the path', async () => {
  await assert.rejects(inspect(42 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(inspect(''), { code: 'ERR_INVALID_ARG_VALUE' });
  await assert.rejects(inspect(join(dir, 'missing.safetensors')), { code: 'ENOENT' });
  const p = write('text.bin', Buffer.from('just some text'));
  await rejectsCode(inspect(p), 'ERR_MODEL_FORMAT', p);
  const cut = write('cut.safetensors', st({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, 4).subarray(0, 30));
  await rejectsCode(inspect(cut), 'ERR_MODEL_TRUNCATED', cut);
});

test('inspect reads a header larger than its first read, and not the data', async () => {
  const header: Record<string, object> = {};
  for (let i = 0; i < 4000; i++) header[`layer.${i}.weight`] = { dtype: 'F32', shape: [256, 256], data_offsets: [i * 262144, (i + 1) * 262144] };
  const head = st(header);
  assert.ok(head.length > 200_000);
  const p = write('big.safetensors', head);
  truncateSync(p, head.length + 4000 * 262144); // ~1 GiB, sparse: reading it would show
  const t0 = performance.now();
  const info = await inspect(p);
  assert.ok(performance.now() - t0 < 2000);
  assert.equal(info.tensors.length, 4000);
  assert.equal(info.tensors[3999]?.offset, head.length + 3999 * 262144);
});

test('a safetensors index brings in every shard, each tensor with its file', async () => {
  const sub = mkdtempSync(join(dir, 'index-'));
  const a = st(
    { __metadata__: { format: 'pt' }, x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, y: { dtype: 'U8', shape: [1], data_offsets: [8, 9] } },
    9,
  );
  const b = st({ z: { dtype: 'BF16', shape: [3, 1], data_offsets: [0, 6] } }, 6);
  writeFileSync(join(sub, 'model-00001-of-00002.safetensors'), a);
  writeFileSync(join(sub, 'model-00002-of-00002.safetensors'), b);
  const index = (weightMap: object, extra: object = {}) => {
    const p = join(sub, 'model.safetensors.index.json');
    writeFileSync(p, JSON.stringify({ metadata: { total_size: 23 }, ...extra, weight_map: weightMap }));
    return p;
  };
  const good = { x: 'model-00001-of-00002.safetensors', z: 'model-00002-of-00002.safetensors', y: 'model-00001-of-00002.safetensors' };
  const info = await inspect(index(good));
  assert.equal(info.format, 'safetensors');
  assert.deepEqual(info.metadata, { total_size: 23 });
  assert.deepEqual(
    info.tensors.map((t) => [t.name, t.dtype, t.shape, t.bytes, t.file]),
    [
      ['x', 'F32', [2], 8, join(sub, 'model-00001-of-00002.safetensors')],
      ['y', 'U8', [1], 1, join(sub, 'model-00001-of-00002.safetensors')],
      ['z', 'BF16', [3, 1], 6, join(sub, 'model-00002-of-00002.safetensors')],
    ],
  );
  assert.equal(info.tensors[2]?.offset, b.length - 6);

  const ip = index(good);
  await rejectsCode(inspect(index({ ...good, y: 'model-00002-of-00002.safetensors' })), 'ERR_MODEL_HEADER'); // misplaced
  await rejectsCode(inspect(index({ x: '../escape.safetensors' })), 'ERR_MODEL_HEADER', ip);
  await rejectsCode(inspect(index({ x: '/etc/passwd' })), 'ERR_MODEL_HEADER', ip);
  await rejectsCode(inspect(index({ x: 7 })), 'ERR_MODEL_HEADER', ip);
  await rejectsCode(inspect(index(good, { metadata: 'x' })), 'ERR_MODEL_HEADER', ip);
  await assert.rejects(inspect(index({ x: 'missing.safetensors' })), { code: 'ENOENT' });
  writeFileSync(join(sub, 'copy.safetensors'), a);
  await rejectsCode(inspect(index({ x: 'model-00001-of-00002.safetensors', y: 'copy.safetensors' })), 'ERR_MODEL_DUPLICATE');
  writeFileSync(ip, '{"weight_map":{"x":"a","x":"b"}}');
  await rejectsCode(inspect(ip), 'ERR_MODEL_DUPLICATE', ip);
  writeFileSync(ip, '{"weight_map":');
  await rejectsCode(inspect(ip), 'ERR_MODEL_HEADER', ip);
  writeFileSync(ip, '{"tensors":{}}');
  await rejectsCode(inspect(ip), 'ERR_MODEL_FORMAT', ip);
  writeFileSync(ip, Buffer.from([0x7b, 0xff, 0x7d]));
  await rejectsCode(inspect(ip), 'ERR_MODEL_UTF8', ip);
});

test('no file descriptor leaks, whether inspect succeeds or fails', async () => {
  const good = write('fd-good.safetensors', st({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, 1));
  const bad = write('fd-bad.safetensors', st({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 1] } }, 1));
  const text = write('fd-text.bin', Buffer.from('not a model file at all'));
  const fds = () => readdirSync('/proc/self/fd').length;
  await inspect(good); // warm up whatever the runtime opens once
  const before = fds();
  for (let i = 0; i < 50; i++) {
    await inspect(good);
    await assert.rejects(inspect(bad));
    await assert.rejects(inspect(text));
  }
  assert.equal(fds(), before);
});
