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
import type { ModelTensor } from '../formats/common.js';
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

/** The tensors of one safetensors file, read through `fd` (a file of `size` bytes). */
export async function tensorsOf(fd: number, size: number, name: string, index: number): Promise<ModelTensor[]> {
  const end = safetensorsHeaderEnd(await readAt(fd, 0, Math.min(8, size), name), size, name);
  const parsed = parseSafetensors(await readAt(fd, 0, end, name), { fileSize: size, path: name });
  return parsed.tensors.map((t) => ({ ...t, file: String(index) }));
}

/** Plans rank `req.rank`'s share of a model whose tensors (every file's) are `all`. */
export function plan(all: ModelTensor[], req: PlanRequest, path: string): PlannedTensor[] {
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
  return planRank('safetensors', chosen, req).map((t) => {
    const out: PlannedTensor = { name: t.name, dtype: t.dtype, shape: t.shape, file: Number(t.file), offset: t.offset, bytes: t.bytes };
    if (t.rows) out.rows = t.rows;
    if (t.replicated) out.replicated = true;
    return out;
  });
}

/** The plan as a sealed memfd of UTF-8 JSON: its fd (the caller's) and length. */
export function planMemfd(tensors: PlannedTensor[], name: string): { fd: number; bytes: number } {
  const json = new TextEncoder().encode(JSON.stringify({ format: 'safetensors', tensors }));
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
