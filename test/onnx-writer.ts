/**
 * A minimal ONNX writer for tests and benches: protobuf encoding of ModelProto, GraphProto, NodeProto, TensorProto
 * (inline raw_data or external data: data_location = EXTERNAL with location/offset/length entries) and
 * ValueInfoProto, field numbers from onnx/onnx.proto. Only what a float32 MatMul/Gemm graph needs; no Python.
 */
import { closeSync, fsyncSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** TensorProto.DataType values used here. */
export const ONNX_FLOAT = 1;

// ---- protobuf wire format -------------------------------------------------------------------------------------

const VARINT = 0;
const LEN = 2;
const FIXED32 = 5;

class Writer {
  private chunks: Uint8Array[] = [];
  private size = 0;

  private push(b: Uint8Array): void {
    this.chunks.push(b);
    this.size += b.length;
  }

  /** An unsigned varint of any non-negative integer up to 2^63 (bigint) or 2^53 (number). */
  private varint(v: number | bigint): void {
    let x = BigInt(v);
    if (x < 0n) x += 1n << 64n; // int64 negatives are ten-byte two's complement
    const out: number[] = [];
    do {
      let b = Number(x & 0x7fn);
      x >>= 7n;
      if (x) b |= 0x80;
      out.push(b);
    } while (x);
    this.push(Uint8Array.from(out));
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, v: number | bigint): this {
    this.key(field, VARINT);
    this.varint(v);
    return this;
  }

  float(field: number, v: number): this {
    this.key(field, FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.key(field, LEN);
    this.varint(b.length);
    this.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, m: Writer): this {
    return this.bytes(field, m.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

// ---- ONNX messages -----------------------------------------------------------------------------------------------

/** An initializer: inline bytes (`raw`), or a range of an external data file (`external`). */
export interface OnnxTensor {
  name: string;
  dims: number[];
  dataType?: number; // default ONNX_FLOAT
  raw?: Uint8Array;
  external?: { location: string; offset: number; length: number };
}

export interface OnnxNode {
  opType: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  /** Integer and float attributes (e.g. Gemm's transB = 1, alpha = 1.0). */
  attributes?: Record<string, { int: number } | { float: number }>;
}

/** A graph input or output: a float tensor of fixed dims (a string is a symbolic dim). */
export interface OnnxValue {
  name: string;
  dims: (number | string)[];
  elemType?: number; // default ONNX_FLOAT
}

export interface OnnxModel {
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValue[];
  outputs: OnnxValue[];
  irVersion?: number; // default 9
  opset?: number; // default 17 (default domain)
  graphName?: string;
}

function tensorProto(t: OnnxTensor): Writer {
  const w = new Writer();
  for (const d of t.dims) w.int(1, d); // dims (repeated int64, unpacked as proto2 writes it)
  w.int(2, t.dataType ?? ONNX_FLOAT); // data_type
  w.string(8, t.name); // name
  if (t.raw && t.external) throw new Error(`tensor ${t.name}: raw or external, not both`);
  if (t.raw) w.bytes(9, t.raw); // raw_data
  if (t.external) {
    const entry = (k: string, v: string) => new Writer().string(1, k).string(2, v);
    w.message(13, entry('location', t.external.location)); // external_data (StringStringEntryProto)
    w.message(13, entry('offset', String(t.external.offset)));
    w.message(13, entry('length', String(t.external.length)));
    w.int(14, 1); // data_location = EXTERNAL
  }
  return w;
}

function nodeProto(n: OnnxNode): Writer {
  const w = new Writer();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name) w.string(3, n.name);
  w.string(4, n.opType);
  for (const [name, v] of Object.entries(n.attributes ?? {})) {
    const a = new Writer().string(1, name); // AttributeProto.name
    if ('int' in v)
      a.int(3, v.int).int(20, 2); // i, type = INT
    else a.float(2, v.float).int(20, 1); // f, type = FLOAT
    w.message(5, a);
  }
  return w;
}

function valueInfoProto(v: OnnxValue): Writer {
  const shape = new Writer();
  for (const d of v.dims) shape.message(1, typeof d === 'number' ? new Writer().int(1, d) : new Writer().string(2, d));
  const tensorType = new Writer().int(1, v.elemType ?? ONNX_FLOAT).message(2, shape);
  const type = new Writer().message(1, tensorType);
  return new Writer().string(1, v.name).message(2, type);
}

/** The serialized ModelProto (the .onnx file's bytes). */
export function encodeModel(m: OnnxModel): Uint8Array {
  const graph = new Writer();
  for (const n of m.nodes) graph.message(1, nodeProto(n));
  graph.string(2, m.graphName ?? 'dmaload_test');
  for (const t of m.initializers) graph.message(5, tensorProto(t));
  for (const i of m.inputs) graph.message(11, valueInfoProto(i));
  for (const o of m.outputs) graph.message(12, valueInfoProto(o));
  const opset = new Writer().string(1, '').int(2, m.opset ?? 17);
  return new Writer()
    .int(1, m.irVersion ?? 9) // ir_version
    .string(2, 'dmaload-test') // producer_name
    .message(7, graph) // graph
    .message(8, opset) // opset_import
    .finish();
}

// ---- data ------------------------------------------------------------------------------------------------------

/**
 * `count` deterministic float32 values in [-1, 1) (xorshift32 from `seed`, 2^-23 steps: exact, finite, never NaN),
 * starting at element `from` of the sequence, so a file can be written in pieces that match one long array.
 */
export function seededFloats(count: number, seed: number, from = 0): Float32Array {
  const out = new Float32Array(count);
  // Each element is a pure function of (seed, index): pieces of any size give the same values.
  for (let i = 0; i < count; i++) {
    let x = (Math.imul((from + i) ^ seed, 0x9e3779b1) ^ 0x85ebca6b) >>> 0 || 1;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = (x >>> 8) / 2 ** 23 - 1;
  }
  return out;
}

/** What {@link writeGemmModel} wrote. */
export interface GemmModelFiles {
  /** The .onnx file (graph and the bias inline; the weight is external). */
  onnxPath: string;
  /** Its bytes, for InferenceSession.create(bytes, { externalData }). */
  onnx: Uint8Array;
  /** The external data file beside it (`model.onnx_data`): the weight W, float32, row-major [K, N]. */
  dataPath: string;
  /** The `location` the .onnx gives for W: the `path` an externalData entry must name. */
  dataLocation: string;
  weightBytes: number;
  bias: Float32Array;
  M: number;
  K: number;
  N: number;
}

/**
 * Writes `dir/model.onnx` and `dir/model.onnx_data`: Y = Gemm(X, W, C) (opset 17, ir_version 9), X float32 [M, K]
 * input, W float32 [K, N] the external initializer (offset 0 of model.onnx_data, length K·N·4), C float32 [N] inline
 * (raw_data). W's values are `seededFloats(K * N, seed)`, written in 16 MiB pieces and fsynced, so the file's pages are
 * clean and can be evicted.
 */
export function writeGemmModel(dir: string, dims: { M: number; K: number; N: number }, seed = 1): GemmModelFiles {
  const { M, K, N } = dims;
  const dataLocation = 'model.onnx_data';
  const weightBytes = K * N * 4;
  const bias = seededFloats(N, seed + 1);
  const onnx = encodeModel({
    nodes: [{ opType: 'Gemm', inputs: ['X', 'W', 'C'], outputs: ['Y'], name: 'gemm' }],
    initializers: [
      { name: 'W', dims: [K, N], external: { location: dataLocation, offset: 0, length: weightBytes } },
      { name: 'C', dims: [N], raw: new Uint8Array(bias.buffer, bias.byteOffset, bias.byteLength) },
    ],
    inputs: [{ name: 'X', dims: [M, K] }],
    outputs: [{ name: 'Y', dims: [M, N] }],
  });
  const onnxPath = join(dir, 'model.onnx');
  writeFileSync(onnxPath, onnx);
  const dataPath = join(dir, dataLocation);
  const fd = openSync(dataPath, 'w');
  try {
    const piece = 4 << 20; // floats (16 MiB)
    for (let i = 0; i < K * N; i += piece) {
      const f = seededFloats(Math.min(piece, K * N - i), seed, i);
      const b = new Uint8Array(f.buffer);
      for (let w = 0; w < b.length;) w += writeSync(fd, b, w);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { onnxPath, onnx, dataPath, dataLocation, weightBytes, bias, M, K, N };
}
