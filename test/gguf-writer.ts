/**
 * Writes GGUF headers (v2/v3, little-endian) from typed values: the inverse of ./gguf.ts, used to build test files
 * and fuzz seeds. It writes what it is given, valid or not (bytes for names let tests write invalid UTF-8).
 * @module
 */
import { GGUF_VALUE_TYPES } from '../src/formats/gguf.js';

export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPES, 'ARRAY' | 'STRING' | 'BOOL'>;

/** A metadata value with its GGUF type. Array elements all have `elementType` (nested arrays: 'ARRAY'). */
export type GgufTypedValue =
  | { type: GgufScalarType; value: number | bigint }
  | { type: 'BOOL'; value: boolean }
  | { type: 'STRING'; value: string | Uint8Array }
  | { type: 'ARRAY'; elementType: keyof typeof GGUF_VALUE_TYPES; value: GgufTypedValue[] };

export interface GgufTensorSpec {
  name: string | Uint8Array;
  /** ne0 first. */
  dims: (number | bigint)[];
  /** ggml type id. */
  type: number;
  /** Relative to the data section. */
  offset: number | bigint;
}

export interface GgufSpec {
  /** Default 3. */
  version?: number;
  metadata?: [key: string | Uint8Array, value: GgufTypedValue][];
  tensors?: GgufTensorSpec[];
  /** Pads the header to this multiple (default 32); `general.alignment` itself is up to `metadata`. */
  alignment?: number;
}

/** Encodes a GGUF header, padded to the alignment so the data section can follow directly. */
export function encodeGgufHeader(spec: GgufSpec): Uint8Array {
  const out: number[] = [];
  const push = (bytes: Uint8Array) => {
    for (const b of bytes) out.push(b);
  };
  const num = (size: number, set: (v: DataView) => void) => {
    const v = new DataView(new ArrayBuffer(size));
    set(v);
    push(new Uint8Array(v.buffer));
  };
  const u32 = (n: number) => num(4, (v) => v.setUint32(0, n, true));
  const u64 = (n: number | bigint) => num(8, (v) => v.setBigUint64(0, BigInt(n), true));
  const str = (s: string | Uint8Array) => {
    const bytes = typeof s === 'string' ? new TextEncoder().encode(s) : s;
    u64(bytes.length);
    push(bytes);
  };
  const payload = (t: GgufTypedValue) => {
    switch (t.type) {
      case 'UINT8':
        return num(1, (v) => v.setUint8(0, Number(t.value)));
      case 'INT8':
        return num(1, (v) => v.setInt8(0, Number(t.value)));
      case 'UINT16':
        return num(2, (v) => v.setUint16(0, Number(t.value), true));
      case 'INT16':
        return num(2, (v) => v.setInt16(0, Number(t.value), true));
      case 'UINT32':
        return num(4, (v) => v.setUint32(0, Number(t.value), true));
      case 'INT32':
        return num(4, (v) => v.setInt32(0, Number(t.value), true));
      case 'FLOAT32':
        return num(4, (v) => v.setFloat32(0, Number(t.value), true));
      case 'UINT64':
        return num(8, (v) => v.setBigUint64(0, BigInt(t.value), true));
      case 'INT64':
        return num(8, (v) => v.setBigInt64(0, BigInt(t.value), true));
      case 'FLOAT64':
        return num(8, (v) => v.setFloat64(0, Number(t.value), true));
      case 'BOOL':
        return num(1, (v) => v.setUint8(0, t.value ? 1 : 0));
      case 'STRING':
        return str(t.value);
      case 'ARRAY':
        u32(GGUF_VALUE_TYPES[t.elementType]);
        u64(t.value.length);
        for (const e of t.value) payload(e);
        return;
    }
  };

  const metadata = spec.metadata ?? [];
  const tensors = spec.tensors ?? [];
  push(new TextEncoder().encode('GGUF'));
  u32(spec.version ?? 3);
  u64(tensors.length);
  u64(metadata.length);
  for (const [key, value] of metadata) {
    str(key);
    u32(GGUF_VALUE_TYPES[value.type]);
    payload(value);
  }
  for (const t of tensors) {
    str(t.name);
    u32(t.dims.length);
    for (const d of t.dims) u64(d);
    u32(t.type);
    u64(t.offset);
  }
  const alignment = spec.alignment ?? 32;
  while (out.length % alignment !== 0) out.push(0);
  return Uint8Array.from(out);
}
