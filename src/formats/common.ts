/**
 * Types and helpers shared by the model-file parsers.
 *
 * Error codes thrown by the parsers (all {@link DmaloadError}, with `path` set when a file is known):
 * - `ERR_MODEL_FORMAT`    the content is neither GGUF nor safetensors (nor a safetensors index).
 * - `ERR_MODEL_TRUNCATED` the header claims more bytes than the file holds (a length, a count or a string that runs
 *                         past the end, or a file cut short inside its header).
 * - `ERR_MODEL_HEADER`    the header is malformed: bad JSON, wrong types, an unknown metadata value type, a length past
 *                         a sanity limit, a bad alignment, too many dimensions, a missing or inconsistent shard.
 *                         (An unknown tensor type is not an error: see {@link TensorInfo.unknownType}.)
 * - `ERR_MODEL_VERSION`   a GGUF version other than 2 or 3 (v1 and big-endian files included).
 * - `ERR_MODEL_RANGE`     tensor data ranges: past the end of the file, overlapping, unaligned, with holes
 *                         (safetensors), or a byte length that disagrees with the shape and dtype.
 * - `ERR_MODEL_DUPLICATE` a tensor name or metadata key that occurs twice.
 * - `ERR_MODEL_UTF8`      a name or key that is not valid UTF-8 (or, in JSON, holds a lone surrogate escape).
 * @module
 */
import { DmaloadError, invalidType, outOfRange } from '../core/errors.js';
import type { ErrorCode } from '../core/errors.js';

/** A metadata value: safetensors strings, GGUF values (64-bit integers beyond 2^53 as bigint), index JSON. */
export type MetadataValue = string | number | bigint | boolean | null | MetadataValue[] | { [key: string]: MetadataValue };

/** One tensor as its header describes it. */
export interface TensorInfo {
  name: string;
  /** The format's own type name: 'F32', 'BF16', 'F8_E4M3' (safetensors) or 'Q4_K', 'IQ2_XS' (ggml). */
  dtype: string;
  /** Dimensions in the file's order (GGUF: ne0 first). */
  shape: number[];
  /** Absolute file offset of the tensor's first byte. */
  offset: number;
  /** Length of the tensor's data in bytes. */
  bytes: number;
  /**
   * Present (true) when this library does not know `dtype`: a ggml type newer than its table (`dtype` is then
   * `UNKNOWN_<id>`), or a safetensors dtype with no known size rule. Such a tensor still inspects and loads, as raw
   * bytes over its extent; only `asTypedArray()` refuses it.
   */
  unknownType?: true;
  /** GGUF, unknown types only: the ggml type number the file gives. */
  typeId?: number;
  /**
   * Present (true) when `bytes` is not stated by the file but inferred: a GGUF tensor of unknown type reaches to the
   * next tensor's offset or to the end of the file, so its extent may include the alignment padding after it.
   */
  bytesInferred?: true;
}

/** A tensor located in a file on disk. */
export interface ModelTensor extends TensorInfo {
  /** Absolute path of the file (shard) that holds the tensor's bytes. */
  file: string;
}

export type ModelFormat = 'safetensors' | 'gguf';

/** What a parser reads from one file's header. */
export interface ParsedModel {
  format: ModelFormat;
  metadata: Record<string, MetadataValue>;
  tensors: TensorInfo[];
  /** Absolute offset where the data section starts (tensor offsets are at or after it). */
  dataOffset: number;
}

/** What {@link inspect} returns: the model's metadata and every tensor, from every shard. */
export interface ModelInfo {
  format: ModelFormat;
  metadata: Record<string, MetadataValue>;
  tensors: ModelTensor[];
}

/** Options of the pure, buffer-level parsers. */
export interface ParseOptions {
  /** Size of the whole file; the buffer holds its first bytes. Defaults to the buffer's length. */
  fileSize?: number;
  /** File name for error messages and `DmaloadError.path`. */
  path?: string;
}

export function modelError(code: ErrorCode, text: string, path: string | undefined): DmaloadError {
  return new DmaloadError(code, path === undefined ? text : `${text} in '${path}'`, path === undefined ? {} : { path });
}

/** Validates a pure parser's options against its buffer and returns the file size. */
export function fileSizeOf(buf: Uint8Array, opts: ParseOptions): number {
  const size = opts.fileSize ?? buf.length;
  if (!(buf instanceof Uint8Array)) throw invalidType('buf', 'an instance of Uint8Array', buf);
  if (typeof size !== 'number') throw invalidType('fileSize', 'of type number', size);
  if (!Number.isSafeInteger(size) || size < buf.length) throw outOfRange('fileSize', `an integer >= ${buf.length}`, size);
  return size;
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });

/** Decodes UTF-8, refusing invalid sequences with ERR_MODEL_UTF8. */
export function decodeStrict(bytes: Uint8Array, what: string, path: string | undefined): string {
  try {
    return fatalUtf8.decode(bytes);
  } catch {
    throw modelError('ERR_MODEL_UTF8', `${what} is not valid UTF-8`, path);
  }
}

/** Decodes UTF-8, replacing invalid sequences (for values, which real files do not always keep valid). */
export function decodeLenient(bytes: Uint8Array): string {
  return lenientUtf8.decode(bytes);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** JSON escapes can produce lone surrogates, which no UTF-8 file can spell. */
export function checkWellFormed(s: string, what: string, path: string | undefined): void {
  if (LONE_SURROGATE.test(s)) throw modelError('ERR_MODEL_UTF8', `${what} holds a lone UTF-16 surrogate`, path);
}

/** Quotes a name from an untrusted file for a message, shortened. */
export function q(name: string): string {
  return JSON.stringify(name.length > 80 ? name.slice(0, 80) + '…' : name);
}

/**
 * The first key that occurs twice in one object of a JSON text, or undefined. JSON.parse keeps the last silently, so
 * a file could show one tensor to us and another to a different reader. `json` must already have parsed.
 */
export function findDuplicateKey(json: string): string | undefined {
  // One entry per open container: the keys seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (;;) {
        const d = json.charCodeAt(j);
        if (d === 0x5c /* \ */) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) break;
        else j++;
      }
      const keys = stack[stack.length - 1];
      if (expectKey && keys) {
        const key: string = escaped ? (JSON.parse(json.slice(i, j + 1)) as string) : json.slice(i + 1, j);
        if (keys.has(key)) return key;
        keys.add(key);
      }
      expectKey = false;
      i = j;
    } else if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return undefined;
}

/** A JSON object (not an array, not null). */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Refuses overlapping data ranges; zero-length ranges overlap nothing. `tensors` must be sorted by offset. */
export function checkNoOverlap(sorted: readonly TensorInfo[], path: string | undefined): void {
  let end = 0;
  let owner: TensorInfo | undefined;
  for (const t of sorted) {
    if (t.bytes === 0) continue;
    if (owner && t.offset < end) {
      throw modelError('ERR_MODEL_RANGE', `tensor ${q(t.name)} overlaps tensor ${q(owner.name)}`, path);
    }
    end = t.offset + t.bytes;
    owner = t;
  }
}

export function byOffset(a: TensorInfo, b: TensorInfo): number {
  return a.offset - b.offset || a.bytes - b.bytes;
}
