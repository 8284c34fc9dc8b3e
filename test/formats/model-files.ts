/** Model files written by hand for the model tests (safetensors by hand, GGUF with ../gguf-writer.ts). */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { encodeGgufHeader, type GgufTypedValue } from '../gguf-writer.js';
import type { LoadedModel } from '../../src/index.js';
import { sha256 } from '../helpers.js';

export interface Spec {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
  /** GGUF: the ggml type id to write, for types the writer's table lacks (or that no table has). */
  typeId?: number;
}

/** The bytes of a typed array, as the file holds them (little-endian host). */
export const raw = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

/**
 * Writes a safetensors file by hand: u64 LE header length, JSON header (padded with spaces to `pad`, as the reference
 * writer pads to 8), the tensors' data back to back in the given order.
 */
export function writeSafetensors(path: string, tensors: Spec[], opts: { metadata?: Record<string, string>; pad?: number } = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (opts.metadata) header.__metadata__ = opts.metadata;
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  let json = JSON.stringify(header);
  const pad = opts.pad ?? 8;
  while ((8 + json.length) % pad !== 0) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const file = Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => t.data)]);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, file);
  return file;
}

const GGML_ID: Record<string, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, I8: 24, I16: 25, I32: 26, I64: 27, F64: 28, BF16: 30 };

/** Writes a GGUF file with the gguf writer: header, then each tensor's data at the next multiple of `alignment`. */
export function writeGguf(path: string, tensors: Spec[], opts: { alignment?: number; metadata?: [string, GgufTypedValue][] } = {}): Buffer {
  const alignment = opts.alignment ?? 32;
  const metadata: [string, GgufTypedValue][] = [['general.architecture', { type: 'STRING', value: 'test' }], ...(opts.metadata ?? [])];
  if (alignment !== 32) metadata.push(['general.alignment', { type: 'UINT32', value: alignment }]);
  const offsets: number[] = [];
  let at = 0;
  for (const t of tensors) {
    offsets.push(at);
    at = Math.ceil((at + t.data.length) / alignment) * alignment;
  }
  const head = encodeGgufHeader({
    metadata,
    tensors: tensors.map((t, i) => ({ name: t.name, dims: t.shape, type: t.typeId ?? GGML_ID[t.dtype]!, offset: offsets[i]! })),
    alignment,
  });
  const file = Buffer.alloc(head.length + at);
  file.set(head, 0);
  tensors.forEach((t, i) => file.set(t.data, head.length + offsets[i]!));
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, file);
  return file;
}

/** Every tensor's bytes equal the file's slice at its reported offset (by hash), and keep the file's alignment. */
export function assertSlices(model: LoadedModel, files: Map<string, Buffer> | Buffer): void {
  for (const t of model.tensors.values()) {
    const file = files instanceof Map ? files.get(t.file) : files;
    assert.ok(file, `no file ${t.file}`);
    assert.equal(t.bytes.length, t.byteLength, t.name);
    assert.equal(sha256(t.bytes), sha256(file.subarray(t.offset, t.offset + t.byteLength)), `${t.name}: bytes differ from the file slice`);
    if (t.byteLength > 0) assert.equal(t.bufferOffset % 4096, t.offset % 4096, `${t.name}: file alignment kept`);
  }
}
