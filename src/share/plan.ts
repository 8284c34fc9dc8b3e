/**
 * Per-rank plans computed by the server (PlanRequest), so that every client — the Python one included — gets exactly
 * what loadModel(path, { rank, worldSize, split }) gives in Node from one implementation, planRank(), and only makes
 * views. The client sends the fds of a safetensors model's files; the server reads their headers through those fds
 * (off the JS thread, after the same file-system checks as a load), plans the rank's share and answers with the plan
 * as JSON in a sealed memfd (a plan of thousands of tensors does not fit a 64 KiB message).
 * @module
 */
import { read, writeSync } from 'node:fs';
import { DmaloadError, DmaloadSystemError, invalidType } from '../core/errors.js';
import { C, closeFd, native } from '../engine/binding.js';
import type { MetadataValue, ModelFormat, ModelTensor, ParsedModel } from '../formats/common.js';
import { detect } from '../formats/detect.js';
import { NeedMore, parseGgufPrefix } from '../formats/gguf.js';
import { parseSafetensors, safetensorsHeaderEnd } from '../formats/safetensors.js';
import { planRank, rankSpec } from '../pipeline/ranks.js';
import type { RankTensor } from '../pipeline/ranks.js';
import { createMemfd } from '../targets/memfd.js';
import { SERVED_SEALS } from './seal.js';

/** One tensor of a plan as the PlanReply's JSON lists it: `file` indexes the request's files. */
export interface PlannedTensor extends Omit<RankTensor, 'file' | 'unknownType' | 'typeId' | 'bytesInferred'> {
  file: number;
}

/** The checked body of a PlanRequest. */
export interface PlanRequest {
  files: string[];
  rank: number;
  worldSize: number;
  split: 'tensors' | 'rows';
  tensors: string[] | undefined;
}

/** Checks a PlanRequest's body against the fds it carries; throws coded errors (ERR_SHARE_PROTOCOL, rank codes). */
export function planRequest(body: Record<string, unknown>, fds: number): PlanRequest {
  const files = body.files;
  if (!Array.isArray(files) || files.length !== fds || fds === 0 || !files.every((f) => typeof f === 'string' && f.length <= 4096)) {
    throw new DmaloadError('ERR_SHARE_PROTOCOL', `a plan request lists "files" (names of at most 4096 characters), one per attached fd (got ${fds} fds)`);
  }
  const spec = rankSpec({ rank: body.rank, worldSize: body.worldSize, split: body.split });
  if (!spec) throw invalidType('rank', 'a number (with worldSize)', undefined);
  const tensors = body.tensors;
  if (tensors !== undefined && (!Array.isArray(tensors) || !tensors.every((t) => typeof t === 'string')))
    throw invalidType('tensors', 'an array of tensor names', tensors);
  return { files: files as string[], ...spec, tensors };
}

function readAt(fd: number, position: number, length: number, name: string): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const buf = new Uint8Array(length);
    read(fd, buf, 0, length, position, (err, n) => {
      if (err) reject(new DmaloadSystemError(err.errno ?? -5, 'read', name));
      else resolve(n === length ? buf : buf.subarray(0, n));
    });
  });
}

/** One file's header as a plan needs it. */
export interface FileModel {
  format: ModelFormat;
  metadata: Record<string, MetadataValue>;
  tensors: ModelTensor[];
}

/**
 * The header of one safetensors or GGUF file, read through `fd` (a file of `size` bytes) in growing chunks, never
 * past what the header needs; its tensors name the file by `index`.
 */
export async function modelOf(fd: number, size: number, name: string, index: number): Promise<FileModel> {
  let buf = await readAt(fd, 0, Math.min(size, 64 * 1024), name);
  const format = detect(buf);
  let parsed: ParsedModel;
  if (format === 'safetensors') {
    const end = safetensorsHeaderEnd(buf, size, name);
    if (end > buf.length) buf = await readAt(fd, 0, end, name);
    parsed = parseSafetensors(buf.subarray(0, end), { fileSize: size, path: name });
  } else if (format === 'gguf') {
    for (;;) {
      try {
        parsed = parseGgufPrefix(buf, size, name);
        break;
      } catch (e) {
        if (!(e instanceof NeedMore)) throw e;
        buf = await readAt(fd, 0, Math.min(size, Math.max(e.end, buf.length * 4)), name);
      }
    }
  } else {
    throw new DmaloadError('ERR_MODEL_FORMAT', `'${name}' is not a GGUF or safetensors file`, { path: name });
  }
  return { format: parsed.format, metadata: parsed.metadata, tensors: parsed.tensors.map((t) => ({ ...t, file: String(index) })) };
}

/** The tensors of one safetensors file (see {@link modelOf}). */
export async function tensorsOf(fd: number, size: number, name: string, index: number): Promise<ModelTensor[]> {
  const m = await modelOf(fd, size, name, index);
  if (m.format !== 'safetensors') throw new DmaloadError('ERR_MODEL_FORMAT', `'${name}' is not a safetensors file`, { path: name });
  return m.tensors;
}

/** Plans rank `req.rank`'s share of a model whose tensors (every file's) are `all`. */
export function plan(all: ModelTensor[], req: PlanRequest, path: string, format: ModelFormat = 'safetensors'): PlannedTensor[] {
  let chosen = all;
  if (req.tensors) {
    const by = new Map(all.map((t) => [t.name, t]));
    const missing = req.tensors.filter((n) => !by.has(n));
    if (missing.length > 0)
      throw new DmaloadError(
        'ERR_MODEL_TENSOR_NOT_FOUND',
        `'${path}' has no tensor ${missing
          .slice(0, 3)
          .map((m) => JSON.stringify(m))
          .join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''}`,
        { path },
      );
    const want = new Set(req.tensors);
    chosen = all.filter((t) => want.has(t.name));
  }
  return planRank(format, chosen, req).map((t) => {
    const out: PlannedTensor = { name: t.name, dtype: t.dtype, shape: t.shape, file: Number(t.file), offset: t.offset, bytes: t.bytes };
    if (t.rows) out.rows = t.rows;
    if (t.replicated) out.replicated = true;
    return out;
  });
}

/** The plan as a sealed memfd of UTF-8 JSON: its fd (the caller's) and length. */
export function planMemfd(
  tensors: PlannedTensor[],
  name: string,
  model: { format: ModelFormat; metadata?: Record<string, MetadataValue> } = { format: 'safetensors' },
): { fd: number; bytes: number } {
  // A GGUF's metadata holds 64-bit integers: numbers where exact, else decimal strings.
  const json = new TextEncoder().encode(
    JSON.stringify({ format: model.format, ...(model.metadata ? { metadata: model.metadata } : {}), tensors }, (_k, v: unknown) =>
      typeof v === 'bigint' ? (Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()) : v,
    ),
  );
  const fd = createMemfd(`plan-${name}`, json.length);
  try {
    // A memfd of the server's own: writing it cannot block on anyone's file system.
    for (let off = 0; off < json.length;) off += writeSync(fd, json, off, json.length - off, off);
    const s = native.seals(fd, SERVED_SEALS | C.F_SEAL_SEAL);
    if (s < 0) throw new DmaloadSystemError(s, 'fcntl', name);
    return { fd, bytes: json.length };
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}
