/**
 * inspect(): a model's header read from its file(s) — one safetensors or GGUF file, a safetensors index with its
 * shards, or the splits of a GGUF — without reading tensor data. Parsing is formats/' job; this file does the I/O.
 *
 * Error codes: see ../formats/common.ts (ERR_MODEL_FORMAT, ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER, ERR_MODEL_VERSION,
 * ERR_MODEL_RANGE, ERR_MODEL_DUPLICATE, ERR_MODEL_UTF8). Failed system calls (a missing shard, say) surface as
 * Node's own fs errors; a file, index or shard that is not a regular file is refused before it is opened, as load()
 * refuses it (ERR_NOT_REGULAR_FILE, EISDIR for a folder).
 * @module
 */
import { constants as FS } from 'node:fs';
import { basename, dirname, isAbsolute, relative, resolve } from 'node:path';
import { asSystemError, invalidType, invalidValue } from '../core/errors.js';
import {
  checkWellFormed,
  decodeStrict,
  findDuplicateKey,
  isObject,
  modelError,
  q,
  type MetadataValue,
  type ModelInfo,
  type ModelTensor,
  type ParsedModel,
} from '../formats/common.js';
import { detect } from '../formats/detect.js';
import { NeedMore, parseGgufPrefix } from '../formats/gguf.js';
import { parseSafetensors, safetensorsHeaderEnd, SAFETENSORS_MAX_HEADER } from '../formats/safetensors.js';
import { openRegular } from '../pipeline/source.js';
import { isReference, resolveRef, scrubbed, sibling } from '../pipeline/sources/resolve.js';
import type { SourceOptions } from '../pipeline/sources/resolve.js';
import { locateModel } from './locate.js';
import { optionNames, optionsObject, signalOption, sourceOption } from './options.js';

/** The first read: enough for most safetensors headers and for the format check. */
const FIRST_READ = 64 * 1024;
/** Shards are opened this many at a time. */
const SHARD_CONCURRENCY = 8;
const GGUF_SPLIT = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/;

/**
 * Reads a model's header: format, metadata and every tensor's name, dtype, shape, absolute offset, length and file,
 * without reading tensor data.
 *
 * - A `.json` path is a safetensors index (`model.safetensors.index.json`): the tensors of every shard its
 *   `weight_map` names come back in one list, `metadata` is the index's own `metadata` (or `{}`).
 * - The first file of a GGUF split (`name-00001-of-00003.gguf`) brings in the other splits; `metadata` is the
 *   first split's.
 * - Any other path is one safetensors or GGUF file, told apart by content.
 *
 * Every length, count and offset is checked against the file size before it is used, the header is read in
 * bounded chunks, and no allocation exceeds the file size.
 * @throws TypeError ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE for a bad `path`
 * @throws DmaloadError ERR_MODEL_FORMAT, ERR_MODEL_TRUNCATED, ERR_MODEL_HEADER, ERR_MODEL_VERSION, ERR_MODEL_RANGE,
 *   ERR_MODEL_DUPLICATE, ERR_MODEL_UTF8 (see ./common.ts); ERR_NOT_REGULAR_FILE for a FIFO, a device or a socket
 * @throws DmaloadSystemError EISDIR for a folder
 */
export async function inspect(path: string, options: InspectOptions = {}): Promise<ModelInfo> {
  try {
    return await inspectRef(path, options);
  } catch (e) {
    throw scrubbed(e, path);
  }
}

async function inspectRef(path: string, options: InspectOptions, open?: Opener): Promise<ModelInfo> {
  if (typeof path !== 'string') throw invalidType('path', 'of type string', path);
  if (path === '' || path.includes('\0')) throw invalidValue('path', path, 'must be a non-empty path without NUL bytes');
  const o = optionsObject(options, INSPECT_OPTIONS, 'inspect()');
  const net: Net = { ...sourceOption(o.source), signal: signalOption(o.signal), open };
  const target = open ? path : await locateModel(path, net);
  const file = isReference(target) ? target : resolve(target);
  if (file.endsWith('.json')) return inspectIndex(file, net);

  const first = await inspectFile(file, net);
  const split = GGUF_SPLIT.exec(basename(file));
  const count = Number(split?.[3]);
  if (first.format !== 'gguf' || split?.[2] !== '00001' || !(count > 1)) {
    return { format: first.format, metadata: first.metadata, tensors: located(first, file) };
  }
  return inspectGgufSplits(file, first, split[1] ?? '', count, net);
}

/** inspect()'s options: for a URL or a hub reference, the network options of load()'s `source`, and an abort. */
export interface InspectOptions {
  source?: SourceOptions;
  signal?: AbortSignal;
}
const INSPECT_OPTIONS = optionNames<InspectOptions>()(['source', 'signal']);
type Net = SourceOptions & { signal?: AbortSignal | undefined; open?: Opener | undefined };

/** Reads a model file's header some other way than by path (a share client: through the server's buffer). */
export type Opener = <T>(file: string, fn: (fh: Reader, size: number) => Promise<T>) => Promise<T>;

/**
 * inspect() of a reference whose files are read by `open` (no option checks, no network of its own).
 * @internal
 */
export async function inspectWith(path: string, open: Opener): Promise<ModelInfo> {
  try {
    return await inspectRef(path, {}, open);
  } catch (e) {
    throw scrubbed(e, path);
  }
}

/** A file beside `file` (a shard, a split): a path, or the same kind of reference; undefined if it would leave. */
function beside(file: string, name: string): string | undefined {
  if (isReference(file)) return sibling(file, name);
  const dir = dirname(file);
  const path = resolve(dir, name);
  const rel = relative(dir, path);
  return rel === '' || rel.startsWith('..') || isAbsolute(rel) ? undefined : path;
}

function located(model: ParsedModel, file: string): ModelTensor[] {
  return model.tensors.map((t) => ({ ...t, file }));
}

async function inspectGgufSplits(file: string, first: ParsedModel, prefix: string, count: number, net: Net): Promise<ModelInfo> {
  const files = Array.from({ length: count }, (_, i) => beside(file, `${prefix}-${String(i + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.gguf`)!);
  const rest = await mapLimit(files.slice(1), SHARD_CONCURRENCY, (f) => inspectFile(f, net));
  const parts = [first, ...rest];
  const tensors: ModelTensor[] = [];
  const names = new Set<string>();
  parts.forEach((part, i) => {
    const path = files[i] as string;
    if (part.format !== 'gguf') throw modelError('ERR_MODEL_FORMAT', `GGUF split ${i + 1} of ${count} is not a GGUF file`, path);
    const { 'split.no': no, 'split.count': n } = part.metadata;
    if ((no !== undefined && no !== i) || (n !== undefined && n !== count)) {
      // eslint-disable-next-line @typescript-eslint/no-base-to-string -- whatever the file holds, shown as it is
      throw modelError('ERR_MODEL_HEADER', `GGUF split metadata (split.no ${String(no)}, split.count ${String(n)}) disagrees with the name`, path);
    }
    for (const t of part.tensors) {
      if (names.has(t.name)) throw modelError('ERR_MODEL_DUPLICATE', `GGUF tensor ${q(t.name)} is in more than one split`, path);
      names.add(t.name);
      tensors.push({ ...t, file: path });
    }
  });
  const total = first.metadata['split.tensors.count'];
  if (total !== undefined && total !== tensors.length) {
    // eslint-disable-next-line @typescript-eslint/no-base-to-string -- whatever the file holds, shown as it is
    throw modelError('ERR_MODEL_HEADER', `GGUF splits hold ${tensors.length} tensors, split.tensors.count says ${String(total)}`, file);
  }
  return { format: 'gguf', metadata: first.metadata, tensors };
}

async function inspectIndex(file: string, net: Net): Promise<ModelInfo> {
  const buf = await withFile(file, net, async (fh, size) => {
    if (size > SAFETENSORS_MAX_HEADER) {
      throw modelError('ERR_MODEL_HEADER', `safetensors index of ${size} bytes exceeds the ${SAFETENSORS_MAX_HEADER}-byte limit`, file);
    }
    return readHead(fh, size, file);
  });
  const text = decodeStrict(buf, 'safetensors index', file);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw modelError('ERR_MODEL_HEADER', `safetensors index is not valid JSON (${(e as Error).message})`, file);
  }
  if (!isObject(json) || !isObject(json.weight_map)) {
    throw modelError('ERR_MODEL_FORMAT', 'not a safetensors index (no "weight_map" object)', file);
  }
  const dup = findDuplicateKey(text);
  if (dup !== undefined) throw modelError('ERR_MODEL_DUPLICATE', `safetensors index repeats the key ${q(dup)}`, file);
  const { metadata = {} } = json;
  if (!isObject(metadata)) throw modelError('ERR_MODEL_HEADER', 'safetensors index "metadata" is not an object', file);

  // Shard path → tensor names the index puts there, in order of first mention.
  const shards = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(json.weight_map)) {
    checkWellFormed(name, `tensor name ${q(name)}`, file);
    // Shard names come from an untrusted file: keep them inside the index's directory.
    const path = typeof shard === 'string' && shard !== '' ? beside(file, shard) : undefined;
    if (path === undefined) {
      throw modelError('ERR_MODEL_HEADER', `safetensors index maps ${q(name)} to ${JSON.stringify(shard)}, not a file beside the index`, file);
    }
    const names = shards.get(path);
    if (names) names.push(name);
    else shards.set(path, [name]);
  }

  const paths = [...shards.keys()];
  const parts = await mapLimit(paths, SHARD_CONCURRENCY, (f) => inspectFile(f, net));
  const tensors: ModelTensor[] = [];
  const seen = new Set<string>();
  parts.forEach((part, i) => {
    const path = paths[i] as string;
    if (part.format !== 'safetensors') throw modelError('ERR_MODEL_FORMAT', 'safetensors index names a shard that is not safetensors', path);
    const inShard = new Set(part.tensors.map((t) => t.name));
    for (const name of shards.get(path) ?? []) {
      if (!inShard.has(name)) throw modelError('ERR_MODEL_HEADER', `shard has no tensor ${q(name)}, which the index places there`, path);
    }
    for (const t of part.tensors) {
      if (seen.has(t.name)) throw modelError('ERR_MODEL_DUPLICATE', `tensor ${q(t.name)} is in more than one shard`, path);
      seen.add(t.name);
      tensors.push({ ...t, file: path });
    }
  });
  return { format: 'safetensors', metadata: metadata as Record<string, MetadataValue>, tensors };
}

/** Parses one model file's header, reading it in growing chunks and never past what the header needs. */
async function inspectFile(file: string, net: Net): Promise<ParsedModel> {
  return withFile(file, net, async (fh, size) => {
    let buf = await readHead(fh, Math.min(size, FIRST_READ), file);
    const format = detect(buf);
    if (format === 'safetensors') {
      const end = safetensorsHeaderEnd(buf, size, file);
      if (end > buf.length) buf = await extend(fh, buf, end, file);
      return parseSafetensors(buf.subarray(0, end), { fileSize: size, path: file });
    }
    if (format === 'gguf') {
      // Parse what we have; when the header goes on, read at least as far as it needs (and at least 4× as much,
      // so a long header costs a handful of passes), bounded by the file size.
      for (;;) {
        try {
          return parseGgufPrefix(buf, size, file);
        } catch (e) {
          if (!(e instanceof NeedMore)) throw e;
          buf = await extend(fh, buf, Math.min(size, Math.max(e.end, buf.length * 4)), file);
        }
      }
    }
    throw modelError('ERR_MODEL_FORMAT', 'not a GGUF or safetensors file', file);
  });
}

/** What the header readers need of a file: FileHandle's read(), which a network object's ranged reads also give. */
export interface Reader {
  read(buf: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}

/** Opens a path or a reference for its header: a local file (a hub reference found in the cache too), or ranged GETs. */
async function withFile<T>(file: string, net: Net, fn: (fh: Reader, size: number) => Promise<T>): Promise<T> {
  if (net.open) return net.open(file, fn);
  if (!isReference(file)) return withLocal(file, fn);
  const r = await resolveRef(file, net);
  if (r.kind === 'file') return withLocal(r.path, fn);
  const obj = r.object;
  const reader: Reader = {
    read: async (buf, offset, length, position) => {
      const n = Math.min(length, obj.size - position);
      if (n <= 0) return { bytesRead: 0 };
      (await obj.readBytes(position, n, net.signal)).copy(buf, offset);
      return { bytesRead: n };
    },
  };
  try {
    return await fn(reader, obj.size);
  } finally {
    await obj.close();
  }
}

async function withLocal<T>(file: string, fn: (fh: Reader, size: number) => Promise<T>): Promise<T> {
  const fh = await openRegular(file, FS.O_RDONLY);
  try {
    return await fn(fh, (await fh.stat()).size);
  } finally {
    await fh.close();
  }
}

/** Reads the file's first `length` bytes; a file that shrank meanwhile is truncated. */
async function readHead(fh: Reader, length: number, file: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  await fill(fh, buf, 0, file);
  return buf;
}

/** Grows `buf` (the file's first bytes) to the first `length` bytes, reading only the new part. */
async function extend(fh: Reader, buf: Buffer, length: number, file: string): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  buf.copy(out);
  await fill(fh, out, buf.length, file);
  return out;
}

/** Fills `buf[from..]` from the same file offsets (buffers here always start at offset 0). */
async function fill(fh: Reader, buf: Buffer, from: number, file: string): Promise<void> {
  for (let done = from; done < buf.length;) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, done).catch((e: unknown) => Promise.reject(asSystemError(e, file)));
    if (bytesRead === 0) throw modelError('ERR_MODEL_TRUNCATED', `file ended at ${done} while its header was read`, file);
    done += bytesRead;
  }
}

/**
 * Maps with at most `limit` calls in flight. After a rejection no new call starts; the first rejection is thrown
 * once the calls under way have settled (so every file handle is closed by then).
 */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let stop = false;
  const worker = async () => {
    while (!stop && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i] as T);
      } catch (e) {
        stop = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return out;
}
