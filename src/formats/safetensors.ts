/**
 * safetensors: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area. Each JSON entry
 * but `__metadata__` is `{ dtype, shape, data_offsets: [begin, end] }` with offsets relative to the data area.
 * Validation follows the reference implementation: the tensors must cover the data area exactly, with no overlap
 * and no hole (so a file cannot hide a second payload), and each byte range must match shape × dtype size.
 * @module
 */
import {
  byOffset,
  checkWellFormed,
  decodeStrict,
  fileSizeOf,
  findDuplicateKey,
  isObject,
  modelError,
  q,
  type MetadataValue,
  type ParsedModel,
  type ParseOptions,
  type TensorInfo,
} from './common.js';

/** The largest header accepted, as in the reference implementation (a bound on the memory that JSON takes). */
export const SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024;

/**
 * Bits per element of every safetensors dtype, by the name the format writes (no prototype: 'toString' is no dtype).
 * From the reference implementation's `Dtype::bitsize` (safetensors/src/tensor.rs, 2026-05): the sub-byte types
 * (F4, F6_*) are packed, so a tensor's byte length is elements × bits / 8, which must come out whole.
 */
export const SAFETENSORS_DTYPE_BITS: Readonly<Record<string, number>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, number>, {
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
  }),
);

/** What an unknown dtype may look like: a short identifier (it ends up in messages, tables and dtype switches). */
const DTYPE_NAME = /^[A-Za-z][A-Za-z0-9_]{0,31}$/;

/**
 * Where the header of a safetensors file ends (8 + N), checked against the file size before anything is allocated.
 * `prefix` holds at least the file's first 8 bytes.
 * @throws DmaloadError ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER
 */
export function safetensorsHeaderEnd(prefix: Uint8Array, fileSize: number, path?: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw modelError('ERR_MODEL_TRUNCATED', `safetensors file of ${fileSize} bytes has no 8-byte header length`, path);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(SAFETENSORS_MAX_HEADER)) {
    throw modelError('ERR_MODEL_HEADER', `safetensors header length ${n} exceeds the ${SAFETENSORS_MAX_HEADER}-byte limit`, path);
  }
  if (n < 2n) throw modelError('ERR_MODEL_HEADER', `safetensors header length ${n} is too short for JSON`, path);
  if (8n + n > BigInt(fileSize)) {
    throw modelError('ERR_MODEL_TRUNCATED', `safetensors header length ${n} runs past the end of the ${fileSize}-byte file`, path);
  }
  return 8 + Number(n);
}

/**
 * Parses a safetensors header from a buffer holding the start of the file (at least the whole header).
 * Tensors come back in data order (ascending offset).
 * @throws DmaloadError ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER, ERR_MODEL_UTF8, ERR_MODEL_DUPLICATE, ERR_MODEL_RANGE
 */
export function parseSafetensors(buf: Uint8Array, opts: ParseOptions = {}): ParsedModel {
  const fileSize = fileSizeOf(buf, opts);
  const path = opts.path;
  const end = safetensorsHeaderEnd(buf, fileSize, path);
  if (buf.length < end) {
    throw modelError('ERR_MODEL_TRUNCATED', `safetensors header ends at ${end}, past the ${buf.length} bytes given`, path);
  }
  if (buf[8] !== 0x7b /* { */) throw modelError('ERR_MODEL_HEADER', 'safetensors header does not start with "{"', path);
  const text = decodeStrict(buf.subarray(8, end), 'safetensors header', path);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw modelError('ERR_MODEL_HEADER', `safetensors header is not valid JSON (${(e as Error).message})`, path);
  }
  if (!isObject(json)) throw modelError('ERR_MODEL_HEADER', 'safetensors header is not a JSON object', path);
  const dup = findDuplicateKey(text);
  if (dup !== undefined) throw modelError('ERR_MODEL_DUPLICATE', `safetensors header repeats the key ${q(dup)}`, path);

  const dataSize = fileSize - end;
  let metadata: Record<string, MetadataValue> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(json)) {
    checkWellFormed(name, `tensor name ${q(name)}`, path);
    if (name === '__metadata__') {
      metadata = checkMetadata(entry, path);
      continue;
    }
    tensors.push(checkTensor(name, entry, end, dataSize, path));
  }

  tensors.sort(byOffset);
  // Contiguous cover of the data area: each tensor starts where the previous one ended.
  let at = end;
  for (const t of tensors) {
    if (t.offset !== at) {
      const what = t.offset < at ? 'overlaps the tensor before it' : `leaves a hole of ${t.offset - at} bytes before it`;
      throw modelError('ERR_MODEL_RANGE', `safetensors tensor ${q(t.name)} ${what}`, path);
    }
    at += t.bytes;
  }
  if (at !== fileSize) {
    throw modelError('ERR_MODEL_RANGE', `safetensors data area has ${fileSize - at} bytes that no tensor covers`, path);
  }
  return { format: 'safetensors', metadata, tensors, dataOffset: end };
}

function checkMetadata(entry: unknown, path: string | undefined): Record<string, MetadataValue> {
  if (!isObject(entry)) throw modelError('ERR_MODEL_HEADER', 'safetensors __metadata__ is not an object', path);
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== 'string') {
      throw modelError('ERR_MODEL_HEADER', `safetensors __metadata__ value of ${q(k)} is not a string`, path);
    }
    checkWellFormed(k, `metadata key ${q(k)}`, path);
    checkWellFormed(v, `metadata value of ${q(k)}`, path);
  }
  return entry as Record<string, string>;
}

function checkTensor(name: string, entry: unknown, dataStart: number, dataSize: number, path: string | undefined): TensorInfo {
  const bad = (what: string) => modelError('ERR_MODEL_HEADER', `safetensors tensor ${q(name)}: ${what}`, path);
  if (!isObject(entry)) throw bad('entry is not an object');
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string') throw bad('dtype is not a string');
  if (!DTYPE_NAME.test(dtype)) throw bad(`dtype ${q(dtype)} is not a dtype name`);
  // A dtype newer than this table: its byte range is still given, so the tensor stays loadable as raw bytes.
  const bits = SAFETENSORS_DTYPE_BITS[dtype];
  if (!Array.isArray(shape)) throw bad('shape is not an array');
  const dims: number[] = [];
  let elements = 1n;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || (d as number) < 0) throw bad(`shape entry ${String(d)} is not a non-negative integer`);
    dims.push((d as number) + 0); // JSON's -0 becomes 0
    elements *= BigInt(d as number);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2) throw bad('data_offsets is not an array of two numbers');
  const [begin, finish] = offsets as unknown[];
  for (const o of [begin, finish]) {
    if (typeof o !== 'number' || !Number.isInteger(o) || o < 0) throw bad(`data offset ${String(o)} is not a non-negative integer`);
  }
  const b = begin as number;
  const e = finish as number;
  const range = (what: string) => modelError('ERR_MODEL_RANGE', `safetensors tensor ${q(name)}: ${what}`, path);
  if (e < b) throw range(`data_offsets [${b}, ${e}] end before they begin`);
  // Unsafe integers are already inexact, and necessarily past any real file's end.
  if (e > dataSize) throw range(`data_offsets [${b}, ${e}] run past the ${dataSize}-byte data area`);
  if (bits === undefined) return { name, dtype, shape: dims, offset: dataStart + b, bytes: e - b, unknownType: true };
  const bitCount = elements * BigInt(bits);
  if (bitCount % 8n !== 0n) {
    throw range(`shape [${dims.join(', ')}] of ${dtype} is ${bitCount} bits, not a whole number of bytes`);
  }
  if (bitCount / 8n !== BigInt(e - b)) {
    throw range(`shape [${dims.join(', ')}] of ${dtype} needs ${bitCount / 8n} bytes, data_offsets give ${e - b}`);
  }
  return { name, dtype, shape: dims, offset: dataStart + b, bytes: e - b };
}
