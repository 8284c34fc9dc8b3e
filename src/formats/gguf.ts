/**
 * GGUF v2 and v3 (little-endian): magic 'GGUF', u32 version, u64 tensor count, u64 metadata count, the metadata
 * key/value pairs, the tensor descriptions, then the data section at the next multiple of `general.alignment`
 * (default 32). Tensor offsets are relative to the data section and aligned.
 *
 * Every length and count is checked against the bytes left in the file before it is used, so a hostile header
 * costs at most a pass over the file's own bytes.
 * @module
 */
import {
  byOffset,
  checkNoOverlap,
  decodeLenient,
  decodeStrict,
  fileSizeOf,
  modelError,
  q,
  type MetadataValue,
  type ParsedModel,
  type ParseOptions,
  type TensorInfo,
} from './common.js';

/** A ggml tensor type: `bytes = elements / blockSize * typeSize`. */
export interface GgmlType {
  id: number;
  name: string;
  /** Elements per block. */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/*
 * ggml's type table (ggml/include/ggml.h `enum ggml_type`, block layouts in ggml/src/ggml-common.h, type_traits in
 * ggml/src/ggml.c), as of ggml d99724f (2026-08, GGML_TYPE_COUNT 43). Byte sizes are the headers' own static_assert
 * expressions; a half is 2 bytes. ggml adds types every few months: a type missing here does not make a file
 * unreadable (see locateTensors), it only makes its tensor opaque.
 */
const QK_K = 256;
const HALF = 2;
const ggmlTypes: [id: number, name: string, blockSize: number, typeSize: number][] = [
  [0, 'F32', 1, 4],
  [1, 'F16', 1, HALF],
  [2, 'Q4_0', 32, HALF + 32 / 2],
  [3, 'Q4_1', 32, 2 * HALF + 32 / 2],
  // 4 and 5 (Q4_2, Q4_3) were removed from ggml.
  [6, 'Q5_0', 32, HALF + 4 + 32 / 2],
  [7, 'Q5_1', 32, 2 * HALF + 4 + 32 / 2],
  [8, 'Q8_0', 32, HALF + 32],
  [9, 'Q8_1', 32, 2 * HALF + 32],
  [10, 'Q2_K', QK_K, 2 * HALF + QK_K / 16 + QK_K / 4],
  [11, 'Q3_K', QK_K, HALF + QK_K / 4 + QK_K / 8 + 12],
  [12, 'Q4_K', QK_K, 2 * HALF + 12 + QK_K / 2],
  [13, 'Q5_K', QK_K, 2 * HALF + 12 + QK_K / 2 + QK_K / 8],
  [14, 'Q6_K', QK_K, HALF + QK_K / 16 + (3 * QK_K) / 4],
  [15, 'Q8_K', QK_K, 4 + QK_K + (QK_K / 16) * 2],
  [16, 'IQ2_XXS', QK_K, HALF + (QK_K / 8) * 2],
  [17, 'IQ2_XS', QK_K, HALF + (QK_K / 8) * 2 + QK_K / 32],
  [18, 'IQ3_XXS', QK_K, HALF + 3 * (QK_K / 8)],
  [19, 'IQ1_S', QK_K, HALF + QK_K / 8 + QK_K / 16],
  [20, 'IQ4_NL', 32, HALF + 32 / 2],
  [21, 'IQ3_S', QK_K, HALF + 13 * (QK_K / 32) + QK_K / 64],
  [22, 'IQ2_S', QK_K, HALF + QK_K / 4 + QK_K / 16],
  [23, 'IQ4_XS', QK_K, HALF + 2 + QK_K / 64 + QK_K / 2],
  [24, 'I8', 1, 1],
  [25, 'I16', 1, 2],
  [26, 'I32', 1, 4],
  [27, 'I64', 1, 8],
  [28, 'F64', 1, 8],
  [29, 'IQ1_M', QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32],
  [30, 'BF16', 1, 2],
  // 31-33 (Q4_0_4_4, Q4_0_4_8, Q4_0_8_8) were removed from ggml.
  [34, 'TQ1_0', QK_K, HALF + QK_K / 64 + (QK_K - (4 * QK_K) / 64) / 5],
  [35, 'TQ2_0', QK_K, HALF + QK_K / 4],
  // 36-38 (IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8) were removed from ggml.
  [39, 'MXFP4', 32, 1 + 32 / 2],
  [40, 'NVFP4', 64, 64 / 16 + 64 / 2],
  [41, 'Q1_0', 128, HALF + 128 / 8],
  [42, 'Q2_0', 64, HALF + 64 / 4],
];

/** The ggml tensor types GGUF files use, by type id. */
export const GGML_TYPES: ReadonlyMap<number, GgmlType> = new Map(
  ggmlTypes.map(([id, name, blockSize, typeSize]) => [id, Object.freeze({ id, name, blockSize, typeSize })]),
);

/** GGUF metadata value types, by id. */
export const GGUF_VALUE_TYPES = Object.freeze({
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
});

/** The fewest bytes one value of each type takes, used to bound counts before looping over them. */
const MIN_VALUE_SIZE = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];
/** name length + n_dims + type + offset */
const MIN_TENSOR_INFO = 8 + 4 + 4 + 8;
/** key length + value type + smallest value */
const MIN_KV = 8 + 4 + 1;
/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** Nested arrays deeper than this are refused rather than recursed into. */
const MAX_ARRAY_DEPTH = 32;
/**
 * Metadata array elements allowed per file. A JS array slot takes 8 bytes where a uint8 or bool takes 1 in the file,
 * so the file size alone does not bound memory; real files hold well under a million (vocabularies, merges).
 */
export const GGUF_MAX_ARRAY_ELEMENTS = 1 << 24;
const DEFAULT_ALIGNMENT = 32;

/**
 * Thrown (internally) when the header continues past the bytes read so far but within the file: the caller reads
 * at least `end` bytes and parses again.
 */
export class NeedMore {
  constructor(readonly end: number) {}
}

class Cursor {
  pos = 0;
  /** Array elements still allowed (see GGUF_MAX_ARRAY_ELEMENTS). */
  private elementBudget = GGUF_MAX_ARRAY_ELEMENTS;
  private readonly view: DataView;
  constructor(
    private readonly buf: Uint8Array,
    private readonly fileSize: number,
    private readonly path: string | undefined,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Claims `n` bytes and returns where they start. */
  private take(n: number, what: string): number {
    const at = this.pos;
    const end = at + n;
    if (end > this.fileSize) {
      throw modelError('ERR_MODEL_TRUNCATED', `GGUF ${what} at offset ${at} runs past the end of the ${this.fileSize}-byte file`, this.path);
    }
    // eslint-disable-next-line @typescript-eslint/only-throw-error -- a request for more bytes, caught by the reader; not an error, no stack to capture
    if (end > this.buf.length) throw new NeedMore(end);
    this.pos = end;
    return at;
  }

  remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Refuses `count` items of at least `size` bytes each that cannot fit in the rest of the file. */
  fits(count: bigint, size: number, what: string): number {
    if (count * BigInt(size) > BigInt(this.remaining())) {
      throw modelError('ERR_MODEL_TRUNCATED', `GGUF ${what} ${count} cannot fit in the ${this.remaining()} bytes left at offset ${this.pos}`, this.path);
    }
    return Number(count);
  }

  u8(what: string): number {
    return this.view.getUint8(this.take(1, what));
  }
  u32(what: string): number {
    return this.view.getUint32(this.take(4, what), true);
  }
  u64(what: string): bigint {
    return this.view.getBigUint64(this.take(8, what), true);
  }
  bytes(what: string): Uint8Array {
    const len = this.fits(this.u64(`${what} length`), 1, `${what} length`);
    const at = this.take(len, what);
    return this.buf.subarray(at, at + len);
  }

  value(type: number, what: string, depth: number): MetadataValue {
    const v = this.view;
    switch (type) {
      case 0:
        return v.getUint8(this.take(1, what));
      case 1:
        return v.getInt8(this.take(1, what));
      case 2:
        return v.getUint16(this.take(2, what), true);
      case 3:
        return v.getInt16(this.take(2, what), true);
      case 4:
        return v.getUint32(this.take(4, what), true);
      case 5:
        return v.getInt32(this.take(4, what), true);
      case 6:
        return v.getFloat32(this.take(4, what), true);
      case 7: {
        const b = v.getUint8(this.take(1, what));
        if (b > 1) throw modelError('ERR_MODEL_HEADER', `GGUF ${what} is a bool of value ${b}`, this.path);
        return b === 1;
      }
      case 8:
        return decodeLenient(this.bytes(what));
      case 9: {
        if (depth >= MAX_ARRAY_DEPTH) {
          throw modelError('ERR_MODEL_HEADER', `GGUF ${what} nests arrays deeper than ${MAX_ARRAY_DEPTH}`, this.path);
        }
        const elType = this.u32(`${what} element type`);
        const minSize = MIN_VALUE_SIZE[elType];
        if (minSize === undefined) {
          throw modelError('ERR_MODEL_HEADER', `GGUF ${what} has unknown element type ${elType}`, this.path);
        }
        const n = this.fits(this.u64(`${what} length`), minSize, `${what} length`);
        this.elementBudget -= n;
        if (this.elementBudget < 0) {
          throw modelError('ERR_MODEL_HEADER', `GGUF metadata arrays hold more than ${GGUF_MAX_ARRAY_ELEMENTS} elements`, this.path);
        }
        const out = new Array<MetadataValue>(n);
        for (let i = 0; i < n; i++) out[i] = this.value(elType, what, depth + 1);
        return out;
      }
      case 10:
        return safe(v.getBigUint64(this.take(8, what), true));
      case 11:
        return safe(v.getBigInt64(this.take(8, what), true));
      case 12:
        return v.getFloat64(this.take(8, what), true);
      default:
        throw modelError('ERR_MODEL_HEADER', `GGUF ${what} has unknown value type ${type}`, this.path);
    }
  }
}

function safe(n: bigint): number | bigint {
  return n >= -0x1fffffffffffffn && n <= 0x1fffffffffffffn ? Number(n) : n;
}

/** A tensor as its description in the header gives it: the offset is relative to the data section. */
interface RawTensor {
  name: string;
  dims: number[];
  typeId: number;
  type: GgmlType | undefined;
  rel: bigint;
}

/**
 * Parses a GGUF header from the first `buf.length` bytes of a file. Throws {@link NeedMore} when the header goes on
 * past `buf` but not past `fileSize`; {@link parseGguf} is the public form.
 */
export function parseGgufPrefix(buf: Uint8Array, fileSize: number, path: string | undefined): ParsedModel {
  const c = new Cursor(buf, fileSize, path);
  if (c.u32('magic') !== 0x46554747 /* 'GGUF' */) throw modelError('ERR_MODEL_FORMAT', 'not a GGUF file', path);
  checkVersion(c.u32('version'), path);
  const tensorCount = c.u64('tensor count');
  const kvCount = c.u64('metadata count');
  c.fits(kvCount, MIN_KV, 'metadata count');
  c.fits(tensorCount, MIN_TENSOR_INFO, 'tensor count');
  const { entries, alignment } = readMetadata(c, Number(kvCount), path);
  const raw = readTensorInfos(c, Number(tensorCount), path);
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  const tensors = locateTensors(raw, dataOffset, alignment, fileSize, path);
  checkNoOverlap([...tensors].sort(byOffset), path);
  return { format: 'gguf', metadata: Object.fromEntries(entries), tensors, dataOffset };
}

/** ERR_MODEL_VERSION for anything but versions 2 and 3, naming a big-endian file as such. */
function checkVersion(version: number, path: string | undefined): void {
  if (version === 2 || version === 3) return;
  const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
  const text =
    version === 1
      ? 'GGUF version 1 is not supported (only 2 and 3 are)'
      : swapped >= 1 && swapped <= 3
        ? `big-endian GGUF (version ${swapped}) is not supported`
        : `unknown GGUF version ${version}`;
  throw modelError('ERR_MODEL_VERSION', text, path);
}

/** The metadata key/value pairs, and the alignment `general.alignment` sets (a power of two; default 32). */
function readMetadata(c: Cursor, count: number, path: string | undefined): { entries: [string, MetadataValue][]; alignment: number } {
  const entries: [string, MetadataValue][] = [];
  const keys = new Set<string>();
  let alignment = DEFAULT_ALIGNMENT;
  for (let i = 0; i < count; i++) {
    const key = decodeStrict(c.bytes('metadata key'), `GGUF metadata key #${i}`, path);
    if (keys.has(key)) throw modelError('ERR_MODEL_DUPLICATE', `GGUF metadata key ${q(key)} occurs twice`, path);
    keys.add(key);
    const type = c.u32(`type of ${q(key)}`);
    const value = c.value(type, `value of ${q(key)}`, 0);
    if (key === 'general.alignment') {
      if (type !== GGUF_VALUE_TYPES.UINT32 || value === 0 || ((value as number) & ((value as number) - 1)) !== 0) {
        // eslint-disable-next-line @typescript-eslint/no-base-to-string -- whatever the file holds, shown as it is
        throw modelError('ERR_MODEL_HEADER', `GGUF general.alignment must be a uint32 power of two, not ${String(value)}`, path);
      }
      alignment = value as number;
    }
    entries.push([key, value]);
  }
  return { entries, alignment };
}

/** The tensor descriptions: name, dimensions, type and offset in the data section. */
function readTensorInfos(c: Cursor, count: number, path: string | undefined): RawTensor[] {
  const raw: RawTensor[] = [];
  const names = new Set<string>();
  for (let i = 0; i < count; i++) {
    const name = decodeStrict(c.bytes('tensor name'), `GGUF tensor name #${i}`, path);
    if (names.has(name)) throw modelError('ERR_MODEL_DUPLICATE', `GGUF tensor name ${q(name)} occurs twice`, path);
    names.add(name);
    const nDims = c.u32(`dimension count of ${q(name)}`);
    if (nDims > MAX_DIMS) {
      throw modelError('ERR_MODEL_HEADER', `GGUF tensor ${q(name)} has ${nDims} dimensions (at most ${MAX_DIMS})`, path);
    }
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const ne = c.u64(`dimension of ${q(name)}`);
      if (ne > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw modelError('ERR_MODEL_RANGE', `GGUF tensor ${q(name)} has a dimension of ${ne}`, path);
      }
      dims.push(Number(ne));
    }
    const typeId = c.u32(`type of ${q(name)}`);
    raw.push({ name, dims, typeId, type: GGML_TYPES.get(typeId), rel: c.u64(`offset of ${q(name)}`) });
  }
  return raw;
}

/** Each tensor's place in the file (offsets aligned and inside it) and its length, from its type and dimensions. */
function locateTensors(raw: readonly RawTensor[], dataOffset: number, alignment: number, fileSize: number, path: string | undefined): TensorInfo[] {
  const starts = raw.map(({ name, rel }) => {
    if (rel % BigInt(alignment) !== 0n) {
      throw modelError('ERR_MODEL_RANGE', `GGUF tensor ${q(name)}: offset ${rel} is not a multiple of the alignment ${alignment}`, path);
    }
    const start = BigInt(dataOffset) + rel;
    if (start > BigInt(fileSize)) {
      throw modelError('ERR_MODEL_RANGE', `GGUF tensor ${q(name)}: offset ${start} is past the end of the ${fileSize}-byte file`, path);
    }
    return Number(start);
  });
  // For a type this table lacks, the header gives no length: the tensor reaches to the next tensor's start, or to
  // the end of the file's data.
  const sortedStarts = [...new Set(starts)].sort((a, b) => a - b);
  const nextStart = (start: number) => sortedStarts.find((s) => s > start) ?? fileSize;
  return raw.map(({ name, dims, typeId, type, rel }, i) => {
    const start = starts[i] as number;
    const elements = dims.reduce((a, d) => a * BigInt(d), 1n);
    if (type === undefined) {
      const known = elements === 0n; // nothing times any size
      return {
        name,
        dtype: `UNKNOWN_${typeId}`,
        shape: dims,
        offset: start,
        bytes: known ? 0 : nextStart(start) - start,
        unknownType: true,
        typeId,
        ...(known ? {} : { bytesInferred: true }),
      };
    }
    if ((dims[0] ?? 1) % type.blockSize !== 0) {
      throw modelError('ERR_MODEL_HEADER', `GGUF tensor ${q(name)}: ne0 ${dims[0]} is not a multiple of ${type.name}'s block size ${type.blockSize}`, path);
    }
    const bytes = (elements / BigInt(type.blockSize)) * BigInt(type.typeSize);
    if (BigInt(start) + bytes > BigInt(fileSize)) {
      throw modelError(
        'ERR_MODEL_RANGE',
        `GGUF tensor ${q(name)}: ${bytes} bytes at offset ${BigInt(dataOffset) + rel} run past the end of the ${fileSize}-byte file`,
        path,
      );
    }
    return { name, dtype: type.name, shape: dims, offset: start, bytes: Number(bytes) };
  });
}

/**
 * Parses a GGUF header from a buffer holding the start of the file (at least the whole header, including the
 * tensor descriptions). Tensors come back in the file's order.
 * @throws DmaloadError ERR_MODEL_FORMAT, ERR_MODEL_VERSION, ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER, ERR_MODEL_UTF8,
 *   ERR_MODEL_DUPLICATE, ERR_MODEL_RANGE
 */
export function parseGguf(buf: Uint8Array, opts: ParseOptions = {}): ParsedModel {
  const fileSize = fileSizeOf(buf, opts);
  try {
    return parseGgufPrefix(buf, fileSize, opts.path);
  } catch (e) {
    if (e instanceof NeedMore) {
      throw modelError('ERR_MODEL_TRUNCATED', `GGUF header goes on past the ${buf.length} bytes given`, opts.path);
    }
    throw e;
  }
}
