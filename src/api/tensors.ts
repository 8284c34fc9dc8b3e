/**
 * The objects loadModel() resolves with: {@link LoadedModel} and its {@link LoadedTensor}s (zero-copy views into the
 * files' LoadedBuffers, typed-array views by dtype), their stats, and the classes behind them. model.ts plans and
 * loads; this file only holds what it hands back (the share client's models are the same objects).
 * @module
 */
import { toFloat32 } from '../formats/convert.js';
import type { LoadedBuffer, LoadStats } from './buffer.js';
import { DmaloadError, outOfRange } from '../core/errors.js';
import { q, type MetadataValue, type ModelFormat, type ModelTensor } from '../formats/common.js';
import type { RankSpec, RankTensor, RowSlice } from '../pipeline/ranks.js';

/** A typed array over a tensor's bytes; Float16Array where the runtime has one. */
export type TensorTypedArray =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Float16ArrayLike;

/** The shape of a Float16Array (ES2025), which this project's TypeScript lib does not declare. */
export interface Float16ArrayLike extends ArrayBufferView {
  readonly length: number;
  [index: number]: number;
}

type TypedArrayCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => TensorTypedArray;

/** dtype (safetensors and ggml spell these the same) → typed array constructor. */
function typedArrayFor(dtype: string): TypedArrayCtor | undefined {
  switch (dtype) {
    case 'F32':
      return Float32Array;
    case 'F64':
      return Float64Array;
    case 'I8':
      return Int8Array;
    case 'U8':
      return Uint8Array;
    case 'BOOL':
      return Uint8Array;
    case 'I16':
      return Int16Array;
    case 'U16':
      return Uint16Array;
    case 'I32':
      return Int32Array;
    case 'U32':
      return Uint32Array;
    case 'I64':
      return BigInt64Array;
    case 'U64':
      return BigUint64Array;
    case 'F16':
      return (globalThis as { Float16Array?: TypedArrayCtor }).Float16Array;
    default:
      return undefined;
  }
}

/**
 * One loaded tensor: its header facts (as inspect() gives them, `bytes` now the data) and its bytes in memory. In a
 * per-rank load with split 'rows', `shape`, `offset` and `byteLength` are the rank's row slice's, and `rows` tells
 * which slice of which whole tensor it is.
 */
export interface LoadedTensor extends Readonly<Omit<ModelTensor, 'bytes'>> {
  /** The tensor's bytes: a zero-copy view into the file's LoadedBuffer. Throws ERR_BUFFER_CLOSED after close(). */
  readonly bytes: Uint8Array;
  /** Length of the tensor's data in bytes (inspect()'s `bytes`); readable after close(). */
  readonly byteLength: number;
  /** The buffer holding the bytes (its `fd` and `parts` are what a device imports); undefined for an empty tensor. */
  readonly buffer: LoadedBuffer | undefined;
  /** Where the tensor's first byte is in `buffer.bytes` (congruent to `offset` modulo 4096). */
  readonly bufferOffset: number;
  /** Per-rank loads with split 'rows': the row slice this rank holds. */
  readonly rows?: Readonly<RowSlice>;
  /** Per-rank loads with split 'rows': present (true) for a tensor every rank loads whole. */
  readonly replicated?: true;
  /**
   * A window of the tensor's bytes (zero-copy), for tensors too large for one view: on Node 20 a view holds at most
   * 4 GiB, so `bytes` of a larger tensor throws ERR_BUFFER_TOO_LARGE there and windows are the way to read it.
   */
  view(offset: number, length: number): Uint8Array;
  /**
   * The bytes as the dtype's typed array, zero-copy: F32, F64, I8, U8, I16, U16, I32, U32, I64, U64, BOOL (Uint8Array)
   * and F16 where `globalThis.Float16Array` exists. Undefined for any other dtype (BF16, F8_*, quantized ggml types)
   * and when the view's byteOffset is not a multiple of the element size (the file put the tensor at an unaligned
   * offset: copy `bytes` then). Values are read in the host's byte order; the files are little-endian, and so is
   * every host this library runs on (x86-64, arm64 Linux).
   * @throws DmaloadError ERR_MODEL_DTYPE_UNKNOWN for a tensor whose type this library does not know (`unknownType`):
   *   its bytes are there, but what they mean is not.
   */
  asTypedArray(): TensorTypedArray | undefined;
  /**
   * The values as float32, converted (a copy): F16, BF16, the F8 types (F8_E4M3, F8_E5M2, their FNUZ variants,
   * F8_E8M0), F32, F64, the integer types and BOOL — what most LLM weights need to be printed or checked. Into `out`
   * when given (its length must be the element count), else a new Float32Array.
   * @throws DmaloadError ERR_MODEL_DTYPE_UNKNOWN for a dtype it cannot convert (quantized ggml blocks, unknown types)
   */
  toFloat32(out?: Float32Array): Float32Array;
}

/** One file's share of a model load. */
export interface ModelFileStats {
  file: string;
  /** Tensors loaded from this file. */
  tensors: number;
  /** Ranges asked of loadRanges (after coalescing). */
  ranges: number;
  stats: LoadStats;
}

export interface LoadModelStats {
  /** Bytes read from every file (ranges rounded out to whole blocks, coalesced gaps included). */
  bytesRead: number;
  /** Bytes of the tensors loaded (the least any load could read). */
  tensorBytes: number;
  /** Tensors loaded. */
  tensors: number;
  /** Files read (a selective load skips the shards it needs nothing from). */
  files: number;
  /** Ranges read, over all files, after coalescing. */
  ranges: number;
  /** Wall time of the loadModel() call, inspect included, ms. */
  ms: number;
  bytesPerSec: number;
  /** Per file, the load's own stats (io, engine, timings). */
  perFile: ModelFileStats[];
}

export interface LoadedModel extends AsyncDisposable {
  readonly format: ModelFormat;
  readonly metadata: Record<string, MetadataValue>;
  /** The loaded tensors by name, in the model's order (file by file, header order; per-rank loads: file order). */
  readonly tensors: ReadonlyMap<string, LoadedTensor>;
  /** For a per-rank load, which rank of how many, and how the model was split; undefined otherwise. */
  readonly partition: Readonly<RankSpec> | undefined;
  readonly stats: LoadModelStats;
  /** One buffer per file read. */
  readonly buffers: readonly LoadedBuffer[];
  readonly closed: boolean;
  /** Frees every file's buffer. Idempotent; tensor `bytes` throw ERR_BUFFER_CLOSED afterwards. */
  close(): void;
}

/** Shared by a model and its tensors. */
export interface Owner {
  closed: boolean;
  path: string;
}

export class Tensor implements LoadedTensor {
  readonly name: string;
  readonly dtype: string;
  readonly shape: number[];
  readonly offset: number;
  readonly byteLength: number;
  readonly file: string;
  readonly buffer: LoadedBuffer | undefined;
  readonly bufferOffset: number;
  declare readonly unknownType?: true;
  declare readonly typeId?: number;
  declare readonly bytesInferred?: true;
  declare readonly rows?: RowSlice;
  declare readonly replicated?: true;
  readonly #owner: Owner;

  constructor(t: RankTensor, buffer: LoadedBuffer | undefined, bufferOffset: number, owner: Owner) {
    this.name = t.name;
    this.dtype = t.dtype;
    this.shape = t.shape;
    this.offset = t.offset;
    this.byteLength = t.bytes;
    this.file = t.file;
    this.buffer = buffer;
    this.bufferOffset = bufferOffset;
    // The optional facts exist only where they apply, as in inspect()'s objects.
    if (t.unknownType) this.unknownType = true;
    if (t.typeId !== undefined) this.typeId = t.typeId;
    if (t.bytesInferred) this.bytesInferred = true;
    if (t.rows) this.rows = t.rows;
    if (t.replicated) this.replicated = true;
    this.#owner = owner;
  }

  get bytes(): Uint8Array {
    return this.view(0, this.byteLength);
  }

  view(offset: number, length: number): Uint8Array {
    if (this.#owner.closed) {
      throw new DmaloadError(
        'ERR_BUFFER_CLOSED',
        `Cannot use the bytes of tensor ${q(this.name)} of the model loaded from '${this.#owner.path}': it was closed`,
        { path: this.#owner.path },
      );
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.byteLength)
      throw outOfRange('offset', `an integer >= 0 and <= ${this.byteLength}`, offset);
    if (!Number.isSafeInteger(length) || length < 0 || length > this.byteLength - offset)
      throw outOfRange('length', `an integer >= 0 and <= ${this.byteLength - offset}`, length);
    if (!this.buffer || length === 0) return new Uint8Array(0);
    return this.buffer.view(this.bufferOffset + offset, length);
  }

  asTypedArray(): TensorTypedArray | undefined {
    if (this.unknownType) {
      throw new DmaloadError(
        'ERR_MODEL_DTYPE_UNKNOWN',
        `Tensor ${q(this.name)} of '${this.#owner.path}' has type ${this.dtype}, which this version of dmaload does not know; its raw bytes are in .bytes`,
        { path: this.#owner.path },
      );
    }
    const Ctor = typedArrayFor(this.dtype);
    if (!Ctor) return undefined;
    const bytes = this.bytes;
    const size = (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    if (bytes.byteOffset % size !== 0 || bytes.byteLength % size !== 0) return undefined;
    return new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
  }

  toFloat32(out?: Float32Array): Float32Array {
    const v = this.unknownType ? undefined : toFloat32(this.dtype, this.bytes, out);
    if (!v) {
      throw new DmaloadError(
        'ERR_MODEL_DTYPE_UNKNOWN',
        `Tensor ${q(this.name)} of '${this.#owner.path}' has type ${this.dtype}, which toFloat32() does not convert; its raw bytes are in .bytes`,
        { path: this.#owner.path },
      );
    }
    return v;
  }

  toJSON(): RankTensor {
    const { unknownType, typeId, bytesInferred, rows, replicated } = this;
    return {
      name: this.name,
      dtype: this.dtype,
      shape: this.shape,
      offset: this.offset,
      bytes: this.byteLength,
      file: this.file,
      unknownType,
      typeId,
      bytesInferred,
      rows,
      replicated,
    };
  }
}

export class Model implements LoadedModel {
  readonly format: ModelFormat;
  readonly metadata: Record<string, MetadataValue>;
  readonly tensors: ReadonlyMap<string, LoadedTensor>;
  readonly stats: LoadModelStats;
  readonly buffers: readonly LoadedBuffer[];
  readonly partition: Readonly<RankSpec> | undefined;
  readonly #owner: Owner;

  constructor(
    format: ModelFormat,
    metadata: Record<string, MetadataValue>,
    tensors: Map<string, LoadedTensor>,
    partition: RankSpec | undefined,
    stats: LoadModelStats,
    buffers: LoadedBuffer[],
    owner: Owner,
  ) {
    this.format = format;
    this.metadata = metadata;
    this.tensors = tensors;
    this.partition = partition && Object.freeze({ ...partition });
    this.stats = stats;
    this.buffers = buffers;
    this.#owner = owner;
  }

  get closed(): boolean {
    return this.#owner.closed;
  }

  close(): void {
    this.#owner.closed = true;
    closeAll(this.buffers);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** Closes every buffer even if one throws; rethrows the first error. */
export function closeAll(buffers: readonly LoadedBuffer[]): void {
  let first: { error: unknown } | undefined;
  for (const b of buffers) {
    try {
      b.close();
    } catch (e) {
      first ??= { error: e };
    }
  }
  if (first) throw first.error;
}
