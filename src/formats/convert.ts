/**
 * Tensor values as float32, for the dtypes JavaScript has no typed array for (F16 without Float16Array, BF16, the
 * F8 types) and the others alike: pure, no I/O. Bytes are little-endian, as in safetensors and GGUF files.
 *
 * The F8 types follow the OCP 8-bit floating point specification and PyTorch's names: F8_E4M3 (e4m3fn: bias 7, no
 * infinities, S.1111.111 is NaN), F8_E5M2 (IEEE-like: bias 15, infinities and NaNs), F8_E4M3FNUZ and F8_E5M2FNUZ
 * (bias 8 and 16, no infinities, no negative zero: 0x80 is NaN), F8_E8M0 (a power of two 2^(e-127), 0xFF is NaN).
 */
import { outOfRange } from '../core/errors.js';

/** The dtypes {@link toFloat32} converts. */
export const FLOAT_CONVERTIBLE: readonly string[] = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'F8_E4M3',
  'F8_E5M2',
  'F8_E4M3FNUZ',
  'F8_E5M2FNUZ',
  'F8_E8M0',
  'I8',
  'U8',
  'I16',
  'U16',
  'I32',
  'U32',
  'I64',
  'U64',
  'BOOL',
];

const WIDTH: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I8: 1, U8: 1, I16: 2, U16: 2, I32: 4, U32: 4, I64: 8, U64: 8, BOOL: 1 };

/** A minifloat with `e` exponent bits, `m` mantissa bits and `bias` (subnormals when the exponent field is 0). */
function minifloat(code: number, e: number, m: number, bias: number): number {
  const sign = code >> (e + m) ? -1 : 1;
  const exp = (code >> m) & ((1 << e) - 1);
  const man = code & ((1 << m) - 1);
  if (exp === 0) return sign * man * 2 ** (1 - bias - m);
  return sign * (1 + man / 2 ** m) * 2 ** (exp - bias);
}

const tables = new Map<string, Float32Array>();

/** The float32 of every code of an 8- or 16-bit float type, made once. */
function table(dtype: string): Float32Array {
  let t = tables.get(dtype);
  if (t) return t;
  const n = dtype === 'F16' ? 65536 : 256;
  t = new Float32Array(n);
  for (let c = 0; c < n; c++) {
    let v: number;
    switch (dtype) {
      case 'F16':
        v = ((c >> 10) & 0x1f) === 0x1f ? (c & 0x3ff ? NaN : c & 0x8000 ? -Infinity : Infinity) : minifloat(c, 5, 10, 15);
        break;
      case 'F8_E4M3':
        v = (c & 0x7f) === 0x7f ? NaN : minifloat(c, 4, 3, 7);
        break;
      case 'F8_E5M2':
        v = ((c >> 2) & 0x1f) === 0x1f ? (c & 3 ? NaN : c & 0x80 ? -Infinity : Infinity) : minifloat(c, 5, 2, 15);
        break;
      case 'F8_E4M3FNUZ':
        v = c === 0x80 ? NaN : minifloat(c, 4, 3, 8);
        break;
      case 'F8_E5M2FNUZ':
        v = c === 0x80 ? NaN : minifloat(c, 5, 2, 16);
        break;
      default: // F8_E8M0
        v = c === 0xff ? NaN : 2 ** (c - 127);
    }
    t[c] = v;
  }
  tables.set(dtype, t);
  return t;
}

/**
 * The values of `bytes` (a tensor's data, little-endian) as float32: into `out` when given (its length must be the
 * element count: ERR_OUT_OF_RANGE otherwise), else a new array. Undefined for a dtype it does not convert (quantized
 * ggml blocks, strings): {@link FLOAT_CONVERTIBLE} lists those it does. 64-bit integers beyond 2^24 and F64 values
 * round to the nearest float32, as a cast does.
 */
export function toFloat32(dtype: string, bytes: Uint8Array, out?: Float32Array): Float32Array | undefined {
  if (!FLOAT_CONVERTIBLE.includes(dtype)) return undefined;
  const width = WIDTH[dtype] ?? 1;
  const n = Math.floor(bytes.byteLength / width);
  if (out !== undefined && out.length !== n) throw outOfRange('out.length', `${n} (the tensor's element count)`, out.length);
  const dst = out ?? new Float32Array(n);
  // Typed arrays need aligned offsets: copy the (rare) unaligned tensor once.
  const src = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  if (width === 1) {
    if (dtype.startsWith('F8')) {
      const t = table(dtype);
      for (let i = 0; i < n; i++) dst[i] = t[src[i]!]!;
    } else if (dtype === 'I8') {
      const v = new Int8Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = v[i]!;
    } else for (let i = 0; i < n; i++) dst[i] = src[i]!;
    return dst;
  }
  switch (dtype) {
    case 'F16': {
      const t = table('F16');
      const v = new Uint16Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = t[v[i]!]!;
      break;
    }
    case 'BF16': {
      // bfloat16 is the top half of a float32.
      const v = new Uint16Array(src.buffer, src.byteOffset, n);
      const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) bits[i] = v[i]! << 16;
      break;
    }
    case 'F32':
      dst.set(new Float32Array(src.buffer, src.byteOffset, n));
      break;
    case 'F64':
      dst.set(new Float64Array(src.buffer, src.byteOffset, n));
      break;
    case 'I16':
      dst.set(new Int16Array(src.buffer, src.byteOffset, n));
      break;
    case 'U16':
      dst.set(new Uint16Array(src.buffer, src.byteOffset, n));
      break;
    case 'I32':
      dst.set(new Int32Array(src.buffer, src.byteOffset, n));
      break;
    case 'U32':
      dst.set(new Uint32Array(src.buffer, src.byteOffset, n));
      break;
    case 'I64': {
      const v = new BigInt64Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = Number(v[i]!);
      break;
    }
    default: {
      const v = new BigUint64Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = Number(v[i]!);
    }
  }
  return dst;
}
