/**
 * toFloat32(): F16, BF16, the F8 types, F32/F64 and the integer types as float32 values, checked bit for bit against
 * PyTorch's own conversion of every code (all 65 536 of the 16-bit types, all 256 of the 8-bit ones): the oracle is
 * torch, never this library. Without a Python with torch the exhaustive part is skipped (CI requires it), and a few
 * values from the formats' specifications are checked anyway.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadModel } from '../../src/index.js';
import { FLOAT_CONVERTIBLE, toFloat32 } from '../../src/formats/convert.js';
import { tempDir } from '../helpers.js';
import { PYTHON, pythonEnv } from '../share/python.js';
import { writeFileSync } from 'node:fs';

/** torch's dtype for each safetensors dtype that torch has. */
const TORCH: Record<string, string> = {
  F16: 'float16',
  BF16: 'bfloat16',
  F8_E4M3: 'float8_e4m3fn',
  F8_E5M2: 'float8_e5m2',
  F8_E4M3FNUZ: 'float8_e4m3fnuz',
  F8_E5M2FNUZ: 'float8_e5m2fnuz',
  F8_E8M0: 'float8_e8m0fnu',
};

const torchMissing = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8', env: pythonEnv() });
  return r.status === 0 ? undefined : `${PYTHON} has no torch (${(r.stderr || String(r.error)).trim().split('\n').at(-1)})`;
})();

/** Every code of a dtype as little-endian bytes. */
function allCodes(dtype: string): Uint8Array {
  const width = dtype.startsWith('F8') ? 1 : 2;
  const n = 2 ** (8 * width);
  const out = new Uint8Array(n * width);
  for (let i = 0; i < n; i++) {
    out[i * width] = i & 0xff;
    if (width === 2) out[i * width + 1] = i >> 8;
  }
  return out;
}

/** torch's float32 bits for every code of `dtype`. */
function torchFloat32(dtype: string, codes: Uint8Array, dir: string): Uint32Array {
  const input = join(dir, `${dtype}.in`);
  const output = join(dir, `${dtype}.out`);
  writeFileSync(input, codes);
  const py = `import torch, sys
raw = open(sys.argv[1], 'rb').read()
t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(getattr(torch, sys.argv[3])).to(torch.float32)
open(sys.argv[2], 'wb').write(t.numpy().tobytes())`;
  const r = spawnSync(PYTHON, ['-c', py, input, output, TORCH[dtype]!], { encoding: 'utf8', env: pythonEnv() });
  assert.equal(r.status, 0, r.stderr);
  const bytes = new Uint8Array(spawnSync('cat', [output], { maxBuffer: 1 << 24 }).stdout);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

describe('toFloat32', () => {
  test('every code of F16, BF16 and the F8 types equals torch .to(float32), bit for bit (NaN as NaN)', (t) => {
    if (torchMissing) {
      if (process.env.DMALOAD_PYTHON_REQUIRED === '1') assert.fail(torchMissing);
      return t.skip(torchMissing);
    }
    const { dir, cleanup } = tempDir();
    try {
      for (const dtype of Object.keys(TORCH)) {
        const codes = allCodes(dtype);
        const want = torchFloat32(dtype, codes, dir);
        const got = toFloat32(dtype, codes);
        assert.ok(got, dtype);
        const bits = new Uint32Array(got.buffer, got.byteOffset, got.length);
        assert.equal(got.length, want.length, dtype);
        for (let i = 0; i < want.length; i++) {
          const nan = Number.isNaN(got[i]!) && Number.isNaN(new Float32Array(want.buffer, want.byteOffset + 4 * i, 1)[0]!);
          if (!nan && bits[i] !== want[i])
            assert.fail(`${dtype} code 0x${i.toString(16)}: got ${got[i]} (0x${bits[i]!.toString(16)}), torch 0x${want[i]!.toString(16)}`);
        }
      }
    } finally {
      cleanup();
    }
  });

  test('values from the specifications; F32, F64, integers; into a caller array; unaligned bytes; refusals', () => {
    const f16 = toFloat32('F16', new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x7c]))!;
    assert.deepEqual([...f16], [1, -2, 65504, 2 ** -24, Infinity]);
    assert.deepEqual([...toFloat32('BF16', new Uint8Array([0x80, 0x3f, 0x00, 0xc0]))!], [1, -2]);
    assert.deepEqual([...toFloat32('F8_E4M3', new Uint8Array([0x38, 0x7e, 0x01]))!], [1, 448, 2 ** -9]);
    assert.ok(Number.isNaN(toFloat32('F8_E4M3', new Uint8Array([0x7f]))![0]!));
    assert.deepEqual([...toFloat32('F8_E5M2', new Uint8Array([0x3c, 0x7b, 0x7c]))!], [1, 57344, Infinity]);
    assert.deepEqual([...toFloat32('I16', new Uint8Array([0xff, 0xff, 0x02, 0x00]))!], [-1, 2]);
    assert.deepEqual([...toFloat32('U8', new Uint8Array([0, 255]))!], [0, 255]);
    assert.deepEqual([...toFloat32('F64', new Uint8Array(new Float64Array([1.5, -3]).buffer))!], [1.5, -3]);
    // Unaligned: a 2-byte type at an odd offset.
    const odd = new Uint8Array(5).subarray(1);
    odd.set([0x00, 0x3c, 0x00, 0x40]);
    assert.deepEqual([...toFloat32('F16', odd)!], [1, 2]);
    const out = new Float32Array(2);
    assert.equal(toFloat32('BF16', new Uint8Array([0x80, 0x3f, 0x80, 0x3f]), out), out);
    assert.deepEqual([...out], [1, 1]);
    assert.throws(() => toFloat32('BF16', new Uint8Array(4), new Float32Array(3)), { code: 'ERR_OUT_OF_RANGE' });
    assert.equal(toFloat32('Q4_K', new Uint8Array(4)), undefined);
    for (const d of ['F16', 'BF16', 'F8_E4M3', 'F8_E5M2', 'F32']) assert.ok(FLOAT_CONVERTIBLE.includes(d), d);
  });

  test("a loaded BF16 tensor's toFloat32() gives its values (what the README's quick start prints)", async () => {
    const { dir, cleanup } = tempDir();
    try {
      const data = new Uint8Array([0x80, 0x3f, 0x00, 0xc0, 0x40, 0x40, 0x00, 0x00]); // 1, -2, 3, 0
      const header = Buffer.from(JSON.stringify({ w: { dtype: 'BF16', shape: [2, 2], data_offsets: [0, 8] } }).padEnd(64, ' '));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      const path = join(dir, 'bf16.safetensors');
      writeFileSync(path, Buffer.concat([len, header, data]));
      const m = await loadModel(path);
      try {
        const w = m.tensors.get('w')!;
        assert.equal(w.asTypedArray(), undefined, 'no typed array for BF16');
        assert.deepEqual([...w.toFloat32()], [1, -2, 3, 0]);
      } finally {
        m.close();
      }
    } finally {
      cleanup();
    }
  });
});
